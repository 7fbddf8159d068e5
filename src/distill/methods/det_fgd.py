"""FGD: focal and global distillation (Yang et al. 2022) on the neck.

Loss = detection + weight * (focal: attention- and scale-weighted squared error, foreground and background
apart + attention-map L1 + global: squared error of GcBlock outputs).
"""
from distill.methods.detection import detection_and
from distill.methods.registry import register_method


@register_method("det_fgd", inputs="detection")
def det_fgd(weight: float = 1.0, alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 1e-3, lam: float = 5e-6,
            temperature: float = 0.5, stride: int = 4) -> list:
    """The detection loss beside FGD on the neck (its coefficients are the loss's, ``weight`` scales them all)."""
    return detection_and(weight, "fgd", stride, alpha=alpha, beta=beta, gamma=gamma, lam=lam,
                         temperature=temperature, stride=stride)
