"""Data-free distillation: the student never sees a real training image.

A :class:`SyntheticSet` stands where the training set would: each batch the engine
asks for is made on the spot, by a generator that is itself trained against the
teacher (and, for the adversarial methods, the student) just before. The
student's own terms are ordinary loss terms on those batches (KD, DFAD's L1,
ZSKT's attention). :func:`deep_inversion` instead optimises a pool of images to
match the teacher's batch-norm statistics, and the student then distils on the
pool like on any dataset.

* ``dafl`` — Chen et al. 2019: the generator makes the teacher confident, its
  features active and its classes balanced (:func:`~distill.losses.datafree.dafl_generator_loss`);
  generator and student step together, on the same images (the authors' code: one batch per step,
  the generator's step taken on it and the student's KD on it).
* ``dfad`` — Fang et al. 2019: the generator maximises the teacher-student L1
  logit gap; ``student_steps`` (5) student steps on fresh samples per generator step.
* ``zskt`` — Micaelli & Storkey 2019, *Zero-shot Knowledge Transfer via
  Adversarial Belief Matching*: the generator maximises KL(teacher || student);
  the student takes ``student_steps`` (10) steps on each generated batch.
* ``noise`` — the lower baseline: Gaussian noise images labelled by the teacher.

The generator, its optimiser and the latent RNG are saved in the engine's
checkpoints (:meth:`SyntheticSet.state_dict`), so a resumed data-free run
continues the same generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from distill.losses.kd import kd_loss
from distill.losses.datafree import (bn_statistics_loss, dafl_generator_loss, js_divergence, logit_l1,
                                     total_variation)
from distill.taps import TapRecorder, logits_of
from distill.teacher import freeze

OBJECTIVES = ("dafl", "dfad", "zskt", "noise")
DAFL_BETA = 5 / math.log(10)  # the authors' information-entropy weight 5, on log10, as a weight on nats


class SyntheticSet(Dataset):
    """A training set of ``size`` samples per epoch, each batch generated when asked for.

    Args:
        teacher: the trained teacher (frozen here).
        objective: ``"dafl"``, ``"dfad"``, ``"zskt"`` or ``"noise"``.
        generator: a :class:`~distill.zoo.models.Generator` (not needed for ``"noise"``).
        student: the student being trained (``"dfad"`` and ``"zskt"`` generate against it).
        input_shape: ``(C, H, W)`` of the images (``"noise"``; otherwise the generator's).
        size: samples per epoch.
        lr: the generator's Adam learning rate (default: the authors', 0.2 for ``dafl``, 1e-3 otherwise).
        student_steps: student steps per generator step (``dfad``: fresh samples each step;
            ``zskt``: the same batch each step; ``dafl`` steps both every batch).
        alpha, beta: DAFL's activation and information-entropy weights (the authors' 0.1 and 5 with a
            base-10 logarithm, i.e. ``beta = 5 / ln 10`` on the entropy in nats).
        kd_weight: ``dafl`` with a ``student``: the weight of the student's KD loss (T = 1) in the
            generator's objective. The authors' code back-propagates the student's KD loss into the
            generator too (weight 1: the generator also makes images the student already matches); the
            paper's equation has no such term (0, the default).
        feature_layer: the teacher tap DAFL's activation term reads (default: the layer
            before the classifier, alias ``embedding``).
        seed: seeds the latent noise.

    ``synthetic = True`` tells the engine its inputs change every batch (no teacher cache); the
    engine calls :meth:`make_batch` on each batch of indices right before training on it.
    """

    synthetic = True

    def __init__(self, teacher: nn.Module, objective: str = "dafl", generator: nn.Module | None = None,
                 student: nn.Module | None = None, input_shape=None, size: int = 12800, lr: float | None = None,
                 student_steps: int | None = None, alpha: float = 0.1, beta: float = DAFL_BETA,
                 feature_layer: str = "embedding", kd_weight: float = 0.0, seed: int = 0):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective != "noise" and generator is None:
            raise ValueError(f"objective {objective!r} trains a generator: pass generator=")
        if objective in ("dfad", "zskt") and student is None:
            raise ValueError(f"objective {objective!r} generates against the student: pass student=")
        if objective == "dafl" and kd_weight and student is None:
            raise ValueError("objective 'dafl' with kd_weight puts the student's KD loss in the generator's: pass student=")
        if objective == "noise" and input_shape is None:
            raise ValueError("objective 'noise' needs input_shape=(C, H, W)")
        self.teacher = freeze(teacher)
        self.objective, self.generator, self.student, self.size = objective, generator, student, size
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.student_steps = student_steps or {"dfad": 5, "zskt": 10}.get(objective, 1)
        self.alpha, self.beta, self.kd_weight = alpha, beta, kd_weight
        self.rng = torch.Generator().manual_seed(seed)
        self.calls, self.generator_steps = 0, 0
        self.batch: torch.Tensor | None = None
        if generator is not None:
            lr = lr if lr is not None else (0.2 if objective == "dafl" else 1e-3)
            self.optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
        if objective == "dafl":
            self.recorder = TapRecorder(teacher, ["logits", feature_layer], model_name="teacher")
            self.feature_layer = feature_layer

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.as_tensor(i, dtype=torch.long)}

    def __getitems__(self, indices) -> dict:
        # Only indices here: the loader fetches a batch ahead of the one being trained on, so the images are
        # made when the engine uses the batch (make_batch), which keeps a resumed run exactly on track.
        return {"index": torch.as_tensor(indices, dtype=torch.long)}

    def make_batch(self, batch: dict) -> dict:
        """The engine's batch for the indices in ``batch``: generated images (after a generator step when due)."""
        n = len(batch["index"])
        if self.objective == "noise":
            x = (0.5 + 0.5 * torch.randn(n, *self.input_shape, generator=self.rng)).to(self._device())
        else:
            step = self.calls % self.student_steps == 0
            if step:
                self._generator_step(n)
            if (step and self.objective == "dafl") or (not step and self.objective == "zskt"):
                x = self.batch  # DAFL: the generator step's own images; ZSKT: several student steps on one batch
            else:
                with torch.no_grad():
                    x = self.generator(self._latent(n))
                self.batch = x
        self.calls += 1
        return {"input": x.detach(), "index": batch["index"]}

    def _device(self):
        return next(self.teacher.parameters()).device

    def _latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.generator.latent, generator=self.rng).to(self._device())

    def _generator_step(self, n: int) -> None:
        self.generator.to(self._device()).train()
        x = self.generator(self._latent(n))
        if self.objective == "dafl":
            with torch.enable_grad():
                values = self.recorder.collect(self.teacher(x))
            loss = dafl_generator_loss(values["logits"], values[self.feature_layer], self.alpha, self.beta)
            if self.kd_weight:
                loss = loss + self.kd_weight * kd_loss(logits_of(self.student(x)), values["logits"].detach(), 1.0)
            self.batch = x.detach()
        else:
            t = logits_of(self.teacher(x))
            s = logits_of(self.student(x))
            if self.objective == "dfad":
                loss = -logit_l1(s, t)
            else:  # zskt: maximise KL(teacher || student)
                loss = -F.kl_div(F.log_softmax(s.float(), 1), F.log_softmax(t.float(), 1), reduction="batchmean",
                                 log_target=True)
        # gradients for the generator only: the student's .grad stays the engine's
        params = [p for p in self.generator.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.generator_steps += 1

    def state_dict(self) -> dict:
        """The generator's weights and optimiser, the latent RNG and the step counters: what a resumed run
        needs to continue exactly where this one stopped (the engine saves it in every checkpoint)."""
        state = {"rng": self.rng.get_state(), "calls": self.calls, "generator_steps": self.generator_steps,
                 "batch": None if self.batch is None else self.batch.cpu()}
        if self.generator is not None:
            state["generator"] = {k: v.cpu() for k, v in self.generator.state_dict().items()}
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
        self.calls, self.generator_steps = state["calls"], state["generator_steps"]
        self.batch = None if state["batch"] is None else state["batch"].to(self._device())
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
            self.generator.to(self._device())
            self.optimizer.load_state_dict(state["optimizer"])

    def samples(self, n: int = 64) -> torch.Tensor:
        """``n`` images as the generator makes them now (noise for ``"noise"``), clipped to ``[0, 1]`` for a
        picture."""
        if self.objective == "noise":
            return (0.5 + 0.5 * torch.randn(n, *self.input_shape, generator=self.rng)).clamp(0, 1)
        self.generator.eval()
        with torch.no_grad():
            x = self.generator(self._latent(n)).cpu()
        self.generator.train()
        return x.clamp(0, 1)


def input_statistics(images: torch.Tensor) -> dict[str, list[float]]:
    """The per-channel ``mean`` and ``std`` of ``(N, C, H, W)`` images: the generator's output statistics
    (:class:`~distill.zoo.models.Generator`). The authors of DAFL and DFAD use the published normalisation
    constants of the teacher's data (MNIST 0.1307, 0.3081); a recipe takes them from its validation split."""
    if images.dim() != 4:
        raise ValueError(f"input statistics need (N, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.float().transpose(0, 1).flatten(1)
    return {"mean": x.mean(1).tolist(), "std": x.std(1).tolist()}


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms with running statistics: of convolutions (2d) and of fully connected layers (1d)."""
    return [m for m in model.modules()
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is not None]


def deep_inversion(teacher: nn.Module, num_images: int, input_shape, num_classes: int, steps: int = 500,
                   batch_size: int = 128, lr: float = 0.1, bn_weight: float = 1.0, tv_weight: float = 1e-3,
                   l2_weight: float = 1e-5, student: nn.Module | None = None, competition_weight: float = 0.0,
                   jitter: int = 0, seed: int = 0, say=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DeepInversion (Yin et al. 2020): synthesise ``num_images`` inputs from the teacher alone.

    Each batch of images starts as noise with target classes drawn uniformly and is optimised
    (Adam, ``lr``) for ``steps`` steps on

    .. math::
        \mathrm{CE}(f_T(\hat x), y) + w_{bn}\mathcal{R}_{feature} + w_{tv}\mathcal{R}_{TV} + w_{\ell_2}\|\hat x\|^2
        \;[\, + w_{comp}\,(1 - \mathrm{JS}(f_T(\hat x), f_S(\hat x))) \,]

    :math:`\mathcal{R}_{feature}` matches every batch-norm layer's batch statistics (``BatchNorm2d``: per
    channel over the batch and the positions; ``BatchNorm1d``: per unit over the batch) to its
    running ones (:func:`~distill.losses.datafree.bn_statistics_loss`); with a ``student`` and
    ``competition_weight`` (Adaptive DeepInversion) the images are also pushed to where teacher
    and student disagree. ``jitter``: each step the networks see the batch shifted (cyclically) by up to
    that many pixels along each axis, the paper's random jitter, so an image must work wherever it
    sits. Images are kept in ``[0, 1]``. Returns ``(images, targets)``.
    """
    bns = _bn_layers(teacher)
    if not bns:
        raise ValueError("DeepInversion matches batch-norm statistics, but the teacher has no BatchNorm1d or "
                         "BatchNorm2d layer")
    freeze(teacher)
    device = next(teacher.parameters()).device
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, inputs, output):
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels (units)
        stats.append((x.mean(dims), x.var(dims, unbiased=False)))

    hooks = [bn.register_forward_hook(record) for bn in bns]
    running = [(bn.running_mean, bn.running_var) for bn in bns]
    rng = torch.Generator().manual_seed(seed)
    images, targets = [], []
    try:
        for start in range(0, num_images, batch_size):
            n = min(batch_size, num_images - start)
            y = torch.randint(0, num_classes, (n,), generator=rng).to(device)
            x = (0.5 + 0.2 * torch.randn(n, *input_shape, generator=rng)).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                stats.clear()
                with torch.enable_grad():
                    seen = x
                    if jitter:
                        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=rng).tolist()
                        seen = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
                    logits = logits_of(teacher(seen))
                    loss = (F.cross_entropy(logits, y) + bn_weight * bn_statistics_loss(stats, running)
                            + tv_weight * total_variation(x) + l2_weight * x.pow(2).sum(dim=(1, 2, 3)).mean())
                    if student is not None and competition_weight:
                        loss = loss + competition_weight * (1 - js_divergence(logits, logits_of(student(seen))))
                x.grad, = torch.autograd.grad(loss, [x])  # the images only: a competing student keeps its .grad
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            images.append(x.detach().cpu())
            targets.append(y.cpu())
            if say is not None:
                say(f"DeepInversion: {start + n}/{num_images} images")
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(images), torch.cat(targets)
