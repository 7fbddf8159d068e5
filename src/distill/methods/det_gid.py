"""General instance distillation (Dai et al. 2021): distil where teacher and student disagree, annotated or not.

Loss = detection + weight * (neck imitation + heatmap KD + LD) over the boxes of the general instances (top-k
locations by max_c |p_t - p_s| after NMS, each with the box of the more confident model) and the ground truth.
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_gid", inputs="detection")
def det_gid(weight: float = 1.0, top_k: int = 10, feature_weight: float = 1.0, response_weight: float = 1.0,
            box_weight: float = 1.0, with_ground_truth: bool = True, stride: int = 4) -> list:
    """The detection loss beside GID's feature and response distillation over general instances."""
    return detection_and(weight, "gid", stride, top_k=top_k, feature_weight=feature_weight,
                         response_weight=response_weight, box_weight=box_weight,
                         with_ground_truth=with_ground_truth, stride=stride)
