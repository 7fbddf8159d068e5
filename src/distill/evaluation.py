"""Measuring a model: accuracy, size and inference time."""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from distill.data import as_dataset, collate
from distill.taps import logits_of
from distill.teacher import run_model


def evaluate(model: nn.Module, dataset, batch_size: int = 1000, accelerator=None) -> dict[str, float]:
    """Top-1 accuracy (in %) and mean cross-entropy of ``model``'s logits on a labelled dataset.

    With an ``accelerator`` the evaluation is sharded across processes and the
    results gathered, so every process returns the same numbers.
    """
    dataset = as_dataset(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = next(model.parameters()).device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=True)
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            inputs = batch["input"].to(device) if isinstance(batch["input"], torch.Tensor) else batch["input"]
            labels = batch["label"].to(device)
            logits = logits_of(run_model(model, inputs)).float()
            if accelerator is not None:
                logits, labels = accelerator.gather_for_metrics((logits, labels))
            correct += int((logits.argmax(-1) == labels).sum())
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            count += len(labels)
    model.train(was_training)
    return {"accuracy": 100.0 * correct / max(1, count), "loss": loss_sum / max(1, count)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulate operations of one forward pass per sample, counted over ``nn.Linear`` and ``nn.Conv*`` layers."""
    total = 0

    def linear(module, args, output):
        nonlocal total
        total += output.numel() * module.in_features

    def conv(module, args, output):
        nonlocal total
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_hook(conv))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total // len(inputs)


def inference_time(model: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds for one forward pass on ``inputs`` (eval mode, inference mode)."""
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            run_model(model, inputs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)
