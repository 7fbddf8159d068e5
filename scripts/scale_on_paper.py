"""Measured inputs for docs/scaling.md: what a batch-relational term costs as the gathered batch grows, and
the bytes a data-parallel step moves. Run alone, one thread: ``python scripts/scale_on_paper.py``.

Under P processes with b samples each, a relational term (SP, RKD, PKT, CC, DIST, CRD) sees the gathered
batch of P*b samples on every process (distill.distributed.gather_batch), so its cost grows with P*b while
the per-sample terms' cost stays at b.
"""
import time

import torch

from distill.losses import rkd_loss, sp_loss
from distill.zoo import build_model

torch.set_num_threads(1)


def seconds(fn, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def forward_backward(loss_fn, n, dim):
    s = torch.randn(n, dim, requires_grad=True)
    t = torch.randn(n, dim)
    return lambda: loss_fn(s, t).backward()


student = build_model("resnet8x4", (1, 28, 28), 10)
params = sum(p.numel() for p in student.parameters())
print(f"resnet8x4: {params:,} parameters, {4 * params / 1e6:.1f} MB of float32 gradients all-reduced per step")
print("gathered batch | SP fwd+bwd (ms) | RKD fwd+bwd (ms) | RKD angle tensor (MB)")
for n in (64, 128, 256, 512, 1024):
    angle_mb = 4 * n ** 3 / 1e6
    sp = seconds(forward_backward(sp_loss, n, 256)) * 1e3
    rkd = seconds(forward_backward(rkd_loss, n, 256), repeats=1) * 1e3 if angle_mb < 2000 else float("nan")
    print(f"{n} | {sp:.2f} | {rkd:.1f} | {angle_mb:,.0f}")
