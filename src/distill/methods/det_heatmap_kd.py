"""Logit KD on the detector's classification heatmaps (Hinton et al. 2015, per class and location).

Loss = detection + weight * T^2 * mean_{locations} sum_c binaryKL(sigmoid(z_t / T) || sigmoid(z_s / T)).
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_heatmap_kd", inputs="detection")
def det_heatmap_kd(weight: float = 1.0, temperature: float = 1.0, stride: int = 4) -> list:
    """The detection loss beside heatmap KD over every location (background included)."""
    return detection_and(weight, "heatmap_kd", stride, temperature=temperature)
