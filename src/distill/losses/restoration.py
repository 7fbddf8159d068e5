"""Image-restoration losses: images ``(N, C, H, W)`` in ``[0, 1]``, every loss a mean (per pixel, per sample).

* :func:`l1_loss` — the student's own loss on the clean image (``"l1"``) and output distillation, the L1
  distance to the teacher's image (``"image_kd"``);
* :func:`wavelet_kd_loss` — the L1 distance between the high-frequency Haar wavelet bands of the two outputs
  (``"wavelet_kd"``; Zhang et al. 2022);
* :func:`contrastive_loss` — contrastive self-distillation (``"csd"``; Wang et al. 2021): pulled toward the
  teacher's output, pushed from the degraded input, in a fixed embedding (CSD's ratio in a bounded form).

Feature distillation needs no loss of its own: it is the FitNets ``hint`` loss on the networks' ``features`` taps
with a 1×1 convolution connector (:mod:`distill.losses.hint`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (half precision widened; float64 kept, so gradients check in double)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _same_shape(name: str, a: torch.Tensor, b: torch.Tensor, what: str = "teacher") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name} needs images of the same shape, got student {tuple(a.shape)} and {what} "
                         f"{tuple(b.shape)}")


@register_loss("image_kd")
@register_loss("l1", teacher=None, labels=True)
def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean absolute error :math:`\frac{1}{NCHW}\sum |\hat y - y|` between ``(N, C, H, W)`` images.

    As ``"l1"``, the student's loss on the clean images (EDSR, Lim et al. 2017, *Enhanced Deep Residual Networks
    for Single Image Super-Resolution*). As ``"image_kd"``, output distillation: the target is the teacher's
    restored image, :math:`\lVert S(x) - T(x)\rVert_1` (the teacher-output term of e.g. He et al. 2020, *FAKD:
    Feature-Affinity Based Knowledge Distillation for Efficient Image Super-Resolution*, and of Wang et al. 2021).
    """
    _same_shape("l1_loss", prediction, target, "target")
    return F.l1_loss(_wide(prediction), _wide(target))


def haar_dwt(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One level of the orthonormal 2-D Haar wavelet transform of ``(N, C, H, W)`` images (an odd side is padded
    by repeating its last row or column): the four ``(N, C, ⌈H/2⌉, ⌈W/2⌉)`` sub-bands ``LL, LH, HL, HH``. For each
    2×2 block :math:`\begin{smallmatrix}a & b\\ c & d\end{smallmatrix}`: ``LL = (a+b+c+d)/2``,
    ``LH = (a+b-c-d)/2`` (horizontal edges), ``HL = (a-b+c-d)/2`` (vertical edges), ``HH = (a-b-c+d)/2``."""
    if images.dim() != 4:
        raise ValueError(f"haar_dwt takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % 2 or w % 2:
        images = F.pad(images, (0, w % 2, 0, h % 2), mode="replicate")
    a, b = images[..., 0::2, 0::2], images[..., 0::2, 1::2]
    c, d = images[..., 1::2, 0::2], images[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2


@register_loss("wavelet_kd")
def wavelet_kd_loss(student: torch.Tensor, teacher: torch.Tensor, levels: int = 2) -> torch.Tensor:
    r"""Wavelet KD — Zhang et al. 2022, *Wavelet Knowledge Distillation: Towards Efficient Image-to-Image
    Translation* (CVPR): decompose both outputs with the discrete wavelet transform and distil only the
    high-frequency bands, where small networks fall short:

    .. math::
        \mathcal{L} = \frac{1}{L}\sum_{l=1}^{L} \frac{1}{|B_l|}
            \sum_{b \in \{LH_l, HL_l, HH_l\}} \big\| b(S(x)) - b(T(x)) \big\|_1

    with Haar bands (:func:`haar_dwt`), level ``l + 1`` taken on level ``l``'s ``LL`` band, the L1 a mean over
    every coefficient of the level's three bands. ``student``, ``teacher``: ``(N, C, H, W)`` restored images.
    """
    _same_shape("wavelet_kd_loss", student, teacher)
    if levels < 1:
        raise ValueError(f"wavelet_kd_loss needs levels >= 1, got {levels}")
    s, t = _wide(student), _wide(teacher)
    total = s.new_zeros(())
    for _ in range(levels):
        (s, *s_high), (t, *t_high) = haar_dwt(s), haar_dwt(t)
        total = total + F.l1_loss(torch.stack(s_high), torch.stack(t_high))
        if min(s.shape[-2:]) < 2:
            break
    return total / levels


def embedding_weights(channels: int, widths=(16, 32), seed: int = 0, device=None) -> list[torch.Tensor]:
    """The fixed 3×3 filters of :func:`embed`, ``widths`` channels per layer (He-normal, from a generator
    seeded with ``seed``): the same on every call, never trained."""
    generator = torch.Generator().manual_seed(seed)
    weights, fan_in = [], channels
    for width in widths:
        w = torch.randn(width, fan_in, 3, 3, generator=generator) * (2.0 / (9 * fan_in)) ** 0.5
        weights.append(w.to(device))
        fan_in = width
    return weights


def embed(images: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Feature maps of ``(N, C, H, W)`` images under fixed random filters: ``relu(conv)`` layers, the first at full
    resolution, each next one with stride 2. Returns one map per layer."""
    out, x = [], images
    for k, w in enumerate(weights):
        x = F.relu(F.conv2d(x, w.to(x.dtype), stride=1 if k == 0 else 2, padding=1))
        out.append(x)
    return out


def contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, negative: torch.Tensor,
                     layer_weights=(1.0, 1.0), eps: float = 1e-8) -> torch.Tensor:
    r"""Contrastive self-distillation — Wang et al. 2021, *Towards Compact Single Image Super-Resolution via
    Contrastive Self-distillation* (IJCAI), its contrastive loss, in a bounded form:

    .. math::
        \mathcal{L}_{CL} = \sum_j \lambda_j \frac{d^+_j}{d^+_j + d^-_j + \epsilon}, \qquad
        d^+_j = d\big(\phi_j(S(x)), \phi_j(T(x))\big), \quad d^-_j = d\big(\phi_j(S(x)), \phi_j(x^-)\big)

    the student's output pulled toward the teacher's (positive) and pushed from the degraded input ``x^-``
    (negative: the noisy image, or for super-resolution its bicubic upsampling, CSD's negative), ``d`` the L1
    distance (a mean). CSD writes the ratio :math:`r = d^+ / d^-`; :math:`d^+/(d^+ + d^-) = r / (1 + r)` orders
    students the same way but stays in ``[0, 1]``: a residual network starts as the identity, where
    :math:`d^- = 0` and CSD's ratio (with its small :math:`\epsilon`) is about :math:`10^5`, whose first gradients
    would swamp Adam's statistics. The paper's :math:`\phi_j` are pretrained VGG-19 layers; none ships offline here,
    so :math:`\phi_j` are the layers of a fixed network of random 3×3 filters (:func:`embed`; random convolutional
    features keep much of an image's local structure, He, Wang & Hopcroft 2016, *A Powerful Generative Model Using
    Random Weights for the Deep Image Representation*). ``student``, ``teacher``: ``(N, C, H, W)``; ``negative``:
    ``(N, C, h, w)``, resized bicubically to ``H × W`` when smaller. ``layer_weights``: the :math:`\lambda_j`, one
    per embedding layer (16, 32, 64 ... channels).
    """
    _same_shape("contrastive_loss", student, teacher)
    if negative.dim() != 4 or negative.shape[:2] != student.shape[:2]:
        raise ValueError(f"contrastive_loss needs negatives (N, C, h, w) of the student's {tuple(student.shape[:2])},"
                         f" got {tuple(negative.shape)}")
    if negative.shape[-2:] != student.shape[-2:]:
        negative = F.interpolate(_wide(negative), size=student.shape[-2:], mode="bicubic", align_corners=False)
    widths = [16 * 2 ** j for j in range(len(layer_weights))]
    weights = embedding_weights(student.shape[1], widths, device=student.device)
    s, t, n = (embed(_wide(x), weights) for x in (student, teacher.detach(), negative.detach()))
    total = s[0].new_zeros(())
    for lam, fs, ft, fn in zip(layer_weights, s, t, n):
        positive = F.l1_loss(fs, ft)
        total = total + lam * positive / (positive + F.l1_loss(fs, fn) + eps)
    return total


@register_loss("csd", student=["logits", "degraded"])
def csd_loss(student: list[torch.Tensor], teacher: torch.Tensor, layer_weights=(1.0, 1.0),
             eps: float = 1e-8) -> torch.Tensor:
    """:func:`contrastive_loss` bound to taps: ``student`` is ``[the student's output, its input]`` (taps
    ``logits`` and ``degraded``, the input being the negative), ``teacher`` the teacher's output."""
    output, degraded = student
    return contrastive_loss(output, teacher, degraded, layer_weights, eps)
