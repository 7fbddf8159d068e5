"""Fine-grained feature imitation (Wang et al. 2019; hint learning on detectors, Chen et al. 2017).

Loss = detection + weight * 1/(2 N_p) sum_{near-object locations} ||conv1x1(neck_s) - neck_t||^2.
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_fine_grained", inputs="detection")
def det_fine_grained(weight: float = 1.0, psi: float = 0.5, stride: int = 4) -> list:
    """The detection loss beside neck imitation at the locations whose object-shaped box overlaps an object
    by more than ``psi`` of the best (Wang et al.'s mask, anchors replaced by each object's own shape)."""
    return detection_and(weight, "masked_imitation", stride, psi=psi, stride=stride)
