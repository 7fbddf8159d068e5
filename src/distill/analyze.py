"""What a student really took from its teacher (``distill analyze RUN_DIR``).

Accuracy says how often a student is right; it does not say whether it is right *the way the teacher is*.
For a run's teacher and each finished student this module measures, on the test split:

* **fidelity**: top-1 agreement with the teacher and ``KL(p_teacher || p_model)`` per image (Stanton et al.
  2021, *Does Knowledge Distillation Really Work?*, found students far from their teachers by this
  measure even when accurate), and agreement with the student trained from the labels alone (``scratch``),
  the baseline any teacher-specific similarity must beat;
* **calibration**: expected calibration error over 15 equal-width confidence bins (Guo et al. 2017),
  ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, and the mean negative log-likelihood;
* **adversarial transfer**: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018, 10 steps of
  ``eps/4``, random start) examples made on the *teacher* within an L-infinity ball of ``eps`` (a fraction
  of the data's value range), and the fraction of them that also fool each model, among the images the
  teacher and that model both classify right (the teacher's own row is its white-box success rate);
* **invariance**: the fraction of predictions unchanged by a random shift of up to 1/14 of the width (2 pixels
  on 28 x 28 images, 1 on 8 x 8) and by
  Gaussian noise of 0.1 times the data's standard deviation;
* **interventions**: the pixels the teacher's explanation marks as most important (its Grad-CAM++ map at
  ``layer`` upsampled to the image, or its input-gradient saliency when it has no such layer) are occluded
  (a quarter of the pixels by default, set to the data mean), and, as a control, as many of the least
  important ones. Reported: how often each
  model's prediction changes under each occlusion, and how often it then agrees with the *teacher's*
  prediction on the same occluded image (counterfactual agreement: does the student change its mind where
  the teacher does?);
* **explanations**: Grad-CAM++ agreement with the teacher (Pearson r of the maps, :mod:`distill.explain`) for
  the models that have ``layer``.

Writes ``RUN_DIR/analyze/analysis.json``, ``analysis.md`` (the table) and ``analysis.png`` (reliability
diagrams and the transfer and intervention measures side by side). Classification runs on images only.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from distill.data import RandomShift, as_dataset
from distill.errors import DistillError
from distill.evaluation import eval_mode
from distill.taps import TapError, logits_of
from distill.tasks import get_task
from distill.teacher import run_model

__all__ = ["AnalyzeError", "adversarial_examples", "analyze_models", "analyze_run", "expected_calibration_error",
           "occlude", "saliency"]


class AnalyzeError(DistillError):
    """A run or model that cannot be analysed (one line, for the CLI)."""


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017) of ``logits`` ``(N, K)`` against ``labels`` ``(N,)``: the confidence (max softmax
    probability) falls into ``bins`` equal-width bins over (0, 1]; ``sum_b |B_b| / N * |acc_b - conf_b|``."""
    confidence, predicted = logits.float().softmax(-1).max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]
    total = torch.zeros(())
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.float().mean() * (correct[members].mean() - confidence[members].mean()).abs()
    return float(total)


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    device = next(model.parameters(), torch.empty(0)).device
    with torch.no_grad():
        return torch.cat([logits_of(run_model(model, x[i:i + batch_size].to(device))).float().cpu()
                          for i in range(0, len(x), batch_size)])


def adversarial_examples(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 0,
                         bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
                         batch_size: int = 500) -> torch.Tensor:
    """Inputs within ``eps`` (L-infinity) of ``x`` that raise ``model``'s cross-entropy on ``labels``.

    ``steps = 0``: FGSM, ``x + eps * sign(grad)``. ``steps > 0``: PGD from a uniform random start in the ball,
    ``steps`` ascent steps of ``eps / 4`` each projected back into the ball. Values stay inside ``bounds``.
    The model's mode is left as it is (use ``eval()``); its parameters get no gradients.
    """
    device = next(model.parameters(), torch.empty(0)).device
    low, high = bounds
    out = []
    for i in range(0, len(x), batch_size):
        clean, y = x[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        adv = clean.clone()
        if steps:
            noise = torch.rand(clean.shape, generator=generator).to(device) * 2 - 1
            adv = (clean + eps * noise).clamp(low, high)
        step = eps if not steps else eps / 4
        for _ in range(max(steps, 1)):
            adv = adv.detach().requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(logits_of(run_model(model, adv)).float(), y)
                grad, = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step * grad.sign()
            adv = torch.min(torch.max(adv, clean - eps), clean + eps).clamp(low, high)
        out.append(adv.detach().cpu())
    return torch.cat(out)


def saliency(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: str | None = None,
             batch_size: int = 250) -> tuple[torch.Tensor, str]:
    """How much each pixel matters to ``model``'s score for ``classes``: ``(N, H, W)`` maps and what made them.

    With ``layer`` (a convolutional layer the model has), its Grad-CAM++ map upsampled to the image
    (``"gradcam++"``); otherwise, or when the model lacks the layer, ``|d score / d x|`` summed over channels
    (``"input gradient"``, Simonyan et al. 2014).
    """
    from distill.explain import ExplainError, gradcam_maps, normalize_maps

    size = tuple(x.shape[-2:])
    device = next(model.parameters(), torch.empty(0)).device
    if layer is not None:
        try:
            maps = [normalize_maps(gradcam_maps(model, x[i:i + batch_size].to(device), layer,
                                                classes[i:i + batch_size].to(device))[0].cpu(), size)
                    for i in range(0, len(x), batch_size)]
            return torch.cat(maps), "gradcam++"
        except (ExplainError, TapError):
            pass
    maps = []
    for i in range(0, len(x), batch_size):
        inputs = x[i:i + batch_size].to(device).requires_grad_()
        with torch.enable_grad():
            scores = logits_of(run_model(model, inputs)).float()
            picked = scores.gather(1, classes[i:i + batch_size].to(device)[:, None]).sum()
            grad, = torch.autograd.grad(picked, inputs)
        grad = grad.abs()
        maps.append((grad.sum(1) if grad.dim() == 4 else grad).cpu())
    return torch.cat(maps), "input gradient"


def occlude(x: torch.Tensor, maps: torch.Tensor, fraction: float, most: bool, fill: float) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` (or ``(N, H, W)``) with the ``fraction`` of pixels that ``maps`` ``(N, H, W)``
    ranks highest (``most=True``) or lowest set to ``fill`` in every channel."""
    flat = maps.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    order = flat.argsort(1, descending=most)[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True).view_as(maps)
    mask = mask[:, None] if x.dim() == 4 else mask
    return x.masked_fill(mask.expand_as(x), fill)


def _pct(part: torch.Tensor) -> float:
    return float(100 * part.float().mean()) if part.numel() else float("nan")


def analyze_models(models: Mapping[str, nn.Module], dataset, reference: str | None = None,
                   baseline: str | None = "scratch", images: int = 2000, layer: str | None = "last_stage",
                   eps: float = 0.1, occluded: float = 0.25, seed: int = 0) -> dict:
    """Measure every model of ``models`` against ``reference`` (default: the first, the teacher) on the first
    ``images`` samples of ``dataset`` (image tensors with class labels). See the module docstring for the
    measures; ``eps`` and the noise are fractions of the data's value range and standard deviation,
    ``occluded`` the fraction of pixels occluded. ``baseline`` names the student every other one is also
    compared with (skipped when absent). Returns ``{"images", "reference", "baseline", "saliency", "eps",
    "models": {name: {measure: value}}}``."""
    for option, value, low, high in (("eps", eps, 0, 1), ("occluded", occluded, 0, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise AnalyzeError(f"{option} must be a number between {low} and {high} (a fraction), got {value!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise AnalyzeError(f"images must be a whole number >= 1, got {images!r}")
    names = list(models)
    reference = reference or names[0]
    if reference not in models:
        raise AnalyzeError(f"no model {reference!r} to compare with; models: {', '.join(names)}")
    dataset = as_dataset(dataset)
    count = min(images, len(dataset))
    if count < 1:
        raise AnalyzeError("no images to analyse")
    loader = DataLoader(Subset(dataset, range(count)), batch_size=count, collate_fn=get_task().collate)
    batch = next(iter(loader))
    x, labels = batch["input"], batch.get("label")
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        raise AnalyzeError("analyze needs image tensors (N, C, H, W) as inputs")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise AnalyzeError("analyze needs one class label per image (the classification task)")
    generator = torch.Generator().manual_seed(seed)
    bounds = (float(x.min()), float(x.max()))
    eps_abs = eps * (bounds[1] - bounds[0])
    fill = float(x.mean())
    views = {"shift": RandomShift(max(1, round(x.shape[-1] / 14)))(x, generator),
             "noise": x + 0.1 * float(x.std()) * torch.randn(x.shape, generator=generator)}

    result = {"images": count, "reference": reference, "baseline": baseline if baseline in models else None,
              "eps": eps, "eps_absolute": eps_abs, "occluded": occluded, "models": {}}
    with eval_mode(models[reference]) as teacher:
        ref_logits = _logits(teacher, x)
        ref_pred = ref_logits.argmax(1)
        adversarial = {"fgsm": adversarial_examples(teacher, x, labels, eps_abs, 0, bounds),
                       "pgd": adversarial_examples(teacher, x, labels, eps_abs, 10, bounds, generator)}
        maps, how = saliency(teacher, x, ref_pred, layer)
        interventions = {"important": occlude(x, maps, occluded, True, fill),
                         "unimportant": occlude(x, maps, occluded, False, fill)}
        ref_on = {name: _logits(teacher, v).argmax(1) for name, v in {**adversarial, **interventions}.items()}
    result["saliency"] = how
    base_pred = None
    if result["baseline"]:
        with eval_mode(models[baseline]) as base:
            base_pred = _logits(base, x).argmax(1)
    cam = None
    if layer is not None:
        from distill.explain import CamReference, ExplainError

        try:
            cam = CamReference(reference, models[reference], layer, Subset(dataset, range(min(count, 500))))
        except (ExplainError, TapError):
            cam = None
    teacher_right = ref_pred == labels
    result["calibration"] = {}
    for name in names:
        with eval_mode(models[name]) as model:
            logits = _logits(model, x)
            pred = logits.argmax(1)
            row = {"accuracy": _pct(pred == labels),
                   "agreement": _pct(pred == ref_pred),
                   "kl_to_teacher": float(F.kl_div(logits.log_softmax(1), ref_logits.log_softmax(1), log_target=True,
                                                   reduction="batchmean")),
                   "agreement_with_baseline": _pct(pred == base_pred) if base_pred is not None else None,
                   "ece": 100 * expected_calibration_error(logits, labels),
                   "nll": float(F.cross_entropy(logits, labels))}
            both_right = teacher_right & (pred == labels)
            for attack in adversarial:
                row[f"{attack}_transfer"] = _pct((_logits(model, adversarial[attack]).argmax(1) != labels)[both_right])
            for view, inputs in views.items():
                row[f"{view}_unchanged"] = _pct(_logits(model, inputs).argmax(1) == pred)
            for kind, inputs in interventions.items():
                moved = _logits(model, inputs).argmax(1)
                row[f"occlude_{kind}_changed"] = _pct(moved != pred)
                row[f"occlude_{kind}_agreement"] = _pct(moved == ref_on[kind])
            row["cam_agreement"] = None
            if cam is not None and name != reference:
                try:
                    row["cam_agreement"] = cam.agreement(name, model, layer)["mean"]
                except (ExplainError, TapError):
                    pass
            result["models"][name] = row
            result["calibration"][name] = _reliability(logits, labels)
    return result


def _reliability(logits: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> list[list[float]]:
    """``[[mean confidence, accuracy, count], ...]`` per non-empty confidence bin (a reliability diagram)."""
    confidence, predicted = logits.softmax(-1).max(-1)
    which = torch.bucketize(confidence, torch.linspace(0, 1, bins + 1)[1:-1])
    out = []
    for b in range(bins):
        members = which == b
        if members.any():
            out.append([float(confidence[members].mean()), float((predicted == labels)[members].float().mean()),
                        int(members.sum())])
    return out


COLUMNS = [("accuracy", "test acc. %"), ("agreement", "top-1 agr. w/ teacher %"), ("kl_to_teacher", "KL(T‖S)"),
           ("agreement_with_baseline", "agr. w/ scratch %"), ("ece", "ECE %"), ("nll", "NLL"),
           ("fgsm_transfer", "FGSM transfer %"), ("pgd_transfer", "PGD transfer %"),
           ("shift_unchanged", "same under shift %"), ("noise_unchanged", "same under noise %"),
           ("occlude_important_changed", "changed, important occluded %"),
           ("occlude_unimportant_changed", "changed, unimportant occluded %"),
           ("occlude_important_agreement", "agr. w/ teacher, important occluded %"),
           ("cam_agreement", "Grad-CAM++ r")]


def format_analysis(result: dict) -> str:
    """The analysis as a markdown table, one row per model."""
    lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, row in result["models"].items():
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            cells.append("—" if value is None or (isinstance(value, float) and math.isnan(value)) else
                         f"{value:.3f}" if key in ("kl_to_teacher", "nll", "cam_agreement") else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, (cal, bars) = plt.subplots(1, 2, figsize=(13, 4.8))
    cal.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for name in names:
        points = result["calibration"][name]
        cal.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                 label=f"{name} (ECE {result['models'][name]['ece']:.1f}%)")
    cal.set(xlabel="confidence", ylabel="accuracy", title="reliability on the test images")
    cal.legend(fontsize=7)
    measures = [("agreement", "agreement\nw/ teacher"), ("fgsm_transfer", "FGSM\ntransfer"),
                ("pgd_transfer", "PGD\ntransfer"), ("occlude_important_changed", "changed,\nimportant occl."),
                ("occlude_unimportant_changed", "changed,\nunimportant occl."),
                ("occlude_important_agreement", "agr. w/ teacher,\nimportant occl.")]
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        row = result["models"][name]
        bars.bar([i + k * width for i in range(len(measures))], [row[m] for m, _ in measures], width, label=name)
    bars.set_xticks([i + 0.4 - width / 2 for i in range(len(measures))], [t for _, t in measures], fontsize=6.5)
    bars.set(ylabel="%", title=f"what transfers from {result['reference']} ({result['images']} test images)")
    bars.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyze_run(run_dir: str | Path, images: int = 2000, layer: str = "last_stage", eps: float = 0.1,
                occluded: float = 0.25, out: str | Path | None = None, baseline: str = "scratch") -> dict:
    """Analyse a run directory's teacher and finished students on its test split (:func:`analyze_models`);
    writes ``analysis.json``, ``analysis.md`` and ``analysis.png`` to ``out`` (default ``RUN_DIR/analyze``)."""
    from distill.fileio import atomic_write_text
    from distill.recipe import RecipeError
    from distill.run_models import data_task, load_run

    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
        models = run.teacher_and_students()
    except RecipeError as err:
        raise AnalyzeError(str(err)) from None
    if data_task(run.data).name != "classification":
        raise AnalyzeError(f"analyze measures classification runs; {run_dir} is a {data_task(run.data).name} run")
    result = analyze_models(models, run.data.test, baseline=baseline, images=images, layer=layer, eps=eps,
                            occluded=occluded)
    out_dir = Path(out) if out is not None else run_dir / "analyze"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_analysis(result)
    result |= {"run_dir": str(run_dir), "table": str(out_dir / "analysis.md"), "png": str(out_dir / "analysis.png")}
    atomic_write_text(out_dir / "analysis.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "analysis.md",
                      f"# What the students took from the teacher: {run_dir.name}\n\n"
                      f"{result['images']} test images; adversarial eps = {eps} of the value range; "
                      f"{int(100 * result['occluded'])}% of pixels occluded by the teacher's {result['saliency']} "
                      f"map; command: `distill analyze {run_dir} --images {images} --eps {eps} --occlude {occluded}`\n\n{table}\n")
    _plot(result, out_dir / "analysis.png")
    return result
