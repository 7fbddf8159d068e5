"""distill: knowledge distillation for any PyTorch model."""
from distill import losses
from distill.data import ArrayDataset, MixUp, RandomShift, TokenMixUp, unlabelled
from distill.engine import Distiller, DistillError, TrainConfig, seed_everything
from distill.evaluation import count_parameters, evaluate, inference_time
from distill.stages import Stage, fit_stages
from distill.terms import Ramp, Term
from distill.zoo import build_model, load_dataset

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset", "DistillError", "Distiller", "MixUp", "RandomShift", "Ramp", "Stage", "Term", "TokenMixUp", "TrainConfig",
    "build_model", "count_parameters", "evaluate", "fit_stages", "inference_time", "load_dataset", "losses",
    "seed_everything", "unlabelled",
]


def __getattr__(name: str):
    """``distill.DistillationTrainer`` imported on first use, so ``import distill`` never imports transformers."""
    if name == "DistillationTrainer":
        from distill.integrations.hf_trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
