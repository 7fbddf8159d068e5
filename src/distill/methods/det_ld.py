"""Localization distillation (Zheng et al. 2022) of the box-edge distributions.

Loss = detection + weight * T^2 * sum_w w * mean_edges KL(softmax(box_t / T) || softmax(box_s / T)) / sum w, over
the locations where the detector learns boxes (LD's main distillation region).
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_ld", inputs="detection")
def det_ld(weight: float = 1.0, temperature: float = 10.0, stride: int = 4) -> list:
    """The detection loss beside LD of the four edge distributions at the objects' locations."""
    return detection_and(weight, "ld_gt", stride, temperature=temperature, stride=stride)
