"""Gathering a batch across processes, for loss terms that compare samples within a batch.

Under data-parallel training each process sees its share of the batch. A
per-sample term (CE, KD, hints) averaged per process and then across processes
(DDP averages gradients) equals the term over the whole batch. A batch-relational
term (RKD, SP, PKT, CC, DIST, CRD) does not: the relations between samples on
different processes would be lost. Such terms see :func:`gather_batch` of their
inputs instead, the whole batch in rank order on every process.

The gradient works out: every process computes the same whole-batch loss ``L``;
the backward of the differentiable all-gather sums, for each process's own
samples, the gradients that all ``W`` processes computed (``W * dL/dx_r``), and
DDP's average over processes divides by ``W`` again, so the parameters get
``dL/dtheta`` exactly as one process with the whole batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shutdown() -> None:
    """Wait for every process, then tear the process group down (nothing when there is none).

    A process that exits with its group alive can abort in the communication threads'
    destructors ("terminate called without an active exception") while its peers still talk.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (``(n_r, ...)`` on process ``r``) concatenated over all processes along dim 0, in rank order.

    Differentiable when ``tensor`` requires grad (see the module docstring for the gradient);
    local batches of different sizes are padded for the exchange and trimmed after.
    One process: ``tensor`` itself.
    """
    n = world_size()
    if n == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        padded = F.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, longest - tensor.shape[0]])
    parts = _AllGather.apply(padded.contiguous()) if tensor.requires_grad else _all_gather(padded.contiguous())
    return torch.cat([part[:k] for part, k in zip(parts, sizes)])


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return parts


class _AllGather(torch.autograd.Function):
    """All-gather whose backward hands each process the sum over processes of the gradients
    of its own part (an all-reduce, which gloo has, rather than a reduce-scatter, which it lacks)."""

    @staticmethod
    def forward(ctx, tensor):
        return tuple(_all_gather(tensor))

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]
