r"""Anchor-free detection: the detector's own loss, its decoding, and detection distillation.

Conventions (the :mod:`distill.zoo.detection` detectors): one output level at ``stride`` pixels;

* ``heatmap`` ``(B, C, H, W)``: per-class centre logits (a sigmoid per class and location, CenterNet);
* ``box`` ``(B, 4, K, H, W)``: logits of a distribution over ``K`` discretised distances (in strides, bins
  ``0 .. K-1``) from a location's centre ``((x + 0.5) * stride, (y + 0.5) * stride)`` to the box's left, top,
  right and bottom edges (GFL / DFL, Li et al. 2020);
* ``features`` ``(B, D, H, W)``: the neck's output;
* ``targets``: one dict per image, ``{"boxes": (n, 4) float xyxy pixels, "classes": (n,) long}``.

Distillation losses are zero when the student's tensors equal the teacher's; the feature losses take the
student's features already mapped to the teacher's width (a ``conv1x1`` connector).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.registry import register_loss


# ------------------------------------------------------------------------------------------- targets
def check_targets(targets, shape: tuple[int, int], stride: int, num_classes: int | None = None) -> None:
    """``ValueError`` naming the image when targets are not ``[{"boxes": (n, 4), "classes": (n,)}]`` with
    boxes inside the ``shape`` (grid) x ``stride`` image and classes below ``num_classes``."""
    height, width = shape[0] * stride, shape[1] * stride
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "classes" not in t:
            raise ValueError(f"detection target {i} must be a dict with 'boxes' (n, 4) and 'classes' (n,)")
        boxes, classes = t["boxes"], t["classes"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or classes.shape != boxes.shape[:1]:
            raise ValueError(f"image {i}: boxes must be (n, 4) and classes (n,), got {tuple(boxes.shape)} and "
                             f"{tuple(classes.shape)}")
        if len(boxes) and (bool((boxes[:, 2:] <= boxes[:, :2]).any()) or bool((boxes[:, :2] < 0).any())
                           or bool((boxes[:, 2] > width).any()) or bool((boxes[:, 3] > height).any())):
            raise ValueError(f"image {i}: boxes must be (x0, y0, x1, y1) pixels with x0 < x1, y0 < y1 inside the "
                             f"{width} x {height} image, got {boxes.tolist()[:3]}")
        if len(classes) and num_classes is not None and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(f"image {i}: classes must be 0 to {num_classes - 1}, got {classes.tolist()}")


def centres(shape: tuple[int, int], stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel centres ``(H, W)`` x and y of the grid's locations."""
    ys = (torch.arange(shape[0], device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(shape[1], device=device, dtype=torch.float32) + 0.5) * stride
    return xs[None, :].expand(shape), ys[:, None].expand(shape)


def dense_targets(targets, num_classes: int | None, shape: tuple[int, int], stride: int, bins: int):
    """What the detector learns at every location, from the boxes.

    Returns ``heat (B, C, H, W)``: an elliptical Gaussian per object peaking at 1 on the location holding its
    centre (sigma = box side / 6, in strides; the maximum where objects of a class meet); ``distances
    (B, 4, H, W)``: left, top, right, bottom from the location's centre to its object's edges, in strides;
    ``weight (B, H, W)``: the object's Gaussian at locations inside its box where it exceeds 0.3 (0 elsewhere),
    a smaller object winning where boxes overlap (as FCOS assigns). ``num_classes=None``: no heatmap (``None``).
    """
    batch, (h, w) = len(targets), shape
    heat = None if num_classes is None else torch.zeros(batch, num_classes, h, w)
    distances = torch.zeros(batch, 4, h, w)
    weight = torch.zeros(batch, h, w)
    xs, ys = centres(shape, stride)
    for b, t in enumerate(targets):
        boxes, classes = t["boxes"].float().cpu(), t["classes"].long().cpu()
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for j in areas.argsort(descending=True).tolist():  # small boxes last: they win where boxes overlap
            x0, y0, x1, y1 = boxes[j].tolist()
            cx = min(int((x0 + x1) / 2 / stride), w - 1)
            cy = min(int((y0 + y1) / 2 / stride), h - 1)
            sx, sy = max((x1 - x0) / stride / 6, 0.35), max((y1 - y0) / stride / 6, 0.35)
            col = torch.arange(w, dtype=torch.float32) - cx
            row = torch.arange(h, dtype=torch.float32) - cy
            g = torch.exp(-(col[None, :] ** 2) / (2 * sx**2) - (row[:, None] ** 2) / (2 * sy**2))
            if heat is not None:
                c = int(classes[j])
                heat[b, c] = torch.maximum(heat[b, c], g)
            inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
            region = inside & (g > 0.3)
            region[cy, cx] = True
            weight[b][region] = g[region]
            edges = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys]) / stride
            distances[b][:, region] = edges[:, region]
    return heat, distances.clamp(0, bins - 1 - 1e-3), weight


# -------------------------------------------------------------------------------------- the detector's loss
def centre_focal_loss(heatmap: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    r"""Zhou et al. 2019, *Objects as Points* (CenterNet), the penalty-reduced focal loss over ``(B, C, H, W)``
    logits and Gaussian targets :math:`Y`:

    .. math:: -\frac{1}{N} \sum \begin{cases} (1 - p)^\alpha \log p & Y = 1 \\
        (1 - Y)^\beta p^\alpha \log(1 - p) & \text{otherwise} \end{cases}

    :math:`N` = the number of peaks (objects), at least 1."""
    logp, log1mp = F.logsigmoid(heatmap.float()), F.logsigmoid(-heatmap.float())
    p = logp.exp()
    pos = heat >= 1.0 - 1e-4
    loss = torch.where(pos, (1 - p) ** alpha * logp, (1 - heat) ** beta * p**alpha * log1mp)
    return -loss.sum() / pos.sum().clamp_min(1)


def expected_distances(box: torch.Tensor) -> torch.Tensor:
    """``(B, 4, K, H, W)`` distribution logits to the expected distances ``(B, 4, H, W)`` in strides."""
    bins = torch.arange(box.shape[2], device=box.device, dtype=torch.float32)
    return (box.float().softmax(2) * bins[None, None, :, None, None]).sum(2)


def distances_to_boxes(distances: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, 4, H, W)`` left / top / right / bottom distances in strides to ``(B, 4, H, W)`` xyxy pixel boxes."""
    xs, ys = centres(distances.shape[-2:], stride, distances.device)
    d = distances * stride
    return torch.stack([xs - d[:, 0], ys - d[:, 1], xs + d[:, 2], ys + d[:, 3]], 1)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of matching xyxy boxes ``(N, 4)``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(1), (b[:, 2:] - b[:, :2]).clamp_min(0).prod(1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp_min(0).prod(1)
    iou = inter / union.clamp_min(1e-6)
    return iou - (hull - union) / hull.clamp_min(1e-6)


def distribution_focal_loss(box: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    r"""Li et al. 2020, *Generalized Focal Loss* (DFL): for a target distance :math:`y` between bins
    :math:`y_l = \lfloor y \rfloor` and :math:`y_r = y_l + 1`,
    :math:`-((y_r - y)\log S_{y_l} + (y - y_l)\log S_{y_r})`. ``box (N, 4, K)`` logits, ``distances (N, 4)``;
    returns ``(N,)``, the mean over the four edges."""
    left = distances.floor().long()
    right_w = distances - left
    logp = box.float().log_softmax(-1)
    loss = -(logp.gather(-1, left[..., None])[..., 0] * (1 - right_w)
             + logp.gather(-1, (left + 1)[..., None])[..., 0] * right_w)
    return loss.mean(-1)


@register_loss("detection", student=["logits", "box"], teacher=None, labels=True)
def detection_loss(student: list[torch.Tensor], targets: list[dict], stride: int = 4, box_weight: float = 1.0,
                   giou_weight: float = 1.0) -> torch.Tensor:
    r"""The detector's own loss on the boxes: CenterNet's focal loss on the heatmap (Zhou et al. 2019), plus,
    at each object's locations (:func:`dense_targets`, weighted by its Gaussian :math:`w`), the distribution
    focal loss of the edge distances and the GIoU loss of the box they decode to (Li et al. 2020, GFL):

    .. math:: \mathcal{L} = \mathcal{L}_{focal} + \frac{1}{\sum w} \sum w \,(\lambda_{b} \mathrm{DFL}
        + \lambda_{g} (1 - \mathrm{GIoU}))

    Args:
        student: ``[heatmap (B, C, H, W), box (B, 4, K, H, W)]``.
        targets: per image ``{"boxes": (n, 4) xyxy pixels, "classes": (n,)}``.
        stride: pixels per heatmap location.
    """
    heatmap, box = student
    if heatmap.dim() != 4 or box.dim() != 5 or box.shape[1] != 4 or box.shape[-2:] != heatmap.shape[-2:]:
        raise ValueError(f"detection outputs must be heatmap (B, C, H, W) and box (B, 4, K, H, W) on the same grid, "
                         f"got {tuple(heatmap.shape)} and {tuple(box.shape)}")
    if len(targets) != len(heatmap):
        raise ValueError(f"{len(targets)} targets for a batch of {len(heatmap)} images")
    check_targets(targets, heatmap.shape[-2:], stride, heatmap.shape[1])
    heat, distances, weight = (t.to(heatmap.device) for t in
                               dense_targets(targets, heatmap.shape[1], heatmap.shape[-2:], stride, box.shape[2]))
    loss = centre_focal_loss(heatmap, heat)
    keep = weight > 0
    if bool(keep.any()):
        w = weight[keep]
        logits = box.permute(0, 3, 4, 1, 2)[keep]  # (N, 4, K)
        target = distances.permute(0, 2, 3, 1)[keep]  # (N, 4)
        dfl = distribution_focal_loss(logits, target)
        pred_boxes = distances_to_boxes(expected_distances(box), stride).permute(0, 2, 3, 1)[keep]
        true_boxes = distances_to_boxes(distances, stride).permute(0, 2, 3, 1)[keep]
        box_loss = box_weight * dfl + giou_weight * (1 - giou(pred_boxes, true_boxes))
        loss = loss + (w * box_loss).sum() / w.sum()
    return loss


# ------------------------------------------------------------------------------------------------ decoding
def decode(heatmap: torch.Tensor, box: torch.Tensor, stride: int = 4, top_k: int = 100,
           threshold: float = 0.01) -> list[dict]:
    """Detections per image: the heatmap's local maxima (3 x 3 max-pool, CenterNet's NMS), the ``top_k``
    highest above ``threshold``, each with the box its location's expected distances give. Returns
    ``[{"boxes": (n, 4) xyxy pixels, "scores": (n,), "classes": (n,)}]``, boxes clipped to the image."""
    batch, classes, h, w = heatmap.shape
    p = heatmap.float().sigmoid()
    peaks = p * (F.max_pool2d(p, 3, stride=1, padding=1) == p)
    boxes = distances_to_boxes(expected_distances(box), stride)  # (B, 4, H, W)
    boxes = torch.stack([boxes[:, 0].clamp(0, w * stride), boxes[:, 1].clamp(0, h * stride),
                         boxes[:, 2].clamp(0, w * stride), boxes[:, 3].clamp(0, h * stride)], 1)
    scores, where = peaks.reshape(batch, -1).topk(min(top_k, classes * h * w), dim=1)
    out = []
    for b in range(batch):
        keep = scores[b] > threshold
        idx = where[b][keep]
        cls, loc = idx // (h * w), idx % (h * w)
        out.append({"boxes": boxes[b].reshape(4, -1)[:, loc].T, "scores": scores[b][keep], "classes": cls})
    return out


# -------------------------------------------------------------------------------------- masks from boxes
def box_mask(boxes: list[torch.Tensor], shape: tuple[int, int], stride: int, device=None) -> torch.Tensor:
    """``(B, H, W)`` float: 1 at locations whose centre lies inside one of the image's ``(n, 4)`` boxes (and
    the location holding each box's centre, so tiny boxes count)."""
    xs, ys = centres(shape, stride, device)
    mask = torch.zeros(len(boxes), *shape, device=device)
    for b, bx in enumerate(boxes):
        for x0, y0, x1, y1 in bx.tolist():
            mask[b] = torch.maximum(mask[b], ((xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)).float())
            cx, cy = min(int((x0 + x1) / 2 / stride), shape[1] - 1), min(int((y0 + y1) / 2 / stride), shape[0] - 1)
            mask[b, cy, cx] = 1.0
    return mask


def fine_grained_mask(boxes: list[torch.Tensor], shape: tuple[int, int], stride: int, psi: float = 0.5,
                      device=None) -> torch.Tensor:
    r"""Wang et al. 2019's imitation region for an anchor-free grid: for each object, the IoU between its box
    and the same-sized box centred at every location (the anchor of the object's shape at that location);
    locations above :math:`\psi` times the object's largest IoU are kept, the union over objects ``(B, H, W)``."""
    xs, ys = centres(shape, stride, device)
    mask = torch.zeros(len(boxes), *shape, device=device)
    for b, bx in enumerate(boxes):
        for x0, y0, x1, y1 in bx.tolist():
            bw, bh = x1 - x0, y1 - y0
            iw = (bw - (xs - (x0 + x1) / 2).abs()).clamp_min(0)
            ih = (bh - (ys - (y0 + y1) / 2).abs()).clamp_min(0)
            iou = iw * ih / (2 * bw * bh - iw * ih)
            mask[b] = torch.maximum(mask[b], (iou > psi * iou.max()).float())
    return mask


def _gt_boxes(targets) -> list[torch.Tensor]:
    return [t["boxes"].float() for t in targets]


def _same(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} differ "
                         "(map the student's features to the teacher's width with a connector)")


# ------------------------------------------------------------------------------------------ distillation
@register_loss("heatmap_kd")
def heatmap_kd(student_heatmap: torch.Tensor, teacher_heatmap: torch.Tensor, temperature: float = 1.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""Logit KD on the classification heatmaps (Hinton et al. 2015 applied per class and location, as
    detection KD does on sigmoid classifiers, e.g. Chen et al. 2017): the binary KL divergence of the
    student's per-class probabilities from the teacher's, at temperature :math:`T`,

    .. math:: \frac{T^2}{\sum_{hw} w_{hw}} \sum_{b,c,h,w} w_{bhw}\,\big[q \log\tfrac{q}{p} + (1-q)\log\tfrac{1-q}{1-p}\big],
        \quad q = \sigma(z^t/T),\; p = \sigma(z^s/T)

    ``(B, C, H, W)`` logits; ``weight`` ``(B, H, W)`` (default: every location 1). Summed over classes,
    averaged over the weighted locations."""
    _same(student_heatmap, teacher_heatmap, "heatmap")
    s, t = student_heatmap.float() / temperature, teacher_heatmap.float() / temperature
    q = t.sigmoid()
    kl = q * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - q) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    w = torch.ones_like(kl[:, 0]) if weight is None else weight.float()
    return (kl.sum(1) * w).sum() / w.sum().clamp_min(1e-6) * temperature**2


@register_loss("masked_imitation", student="neck", teacher="neck", labels=True, connector="conv1x1")
def masked_imitation(student_features: torch.Tensor, teacher_features: torch.Tensor, targets: list[dict],
                     stride: int = 4, psi: float = 0.5) -> torch.Tensor:
    r"""Wang et al. 2019, *Distilling Object Detectors with Fine-grained Feature Imitation* (after Chen et al.
    2017's hint learning): the squared error between the adapted student features and the teacher's, only at
    the near-object locations :math:`I` (:func:`fine_grained_mask`):

    .. math:: \mathcal{L} = \frac{1}{2 N_p} \sum_{h,w,c} I_{hw} (f_{adap}(s)_{hwc} - t_{hwc})^2,
        \quad N_p = \sum_{hw} I_{hw}

    ``(B, D, H, W)`` features (the student's through the ``conv1x1`` adaptation layer)."""
    _same(student_features, teacher_features, "features")
    mask = fine_grained_mask(_gt_boxes(targets), student_features.shape[-2:], stride, psi, student_features.device)
    se = ((student_features.float() - teacher_features.float()) ** 2).sum(1)
    return (se * mask).sum() / (2 * mask.sum().clamp_min(1))


def _standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each channel of each image to zero mean and unit variance over its locations."""
    x = x.float()
    mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


@register_loss("pearson_kd", student="neck", teacher="neck", connector="conv1x1")
def pearson_kd(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    r"""Cao et al. 2022, *PKD: General Distillation Framework for Object Detectors via Pearson Correlation
    Coefficient*: standardise each channel of each image (zero mean, unit variance over the ``H x W``
    locations), then the mean squared error, which is :math:`1 - r` (Pearson's r) per channel up to a factor:

    .. math:: \mathcal{L} = \frac{1}{2 B D H W} \sum (\hat s - \hat t)^2 = \frac{1}{BD}\sum_{b,d}(1 - r_{bd}),
        \quad \hat x = (x - \mu_{bd}) / \sigma_{bd}

    ``(B, D, H, W)`` features; blind to each channel's scale and shift, so no feature magnitude dominates."""
    _same(student_features, teacher_features, "features")
    return 0.5 * F.mse_loss(_standardise(student_features), _standardise(teacher_features))


@register_loss("ld", student="box", teacher="box")
def localization_kd(student_box: torch.Tensor, teacher_box: torch.Tensor, temperature: float = 10.0,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""Zheng et al. 2022, *Localization Distillation for Dense Object Detection* (LD): the KL divergence of
    the student's distribution of each box edge from the teacher's, softened by :math:`T`:

    .. math:: \mathcal{L} = \frac{T^2}{4 \sum w} \sum_{b,h,w} w_{bhw} \sum_{e \in \{l,t,r,b\}}
        \mathrm{KL}\big(\mathrm{softmax}(z^t_e/T) \,\|\, \mathrm{softmax}(z^s_e/T)\big)

    ``(B, 4, K, H, W)`` logits; ``weight`` ``(B, H, W)``: the region distilled (default: every location)."""
    _same(student_box, teacher_box, "box distributions")
    log_s = (student_box.float() / temperature).log_softmax(2)
    log_t = (teacher_box.float() / temperature).log_softmax(2)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(2).mean(1)  # (B, H, W)
    w = torch.ones_like(kl) if weight is None else weight.float()
    return (kl * w).sum() / w.sum().clamp_min(1e-6) * temperature**2


@register_loss("ld_gt", student="box", teacher="box", labels=True)
def localization_kd_at_objects(student_box: torch.Tensor, teacher_box: torch.Tensor, targets: list[dict],
                               temperature: float = 10.0, stride: int = 4) -> torch.Tensor:
    """:func:`localization_kd` over LD's main distillation region: the locations where the detector itself
    learns boxes (:func:`dense_targets`, weighted by each object's Gaussian)."""
    _, _, weight = dense_targets(targets, None, student_box.shape[-2:], stride, student_box.shape[2])
    return localization_kd(student_box, teacher_box, temperature, weight.to(student_box.device))


class FGD(nn.Module):
    r"""Yang et al. 2022, *Focal and Global Knowledge Distillation for Detectors* (FGD), on ``(B, D, H, W)``
    features (the student's through a ``conv1x1`` adaptation layer, the paper's ``f``).

    Focal: the teacher's spatial and channel attention,
    :math:`A^S = HW \,\mathrm{softmax}_{hw}(\overline{|F|}^{c}/T)`, :math:`A^C = D\, \mathrm{softmax}_c(\overline{|F|}^{hw}/T)`,
    a foreground mask :math:`M` (inside ground-truth boxes) and a scale mask :math:`S` (:math:`1/(H_r W_r)` inside
    a box of :math:`H_r W_r` locations, :math:`1/N_{bg}` on the background):

    .. math:: \mathcal{L}_{fea} = \alpha \sum M S A^S A^C (F^t - F^s)^2 + \beta \sum (1-M) S A^S A^C (F^t - F^s)^2,
        \quad \mathcal{L}_{at} = \gamma\,(|A^S_t - A^S_s|_1 + |A^C_t - A^C_s|_1)

    Global: a GcBlock :math:`G(F) = F + W_{v2}\,\mathrm{ReLU}(\mathrm{LN}(W_{v1} \sum_j \mathrm{softmax}_j(W_k F_j) F_j))`
    applied to both feature maps, :math:`\mathcal{L}_{global} = \lambda \sum (G(F^t) - G(F^s))^2`.

    Simplified here: the sums over locations are divided by the batch size (the paper sums, with weights
    tuned for FPN levels of ~100 x 100); the attention loss is the mean absolute difference; one GcBlock
    (trained with the student) serves both models, where the paper gives each its own, so the loss is zero
    when the features agree; each image's boxes give a box-area scale where boxes overlap the smaller wins.
    """

    def __init__(self, alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 1e-3, lam: float = 5e-6,
                 temperature: float = 0.5, stride: int = 4):
        super().__init__()
        self.alpha, self.beta, self.gamma, self.lam, self.temperature, self.stride = alpha, beta, gamma, lam, temperature, stride
        self.key: nn.Module | None = None  # the GcBlock, built on the first batch (its width)
        self.value: nn.Module | None = None

    def attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial ``(B, H, W)`` and channel ``(B, D)`` attention of ``(B, D, H, W)`` features."""
        b, d, h, w = features.shape
        mean = features.abs().mean(1)
        spatial = h * w * (mean.reshape(b, -1) / self.temperature).softmax(1).reshape(b, h, w)
        channel = d * (features.abs().mean((2, 3)) / self.temperature).softmax(1)
        return spatial, channel

    def context(self, features: torch.Tensor) -> torch.Tensor:
        b, d, h, w = features.shape
        if self.value is None:
            hidden = max(d // 2, 1)
            self.key = nn.Conv2d(d, 1, 1).to(features.device)
            self.value = nn.Sequential(nn.Conv2d(d, hidden, 1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(),
                                       nn.Conv2d(hidden, d, 1)).to(features.device)
        weights = self.key(features).reshape(b, 1, h * w).softmax(-1)  # (B, 1, HW)
        pooled = (features.reshape(b, d, h * w) * weights).sum(-1)[..., None, None]  # (B, D, 1, 1)
        return features + self.value(pooled)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor,
                targets: list[dict]) -> torch.Tensor:
        _same(student_features, teacher_features, "features")
        s, t = student_features.float(), teacher_features.float()
        b, d, h, w = t.shape
        fg = torch.zeros(b, h, w, device=t.device)
        scale = torch.zeros(b, h, w, device=t.device)
        for i, boxes in enumerate(_gt_boxes(targets)):
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for j in areas.argsort(descending=True).tolist():
                inside = box_mask([boxes[j:j + 1]], (h, w), self.stride, t.device)[0] > 0
                fg[i][inside] = 1.0
                scale[i][inside] = 1.0 / inside.sum()
            background = fg[i] == 0
            scale[i][background] = 1.0 / background.sum().clamp_min(1)
        spatial_t, channel_t = self.attention(t)
        spatial_s, channel_s = self.attention(s)
        se = (s - t) ** 2 * spatial_t[:, None] * channel_t[:, :, None, None] * scale[:, None]
        focal = (self.alpha * (se * fg[:, None]).sum() + self.beta * (se * (1 - fg[:, None])).sum()) / b
        attention = self.gamma * ((spatial_s - spatial_t).abs().mean() + (channel_s - channel_t).abs().mean())
        glob = self.lam * ((self.context(s) - self.context(t)) ** 2).sum() / b
        return focal + attention + glob


register_loss("fgd", student="neck", teacher="neck", labels=True, connector="conv1x1")(FGD)


def general_instances(student: list[torch.Tensor], teacher: list[torch.Tensor], stride: int = 4, top_k: int = 10,
                      nms_iou: float = 0.3, min_score: float = 0.05) -> list[torch.Tensor]:
    r"""Dai et al. 2021, *General Instance Distillation for Object Detection*: the general instance selection
    module, on a dense anchor-free head. The GI score of a location is the largest difference between the
    two models' class probabilities, :math:`\max_c |p^t_c - p^s_c|`; its box is the one predicted there by
    the model with the higher class score. Boxes are kept by NMS (IoU ``nms_iou``) among locations with a GI
    score of at least ``min_score`` that are local maxima of it (3 x 3), at most ``top_k`` per image. Neither the ground truth nor the teacher's
    confidence alone decides: where the student misses an object, fires on background, or the teacher sees
    something nobody annotated, the two disagree. ``student`` / ``teacher``: ``[heatmap, box]``; returns one
    ``(n, 4)`` xyxy tensor per image."""
    (hs, bs), (ht, bt) = student, teacher
    ps, pt = hs.detach().float().sigmoid(), ht.detach().float().sigmoid()
    score = (pt - ps).abs().amax(1)  # (B, H, W)
    score = score * (F.max_pool2d(score[:, None], 3, 1, 1)[:, 0] == score)  # local maxima only, as detections are
    boxes_s = distances_to_boxes(expected_distances(bs.detach()), stride)
    boxes_t = distances_to_boxes(expected_distances(bt.detach()), stride)
    boxes = torch.where((pt.amax(1) >= ps.amax(1))[:, None], boxes_t, boxes_s)  # (B, 4, H, W)
    out = []
    for b in range(len(score)):
        flat, cand = score[b].reshape(-1), boxes[b].reshape(4, -1).T
        order = flat.argsort(descending=True)
        order = order[flat[order] >= min_score]
        kept: list[int] = []
        for i in order.tolist():
            if len(kept) == top_k:
                break
            box = cand[i:i + 1]
            if box[0, 2] <= box[0, 0] or box[0, 3] <= box[0, 1]:
                continue
            if kept and float(_iou(box, cand[kept]).max()) > nms_iou:
                continue
            kept.append(i)
        out.append(cand[kept].reshape(-1, 4))
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a (N, 4)`` with every box of ``b (M, 4)``: ``(N, M)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp_min(0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp_min(1e-6)


@register_loss("gid", student=["neck", "logits", "box"], teacher=["neck", "logits", "box"], labels=True)
class GID(nn.Module):
    r"""General instance distillation (Dai et al. 2021): feature imitation and response distillation over the
    regions of *general instances* (:func:`general_instances`), selected by where teacher and student
    disagree, ground truth or not, together with the ground-truth boxes:

    .. math:: \mathcal{L} = \lambda_f \frac{1}{2N_p} \sum_{hw} I_{hw} \|f_{adap}(s)_{hw} - t_{hw}\|^2
        + \lambda_r \,\mathrm{HeatmapKD}(I) + \lambda_l\, \mathrm{LD}(I)

    :math:`I`: locations inside a general instance's box or a ground-truth box. The student's neck goes
    through its own ``1 x 1`` adaptation layer (built on the first batch). Not implemented: GID's
    relation-based term over ROI-aligned instance features.
    """

    def __init__(self, stride: int = 4, top_k: int = 10, feature_weight: float = 1.0, response_weight: float = 1.0,
                 box_weight: float = 1.0, temperature: float = 1.0, ld_temperature: float = 10.0,
                 with_ground_truth: bool = True):
        super().__init__()
        self.stride, self.top_k, self.with_ground_truth = stride, top_k, with_ground_truth
        self.weights = (feature_weight, response_weight, box_weight)
        self.temperature, self.ld_temperature = temperature, ld_temperature
        self.adapt: nn.Module | None = None

    def region(self, student: list[torch.Tensor], teacher: list[torch.Tensor], targets) -> torch.Tensor:
        """The distilled locations ``(B, H, W)``: general instances, and the ground truth when asked."""
        boxes = general_instances(student, teacher, self.stride, self.top_k)
        if self.with_ground_truth:
            boxes = [torch.cat([b, g.to(b)]) for b, g in zip(boxes, _gt_boxes(targets))]
        return box_mask(boxes, student[0].shape[-2:], self.stride, student[0].device)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        (fs, hs, bs), (ft, ht, bt) = student, teacher
        if self.adapt is None:
            self.adapt = (nn.Identity() if fs.shape[1] == ft.shape[1] else
                          nn.Conv2d(fs.shape[1], ft.shape[1], 1)).to(fs.device)
        fs = self.adapt(fs)
        _same(fs, ft, "features")
        mask = self.region([hs, bs], [ht, bt], targets)
        se = ((fs.float() - ft.float()) ** 2).sum(1)
        feature = (se * mask).sum() / (2 * mask.sum().clamp_min(1))
        response = heatmap_kd(hs, ht, self.temperature, mask)
        box = localization_kd(bs, bt, self.ld_temperature, mask)
        wf, wr, wb = self.weights
        return wf * feature + wr * response + wb * box
