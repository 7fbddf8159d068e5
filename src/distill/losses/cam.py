"""Grad-CAM++ explanation maps and distillation through them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.registry import register_loss


def gradcam_pp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM++ maps — Chattopadhay et al. 2018, *Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks* (WACV).

    ``activations`` :math:`A` is a ``(N, C, H, W)`` feature map and ``gradients``
    :math:`g = \partial Y^c / \partial A` the gradient of each image's class score
    :math:`Y^c` (a logit) with respect to it; the result is ``(N, H, W)``.

    With the exponential score :math:`S^c = \exp(Y^c)` of the paper, and a network
    that is piecewise linear after :math:`A` (ReLU), the higher derivatives are
    powers of :math:`g` and the pixel weights have the closed form

    .. math::
        \alpha^{kc}_{ij} = \frac{(g^k_{ij})^2}
            {2\,(g^k_{ij})^2 + \sum_{a,b} A^k_{ab}\,(g^k_{ij})^3}
        \quad(0 \text{ where the denominator is } 0),

    .. math::
        w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\,\mathrm{relu}(g^k_{ij}), \qquad
        L^c_{ij} = \mathrm{relu}\Big(\sum_k w^c_k A^k_{ij}\Big).

    (The paper's :math:`\mathrm{relu}(\partial S^c/\partial A) = \exp(Y^c)\,\mathrm{relu}(g)`; the positive
    per-image factor :math:`\exp(Y^c)` only scales the map and is left out, as in the authors' code.)
    Differentiable in both arguments, so a map computed from ``create_graph=True``
    gradients can be trained through.
    """
    if activations.dim() != 4 or activations.shape != gradients.shape:
        raise ValueError(f"gradcam_pp needs (N, C, H, W) activations and gradients of the same shape, got "
                         f"{tuple(activations.shape)} and {tuple(gradients.shape)}")
    g2 = gradients.pow(2)
    denominator = 2 * g2 + activations.sum((2, 3), keepdim=True) * g2 * gradients
    nonzero = denominator != 0
    # the inner where keeps 0/0 out of the backward pass too
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)),
                        torch.zeros_like(denominator))
    weights = (alpha * F.relu(gradients)).sum((2, 3), keepdim=True)  # (N, C, 1, 1)
    return F.relu((weights * activations).sum(1))


def unit_max(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(N, H, W)`` maps divided by their per-sample maximum (all-zero maps stay zero)."""
    return maps / maps.flatten(1).amax(1).clamp_min(eps)[:, None, None]


def _source(features: torch.Tensor):
    """Where to differentiate: ``features`` itself, or, when it is a dtype copy (mixed precision hands the
    losses float32 copies of the student's bf16 tensors), the tensor it was copied from, which the logits
    were computed from (its autograd edge)."""
    node = features.grad_fn
    if node is not None and type(node).__name__ == "ToCopyBackward0":
        return torch.autograd.graph.GradientEdge(*node.next_functions[0])
    return features


@register_loss("cam", student=["last_stage", "logits"], teacher=["gradcam++(last_stage)", "logits"])
def cam_match_loss(student_values: list[torch.Tensor], teacher_values: list[torch.Tensor]) -> torch.Tensor:
    r"""Matching Grad-CAM++ explanations — the knowledge-distillation experiment of Chattopadhay et al.
    2018, *Grad-CAM++* (WACV), §5: the student is trained with

    .. math::
        \mathcal{L} = \mathcal{L}_{CE} + \alpha\,\big\| L^c_s - L^c_t \big\|_2^2

    where :math:`L^c` is a model's Grad-CAM++ map (:func:`gradcam_pp`) for class :math:`c`. This
    function is the second part; bind it with a ``ce`` term beside it and weight :math:`\alpha`::

        Term(cam_match_loss, alpha, student=["last_stage", "logits"],
             teacher=["gradcam++(last_stage)", "logits"])

    Args:
        student_values: ``[A_s, z_s]``: the student's ``(N, C, H, W)`` feature map, in the autograd
            graph, and its ``(N, K)`` logits.
        teacher_values: ``[L_t, z_t]``: the teacher's ``(N, H', W')`` Grad-CAM++ map (the
            ``gradcam++(LAYER)`` tap) and its ``(N, K)`` logits.

    The class :math:`c` is the teacher's prediction (the argmax of :math:`z_t`; the ``gradcam++`` tap
    explains the teacher's own prediction). The student's map is computed from
    ``torch.autograd.grad(..., create_graph=True)``, so the loss trains the student through its own
    explanation (a double backward). Both maps are divided by their per-sample maximum (scale-free:
    the maps' absolute size depends on the logits' scale) after the student's map is resized
    bilinearly to the teacher map's size; the loss is the mean of the squared differences over
    samples and positions (the paper's squared norm divided by :math:`N H' W'`).

    Needs autograd: with gradients disabled (or a feature map outside the graph) there is no
    student explanation to compute, and a ``ValueError`` says so.
    """
    features, logits = student_values
    teacher_map, teacher_logits = teacher_values
    if features.dim() != 4:
        raise ValueError(f"cam_match_loss needs the student's (N, C, H, W) feature map first, got shape "
                         f"{tuple(features.shape)}")
    if teacher_map.dim() != 3:
        raise ValueError(f"cam_match_loss needs the teacher's (N, H, W) Grad-CAM++ map (a 'gradcam++(LAYER)' "
                         f"tap) first, got shape {tuple(teacher_map.shape)}")
    if not (torch.is_grad_enabled() and features.requires_grad and logits.requires_grad):
        raise ValueError("cam_match_loss differentiates the student's class score with respect to its feature "
                         "map, so it needs autograd enabled and both in the graph")
    classes = teacher_logits.argmax(1).to(logits.device)
    score = logits.gather(1, classes[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, _source(features), create_graph=True, allow_unused=True)
    if gradients is None:
        raise ValueError("the student's logits do not depend on the feature map given to cam_match_loss")
    student_map = gradcam_pp(features.float(), gradients.float())
    student_map = F.interpolate(student_map[:, None], size=teacher_map.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0]
    return (unit_max(student_map) - unit_max(teacher_map.float())).pow(2).mean()
