"""The teacher cache: in memory or on disk (memory-mapped), full or top-k logits."""
import copy
import math

import pytest
import torch

from distill.cache import CachedTeacher, TeacherOutputs, dense_from_topk, topk_logits
from distill.engine import Distiller, DistillError, TrainConfig, seed_everything
from distill.losses import kd_loss
from distill.teacher import LiveTeacher
from distill.terms import Term
from distill.zoo import build_model


def _count_calls(model):
    calls = []
    return calls, model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))


def test_disk_cache_round_trip_equals_the_live_teacher_exactly(digits, teacher, tmp_path):
    live = LiveTeacher(teacher, ["logits", "features.0"])
    n = len(digits.train)
    cached = CachedTeacher(live, digits.train, batch_size=n, outputs=TeacherOutputs(tmp_path / "c"))
    rows = [5, 0, 77, 1200, 5]
    batch = digits.train.__getitems__(rows)
    whole, b = live(digits.train.__getitems__(list(range(n)))), cached(batch)
    for tap in ("logits", "features.0"):
        assert torch.equal(whole[tap][rows], b[tap]), tap  # the same forward pass, stored as float32: bit-equal
    a = live(batch)  # a smaller batch rounds differently, but only just
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".npy", ".npy"]
    # a later run with the same teacher and data reads the files instead of running the teacher
    calls, handle = _count_calls(teacher)
    again = CachedTeacher(LiveTeacher(teacher, ["logits"]), digits.train, outputs=TeacherOutputs(tmp_path / "c"))
    handle.remove()
    assert calls == [] and torch.equal(again(batch)["logits"], b["logits"])


def test_filling_the_store_leaves_the_random_stream_alone(digits, teacher, tmp_path):
    """A run that fills the store on disk and a later one that finds it there train the same student bit for bit
    (the fill's loader must not draw from the global generator that dropout and the model's init read)."""
    def run():
        torch.manual_seed(0)
        student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Dropout(0.5),
                                      torch.nn.ReLU(), torch.nn.Linear(32, 10))
        Distiller(student, teacher, [Term("kd")], epochs=1, batch_size=256, progress=False, cache_teacher=True,
                  teacher_cache_dir=str(tmp_path / "c"), seed=0).fit(digits.train)
        return torch.cat([p.detach().flatten() for p in student.parameters()])

    filled = run()
    assert (tmp_path / "c" / "meta.json").is_file()
    assert torch.equal(run(), filled)


def test_disk_cache_refuses_another_teacher(digits, teacher, tmp_path):
    CachedTeacher(LiveTeacher(teacher, ["logits"]), digits.train, outputs=TeacherOutputs(tmp_path / "c"))
    other = build_model("mlp", digits.input_shape, hidden=[4])
    student = build_model("mlp", digits.input_shape, hidden=[4])
    d = Distiller(student, other, [Term("kd")], epochs=1, progress=False, cache_teacher=True,
                  teacher_cache_dir=str(tmp_path / "c"))
    with pytest.raises(DistillError, match="another teacher or dataset"):
        d.fit(digits.train)


def test_topk_keeps_the_top_probabilities_and_the_tail_mass_exactly():
    torch.manual_seed(0)
    z = torch.randn(6, 10) * 3
    for t in (1.0, 4.0):
        parts = topk_logits(z, 3, temperatures=(1.0, 4.0))
        dense = dense_from_topk(parts["values"], parts["indices"], parts["tail"][:, [1.0, 4.0].index(t)], 10, t)
        p, p_hat = torch.softmax(z / t, 1), torch.softmax(dense / t, 1)
        top = parts["indices"]
        assert torch.allclose(p.gather(1, top), p_hat.gather(1, top), atol=1e-6)
        tail = 1 - p.gather(1, top).sum(1)
        assert torch.allclose(tail, 1 - p_hat.gather(1, top).sum(1), atol=1e-6)
        # the tail is spread evenly
        rest = p_hat.scatter(1, top, float("nan"))
        assert torch.allclose(rest.nan_to_num(0).sum(1) / 7, rest[~rest.isnan()].view(6, 7)[:, 0], atol=1e-6)
    full = topk_logits(z, 10)
    assert torch.equal(dense_from_topk(full["values"], full["indices"], full["tail"][:, 0], 10), z)


def test_topk_kd_is_within_the_stated_bound_and_its_top_gradients_are_exact():
    torch.manual_seed(1)
    n, c, k, t = 16, 50, 5, 2.0
    z_t = torch.randn(n, c) * 4
    z_s = torch.randn(n, c, requires_grad=True)
    parts = topk_logits(z_t, k, temperatures=(t,))
    dense = dense_from_topk(parts["values"], parts["indices"], parts["tail"][:, 0], c, t)
    per_sample = []
    for target in (z_t, dense):
        p = torch.softmax(target / t, 1)
        per_sample.append((p * (p.clamp_min(1e-30).log() - torch.log_softmax(z_s / t, 1))).sum(1))
    log_q = torch.log_softmax(z_s / t, 1).detach()
    tail_mask = torch.ones(n, c, dtype=torch.bool).scatter(1, parts["indices"], False)
    q_tail = log_q.masked_fill(~tail_mask, float("nan"))
    spread = q_tail.nan_to_num(-1e9).amax(1) - q_tail.nan_to_num(1e9).amin(1)
    p_tail = torch.exp(parts["tail"][:, 0] - torch.logsumexp(z_t / t, 1))
    bound = p_tail * (math.log(c - k) + spread)
    assert ((per_sample[0] - per_sample[1]).abs().detach() <= bound + 1e-6).all()
    assert (p_tail > 1e-3).any()  # the test has a real tail to approximate
    # gradients on the top-k student logits are exact
    g_exact, = torch.autograd.grad(kd_loss(z_s, z_t, temperature=t), z_s)
    g_topk, = torch.autograd.grad(kd_loss(z_s, dense, temperature=t), z_s)
    top = parts["indices"]
    assert torch.allclose(g_exact.gather(1, top), g_topk.gather(1, top), atol=1e-6)


def test_topk_cache_trains_and_refuses_an_uncached_temperature(digits, teacher, tmp_path):
    accuracy = {}
    for k in (None, 3):  # soft targets alone, from all logits or from the top 3 and the rest's mass
        seed_everything(0)
        student = build_model("mlp", digits.input_shape, hidden=[32])
        disk = dict(teacher_cache_dir=str(tmp_path / "k"), teacher_top_k=k) if k else {}
        d = Distiller(student, teacher, [Term("kd", temperature=4)], epochs=4, lr=1e-2, batch_size=64,
                      progress=False, cache_teacher=True, **disk)
        d.fit(digits.train, digits.val)
        accuracy[k] = d.history[-1]["val/accuracy"]
    assert accuracy[None] > 75 and accuracy[3] > accuracy[None] - 5, accuracy
    d = Distiller(build_model("mlp", digits.input_shape, hidden=[4]), teacher, [Term("kd", temperature=7)],
                  epochs=1, progress=False, cache_teacher=True, teacher_cache_dir=str(tmp_path / "k"), teacher_top_k=3)
    with pytest.raises(DistillError, match="not 7"):
        d.fit(digits.train)


def test_cache_settings_are_checked():
    with pytest.raises(ValueError, match="needs cache_teacher"):
        TrainConfig(teacher_cache_dir="x")
    with pytest.raises(ValueError, match="needs teacher_cache_dir"):
        TrainConfig(cache_teacher=True, teacher_top_k=5)
    with pytest.raises(ValueError, match="give a path"):
        TeacherOutputs(top_k=3)


def test_a_channels_last_run_fills_the_cache_in_channels_last_with_the_same_values(digits, teacher):
    model = copy.deepcopy(teacher)  # the shared teacher keeps its layout
    inner = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    layouts = []  # (a 1-channel input is both layouts at once; the second convolution's input is not)
    inner.register_forward_pre_hook(lambda m, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    seed_everything(0)
    student = build_model("cnn", digits.input_shape, channels=[4, 8], hidden=16)
    d = Distiller(student, model, [Term("kd", temperature=2)], epochs=1, batch_size=256, progress=False,
                  cache_teacher=True, channels_last=True)
    d.fit(digits.train)
    assert layouts and all(layouts)
    rows = list(range(0, len(digits.train), 7))
    batch = digits.train.__getitems__(rows)
    plain = LiveTeacher(teacher, ["logits"])(digits.train.__getitems__(list(range(len(digits.train)))))["logits"]
    assert torch.allclose(d.teacher(batch)["logits"], plain[rows], atol=1e-5)
