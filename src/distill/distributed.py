"""Several processes: gathering a batch for batch-relational terms, and coordinating the files of a run.

**Coordination.** Under ``torchrun`` or ``accelerate launch`` every process runs the same
``distill run``. Files are written by one process (rank 0) and read by the others only after it
has finished writing; every decision taken from the file system (is the teacher cached, is this
student finished) is taken once by rank 0 and sent to the others (:func:`on_main`), so all
processes take the same branch and meet in the same collective calls. The run directory and the
cache must be on a file system every process sees (one machine, or a shared disk).

**Gathering.**

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

import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F


T = TypeVar("T")


def _group() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _group() else 1


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    return dist.get_rank() if _group() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return rank() == 0


def init(cpu: bool | None = None) -> None:
    """Join the launcher's process group now, before any training (nothing for one process, or when joined).

    Through Accelerate's process state, so the ``Accelerator`` of each later training run finds the
    same group. ``cpu``: use gloo on the CPU (default: when there is no CUDA, as the engine does).
    """
    if not launched() or _group():
        return
    from accelerate import PartialState

    PartialState(cpu=(not torch.cuda.is_available()) if cpu is None else cpu)


def _joined() -> int:
    """The number of processes, joining the launcher's group first if this process has not yet."""
    if launched() and not _group():
        init()
    return world_size()


def barrier() -> None:
    """Wait until every process gets here (nothing for one process)."""
    if _joined() > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any picklable object), on every process."""
    if _joined() == 1:
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every process, once it has returned.

    Both a barrier and a broadcast: files ``fn`` writes can be read by every process afterwards, and a
    decision ``fn`` takes from the file system is the same everywhere. An exception ``fn`` raises is
    raised on every process (on the others marked ``distill_shared = True``, so it is reported once).
    """
    if _joined() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - handed to every process, raised below
            error = err
    try:
        result, error = broadcast((result, error))
    except Exception as err:  # noqa: BLE001 - e.g. an exception that does not pickle
        if is_main() and error is not None:
            raise error from None
        raise RuntimeError(f"rank 0 failed and its error could not be sent: {err}") from None
    if error is not None:
        if not is_main():
            error.distill_shared = True
        raise error
    return result


def broadcast_module(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``model`` on every process.

    After data-parallel training the parameters agree, but buffers (BatchNorm's running statistics)
    were last updated on each process's own batch; rank 0's model is the one saved to disk.
    """
    if _joined() == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        for tensor in model.state_dict().values():
            target = tensor.device if device is None else device
            sent = tensor if tensor.device == target and tensor.is_contiguous() else tensor.to(target).contiguous()
            dist.broadcast(sent, src=0)
            if sent is not tensor:
                tensor.copy_(sent)


def shutdown() -> bool:
    """Wait for every process, then tear the process group down; whether there was one.

    A process that exits with its group alive can abort in the communication threads'
    destructors ("terminate called without an active exception") while its peers still talk.
    """
    if not _group():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def abandon() -> None:
    """Tear the process group down without waiting for the others (after an error: they may never come)."""
    if _group():
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


def say(message: str) -> None:
    """Print ``message`` once: from rank 0 (every process runs the same code)."""
    if is_main():
        print(message, flush=True)
