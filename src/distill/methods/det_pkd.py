"""PKD for detectors (Cao et al. 2022): feature imitation through Pearson correlation on the neck.

Loss = detection + weight * 1/2 MSE(standardise(conv1x1(neck_s)), standardise(neck_t)), each channel of each
image standardised over its locations.
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_pkd", inputs="detection")
def det_pkd(weight: float = 1.0, stride: int = 4) -> list:
    """The detection loss beside Pearson-correlation imitation of the whole neck."""
    return detection_and(weight, "pearson_kd", stride)
