"""Why KD at alpha = 0.9 diverged in the Hinton MNIST recipe (README, "Hinton et al. 2015 on MNIST").

    PYTHONPATH=src python scripts/hinton_alpha.py TEACHER.safetensors [steps=300] [every=25]

The recipe's student (2x800 ReLU MLP, SGD with momentum 0.9, batch 128, no schedule in these first steps) trained
on (1 - alpha) CE + alpha T^2 KL(p_T || p_S) at T = 20 for each (alpha, lr) below, from the same initialisation and
batches. Every ``every`` steps it prints the loss, the validation accuracy, and the sharpness: the top eigenvalue of
the loss's Hessian on a fixed batch (power iteration on Hessian-vector products). Gradient descent with momentum
beta on a quadratic of curvature lambda is stable only while lr * lambda < 2 (1 + beta) = 3.8; the printed
``lr*sharp`` is that product.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
from safetensors.torch import load_model  # noqa: E402

from distill.losses import kd_loss  # noqa: E402
from distill.zoo import build_model, load_dataset  # noqa: E402

opts = dict(kv.split("=", 1) for kv in sys.argv[2:])
steps, every, temperature = int(opts.get("steps", 300)), int(opts.get("every", 25)), float(opts.get("T", 20))
data = load_dataset("mnist", 5000)
teacher = build_model("mlp", data.input_shape, hidden=[1200, 1200], dropout=0.5, input_dropout=0.2)
load_model(teacher, sys.argv[1])
teacher.eval()
x, y = data.train.inputs, data.train.labels
with torch.no_grad():
    teacher_logits = torch.cat([teacher(x[i:i + 2000]) for i in range(0, len(x), 2000)])
spread = (teacher_logits.max(1).values - teacher_logits.min(1).values).mean().item()
print(json.dumps({"teacher_logit_spread": round(spread, 2), "T": temperature}))
probe = torch.arange(512)


def loss_fn(model, idx, alpha):
    logits = model(x[idx])
    soft = kd_loss(logits, teacher_logits[idx], temperature=temperature)  # T^2-scaled KL, batch mean
    return (1 - alpha) * F.cross_entropy(logits, y[idx]) + alpha * soft


def sharpness(model, alpha, iters=20):
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model, probe, alpha), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    value = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        value = sum((a * b).sum() for a, b in zip(hv, v)).item()
        v = [h.detach() for h in hv]
    return value


def accuracy(model):
    with torch.no_grad():
        return 100 * (model(data.val.inputs).argmax(1) == data.val.labels).float().mean().item()


for alpha, lr in [(0.0, 0.1), (0.5, 0.1), (0.9, 0.1), (0.9, 0.05), (0.9, 0.02), (1.0, 0.1)]:
    torch.manual_seed(0)
    student = build_model("mlp", data.input_shape, hidden=[800, 800])
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for step in range(steps + 1):
        idx = order[(step * 128) % len(x):][:128]
        if step % every == 0:
            sharp = sharpness(student, alpha)
            with torch.no_grad():
                loss = loss_fn(student, probe, alpha).item()
            print(json.dumps({"alpha": alpha, "lr": lr, "step": step, "loss": round(loss, 4),
                              "val": round(accuracy(student), 2), "sharpness": round(sharp, 2),
                              "lr*sharp": round(lr * sharp, 2)}), flush=True)
            if not math.isfinite(loss):
                break
        optimizer.zero_grad()
        loss_fn(student, idx, alpha).backward()
        optimizer.step()
