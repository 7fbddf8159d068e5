"""Grad-CAM++ explanations of a teacher and its students (``distill explain RUN_DIR``).

Grad-CAM++ (Chattopadhay et al. 2018, WACV; the formula is in
:func:`distill.losses.cam.gradcam_pp`) shows which positions of a convolutional
feature map a prediction rests on. For a run directory this module computes
every model's map for the class the *teacher* predicts and measures how closely
each student's map follows the teacher's (:func:`cam_agreement`), writing::

    RUN_DIR/explain/gradcam.png    rows: test images; columns: the input, then each model's map over it
    RUN_DIR/explain/explain.json   per student: mean ± std Pearson agreement with the teacher

Maps are per image as long as the layers after the explained one do not mix
samples, which holds in ``eval()`` mode (batch norm uses its running statistics);
the functions here put the models in ``eval()`` mode.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from distill.errors import DistillError
from distill.evaluation import eval_mode
from distill.data import as_dataset
from distill.tasks import get_task
from distill.losses.cam import gradcam_pp
from distill.taps import TapError, logits_of, nearest, parse_tap
from distill.teacher import run_model

__all__ = ["CamReference", "ExplainError", "cam_agreement", "explain_models", "explain_run", "gradcam_maps", "gradcam_pp",
           "normalize_maps"]


class ExplainError(DistillError):
    """A run directory or model that cannot be explained (one line, for the CLI)."""


def gradcam_maps(model: nn.Module, inputs, layer: str, class_index=None,
                 create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM++ maps ``(N, H, W)`` of ``layer``'s output and the model's logits ``(N, K)``.

    Args:
        model: any ``nn.Module`` returning logits (or an output holding them); its mode
            is left as it is (use ``eval()`` for per-image maps). Frozen parameters are fine:
            the layer's output is made a graph leaf when nothing before it requires grad.
        inputs: the batch of inputs (a tensor, or a mapping of keyword arguments).
        layer: a tap path or alias naming a module whose output is ``(N, C, H, W)``.
        class_index: the class explained: an int, a ``(N,)`` tensor, or ``None`` for
            each image's predicted class (argmax of the logits).
        create_graph: keep the graph of the gradients, so the maps can be trained through;
            otherwise maps and logits are returned detached.
    """
    spec = parse_tap(layer, model)
    if spec.kind != "module" or spec.capture != "output" or spec.indices:
        names = [*(getattr(model, "tap_aliases", None) or {}), *(name for name, _ in model.named_modules())]
        raise ExplainError(f"layer {layer!r} must name a module whose output is a feature map; "
                           f"nearest: {', '.join(nearest(layer, names))}")
    captured = {}

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            output = output.detach().requires_grad_()  # a frozen model: a leaf to differentiate to
        captured["features"] = output
        return output

    handle = dict(model.named_modules())[spec.target].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = logits_of(run_model(model, inputs))
            features = captured.get("features")
            if not isinstance(features, torch.Tensor) or features.dim() != 4:
                shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise ExplainError(f"layer {layer!r} gives {shape}, not an (N, C, H, W) feature map; Grad-CAM++ "
                                   f"needs a convolutional layer")
            if class_index is None:
                classes = logits.argmax(1)
            else:
                classes = torch.as_tensor(class_index, device=logits.device).long().expand(len(logits))
            score = logits.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(score, features, create_graph=create_graph, allow_unused=True)
            if grads is None:
                raise ExplainError(f"the logits do not depend on layer {layer!r}")
            maps = gradcam_pp(features, grads)
    finally:
        handle.remove()
    if not create_graph:
        maps, logits = maps.detach(), logits.detach()
    return maps, logits


def normalize_maps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(N, H, W)`` maps min-max scaled to ``[0, 1]`` per map (constant maps become 0), then resized
    bilinearly to ``size`` (``(H', W')``) when given."""
    maps = maps.float()
    flat = maps.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    span = high - low
    maps = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    if size is not None and tuple(size) != tuple(maps.shape[-2:]):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return maps


def cam_agreement(maps_a: torch.Tensor, maps_b: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    r"""Per-image Pearson correlation of two sets of ``(N, H, W)`` maps.

    Both are min-max normalised (:func:`normalize_maps`) and resized bilinearly to the
    larger of the two map sizes; then, for each image,

    .. math::
        r = \frac{\sum_p (a_p - \bar a)(b_p - \bar b)}
                 {\sqrt{\sum_p (a_p - \bar a)^2}\,\sqrt{\sum_p (b_p - \bar b)^2}}

    over the positions :math:`p`: 1 for maps equal up to scale and offset, 0 for unrelated
    ones, -1 for inverted ones. An image where either map is constant (nothing to
    correlate, e.g. an all-zero map) scores 0. Returns ``(N,)``, or the mean over images
    with ``reduction="mean"``.
    """
    if maps_a.dim() != 3 or maps_b.dim() != 3 or len(maps_a) != len(maps_b):
        raise ValueError(f"cam_agreement needs two (N, H, W) map sets, got {tuple(maps_a.shape)} and "
                         f"{tuple(maps_b.shape)}")
    size = max(maps_a.shape[-2:], maps_b.shape[-2:], key=lambda s: (s[0] * s[1], tuple(s)))
    a = normalize_maps(maps_a, size).flatten(1).double()
    b = normalize_maps(maps_b, size).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    r = torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-300), torch.zeros_like(denominator))
    r = r.float().clamp(-1, 1)
    if reduction == "mean":
        return r.mean()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    return r


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _model_maps(name: str, model: nn.Module, layer: str, inputs, class_index=None):
    try:
        return gradcam_maps(model, inputs.to(_device(model)), layer, class_index)
    except (ExplainError, TapError) as err:
        raise ExplainError(f"model {name!r}: {err}") from None


class CamReference:
    """The reference model's Grad-CAM++ maps and predicted classes over the first ``count`` samples
    of ``dataset``, computed once, to score other models against (:meth:`agreement`).

    A run scores each student as soon as it is trained, against one ``CamReference`` of its teacher.
    """

    def __init__(self, name: str, model: nn.Module, layer: str, dataset, count: int = 500, batch_size: int = 100):
        self.dataset = as_dataset(dataset)
        self.count = min(count, len(self.dataset))
        if self.count < 1:
            raise ExplainError("no images to explain")
        self.batch_size = batch_size
        self.maps, self.classes = [], []
        with eval_mode(model):
            for inputs in self._inputs():
                maps, logits = _model_maps(name, model, layer, inputs)
                self.maps.append(maps.cpu())
                self.classes.append(logits.argmax(1).cpu())

    def _inputs(self):
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=range(self.count),
                            collate_fn=get_task().collate)
        for batch in loader:
            if not isinstance(batch["input"], torch.Tensor):
                raise ExplainError("explaining needs image tensors as inputs")
            yield batch["input"]

    def agreement(self, name: str, model: nn.Module, layer: str) -> dict:
        """``{"mean", "std", "same_prediction"}``: :func:`cam_agreement` of ``model``'s maps at ``layer``
        (for the reference's predicted classes) with the reference's, over the images; and the fraction
        of images where ``model`` predicts the reference's class too."""
        scores, same = [], 0
        with eval_mode(model):
            for inputs, ref_maps, classes in zip(self._inputs(), self.maps, self.classes):
                maps, logits = _model_maps(name, model, layer, inputs, classes.to(_device(model)))
                scores.append(cam_agreement(maps.cpu(), ref_maps))
                same += int((logits.argmax(1).cpu() == classes).sum())
        r = torch.cat(scores)
        return {"mean": float(r.mean()), "std": float(r.std(unbiased=False)), "same_prediction": same / self.count}


def explain_models(models: Mapping[str, nn.Module], layers: Mapping[str, str], dataset, images: int = 8,
                   agreement_images: int = 500, batch_size: int = 100, out: str | Path | None = None) -> dict:
    """Grad-CAM++ agreement of every model with the first one (the teacher), and a picture.

    Each model's map is computed at its own ``layers[name]`` for the class the *first*
    model predicts; the agreement of a model is :func:`cam_agreement` with the first model's
    map over the first ``agreement_images`` samples of ``dataset`` (mean and std over images).
    ``same_prediction`` is the fraction of those images where the model predicts that class too.

    With ``out`` (a ``.png`` path), draws a grid: one row per image of the first ``images``,
    columns the input and then each model's normalised map over it (with its agreement ``r``).
    Returns ``{"reference", "layers", "images", "models": {name: {"mean", "std", "same_prediction"}}}``.
    """
    names = list(models)
    if len(names) < 2:
        raise ExplainError("explain_models needs a reference model and at least one more")
    missing = [n for n in names if n not in layers]
    if missing:
        raise ExplainError(f"no layer given for {', '.join(missing)}")
    reference = names[0]
    ref = CamReference(reference, models[reference], layers[reference], dataset, agreement_images, batch_size)
    result = {"reference": reference, "layers": dict(layers), "images": ref.count,
              "models": {name: ref.agreement(name, models[name], layers[name]) for name in names[1:]}}
    if out is not None:
        with ExitStack() as stack:
            for model in models.values():
                stack.enter_context(eval_mode(model))
            _draw(models, layers, ref.dataset, min(images, len(ref.dataset)), Path(out))
    return result


def _display(image: torch.Tensor):
    """An image tensor ``(C, H, W)`` as an array matplotlib shows (grey for one channel)."""
    image = image.detach().float().cpu()
    image = image.mean(0) if image.shape[0] != 3 else image.permute(1, 2, 0)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low) if high > low else torch.zeros_like(image)).numpy()


def _draw(models, layers, dataset, count: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(models)
    loader = DataLoader(dataset, batch_size=count, sampler=range(count), collate_fn=get_task().collate)
    inputs = next(iter(loader))["input"]
    size = tuple(inputs.shape[-2:])
    ref_maps, ref_logits = _model_maps(names[0], models[names[0]], layers[names[0]], inputs)
    classes = ref_logits.argmax(1)
    maps = {names[0]: ref_maps.cpu()}
    for name in names[1:]:
        maps[name] = _model_maps(name, models[name], layers[name], inputs, classes.to(_device(models[name])))[0].cpu()
    agreement = {name: cam_agreement(maps[name], maps[names[0]]) for name in names[1:]}
    fig, axes = plt.subplots(count, len(names) + 1, figsize=(1.7 * (len(names) + 1), 1.7 * count + 0.4),
                             squeeze=False)
    for row in range(count):
        image = _display(inputs[row])
        cmap = "gray" if image.ndim == 2 else None
        axes[row][0].imshow(image, cmap=cmap)
        axes[row][0].set_ylabel(f"{names[0]}: class {int(classes[row])}", fontsize=8)
        for col, name in enumerate(names, start=1):
            ax = axes[row][col]
            ax.imshow(image, cmap=cmap)
            ax.imshow(normalize_maps(maps[name][row:row + 1], size)[0].numpy(), cmap="jet", alpha=0.5,
                      vmin=0, vmax=1)
            if name in agreement:
                ax.text(0.03, 0.97, f"r={float(agreement[name][row]):.2f}", transform=ax.transAxes, fontsize=7,
                        va="top", color="white", bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    for col, title in enumerate(["input", *names]):
        axes[0][col].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    layer_names = sorted(set(layers[n] for n in names))
    fig.suptitle(f"Grad-CAM++ at {', '.join(layer_names)} for the class {names[0]} predicts\n"
                 f"r: Pearson agreement with {names[0]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def explain_run(run_dir: str | Path, images: int = 8, agreement_images: int = 500, layer: str = "last_stage",
                out: str | Path | None = None) -> dict:
    """Explain a run directory's teacher and finished students at ``layer`` (the same tap for all).

    Uses the test split; writes ``gradcam.png`` and ``explain.json`` to ``out`` (default
    ``RUN_DIR/explain``) and returns the dict of :func:`explain_models` with the file paths added.
    Raises :class:`ExplainError` when there is no recipe, no trained teacher or no finished student.
    """
    from distill.fileio import atomic_write_text
    from distill.recipe import RecipeError
    from distill.run_models import load_run

    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
        models = run.teacher_and_students()
    except RecipeError as err:  # not a run directory, its teacher not trained yet, nothing to compare
        raise ExplainError(str(err)) from None
    data = run.data
    out_dir = Path(out) if out is not None else run_dir / "explain"
    png = out_dir / "gradcam.png"
    result = explain_models(models, {name: layer for name in models}, data.test, images=images,
                            agreement_images=agreement_images, out=png if images > 0 else None)
    result |= {"run_dir": str(run_dir), "png": str(png) if images > 0 else None, "json": str(out_dir / "explain.json")}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "explain.json", json.dumps(result, indent=2))
    return result
