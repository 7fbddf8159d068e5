import json
import shutil
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from distill import Distiller, DistillError, RandomShift, Term, build_model, seed_everything


def test_tiny_distillation_learns(digits, teacher):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[32])
    d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=8, lr=1e-2,
                  batch_size=64, progress=False)
    history = d.fit(digits.train, digits.val)
    acc = d.evaluate(digits.test)["accuracy"]
    assert acc > 80, acc  # chance is 10%
    assert history[-1]["val/accuracy"] > history[0]["val/accuracy"] - 1e-9
    assert {"train/ce", "train/kd", "train/loss", "val/accuracy"} <= set(history[-1])


def test_teacher_is_frozen_and_never_optimised(digits, teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model("mlp", digits.input_shape, hidden=[16])
    state = (teacher.training, [p.requires_grad for p in teacher.parameters()])
    seen = []  # the teacher's state while the run steps

    def weight(progress):
        seen.append((teacher.training, any(p.requires_grad for p in teacher.parameters())))
        return 1.0

    d = Distiller(student, teacher, [Term("kd", weight, temperature=2)], epochs=1, batch_size=64, progress=False)
    d.fit(digits.train)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too: eval() mode
    assert seen and all(state == (False, False) for state in seen)
    assert all(p.grad is None for p in teacher.parameters())
    # after the run the teacher is as it was (test_teacher_is_restored_when_the_run_fails: a trainable one)
    assert (teacher.training, [p.requires_grad for p in teacher.parameters()]) == state


def test_teacher_is_restored_when_the_run_fails(digits):
    teacher = build_model("mlp", digits.input_shape, hidden=[8])
    student = build_model("mlp", digits.input_shape, hidden=[8])
    Distiller(student, teacher, [Term("kd")], epochs=1, batch_size=256, progress=False).fit(digits.train)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())

    def fails(s, t):
        raise RuntimeError("boom")

    with pytest.raises(DistillError, match="term 'fails'"):
        Distiller(student, teacher, [Term(fails)], epochs=1, progress=False).fit(digits.train)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    Distiller(teacher, None, epochs=1, batch_size=256, progress=False).fit(digits.train)  # it trains again


def test_shared_parameters_are_refused(digits):
    model = build_model("mlp", digits.input_shape, hidden=[8])
    with pytest.raises(DistillError, match="share parameters"):
        Distiller(model, model, [Term("kd")])


def test_kd_without_teacher_is_refused():
    with pytest.raises(DistillError, match="need a teacher"):
        Distiller(nn.Linear(2, 2), None, [Term("kd")])


def test_hint_with_connector_trains_connector_and_saves_it(digits, teacher, tmp_path):
    seed_everything(0)
    student = build_model("cnn", digits.input_shape, channels=[4, 8], hidden=16)
    term = Term("hint", 1.0, student="features.0", teacher="features.0", connector="conv1x1")
    d = Distiller(student, teacher, [Term("ce"), term], epochs=1, batch_size=64, progress=False, run_dir=tmp_path)
    d.fit(digits.train)
    connector = d.model.connectors["hint"]
    assert connector.conv.weight.shape == (8, 4, 1, 1)  # student 4 channels -> teacher 8
    saved = load_file(tmp_path / "student.connectors.safetensors")
    assert torch.equal(saved["hint.conv.weight"], connector.conv.weight.detach())


def test_wrong_tap_fails_before_training_with_nearest_names(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[16])
    d = Distiller(student, teacher, [Term("hint", student="featurs.1", teacher="head.1", connector="auto")],
                  epochs=1, progress=False)
    with pytest.raises(Exception, match="features"):
        d.fit(digits.train)


def test_shape_mismatch_without_connector_names_the_term(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[16])
    d = Distiller(student, teacher, [Term("hint", student="features.2", teacher="head.3", connector=None)],
                  epochs=1, progress=False)
    with pytest.raises(DistillError, match="term 'hint'.*connector"):
        d.fit(digits.train)


class PairDataset(Dataset):
    """A user dataset returning (input, label) tuples, as torchvision-style datasets do."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base.inputs[i], int(self.base.labels[i])


def test_any_torch_dataset_of_pairs_works(digits):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[32])
    d = Distiller(student, epochs=3, lr=1e-2, batch_size=64, progress=False)
    d.fit(PairDataset(digits.train), PairDataset(digits.val))
    assert d.evaluate(PairDataset(digits.test))["accuracy"] > 60


def _run(digits, teacher, run_dir, epochs=3, resume=False, seed=0, grad_accum=1):
    seed_everything(seed)
    student = build_model("mlp", digits.input_shape, hidden=[32], dropout=0.2)  # dropout: RNG state matters
    d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=epochs, lr=1e-2,
                  batch_size=64, progress=False, run_dir=run_dir, augment=RandomShift(1), keep_checkpoints=5,
                  grad_accum=grad_accum)
    d.fit(digits.train, digits.val, resume=resume)
    return student, d


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(digits, teacher, tmp_path):
    full, d_full = _run(digits, teacher, tmp_path / "full")
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    for later in sorted((partial / "checkpoints").iterdir())[1:]:  # as if killed during epoch 2
        shutil.rmtree(later)
    resumed, d_res = _run(digits, teacher, partial, resume=True, seed=123)  # different init: must be overwritten
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["val/accuracy"] for h in d_full.history] == [h["val/accuracy"] for h in d_res.history]
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    assert sum('"event": "epoch"' in line for line in lines) == 3


def test_checkpoints_keep_only_the_last_n(digits, teacher, tmp_path):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[8])
    Distiller(student, epochs=4, batch_size=256, progress=False, run_dir=tmp_path, keep_checkpoints=2).fit(digits.train)
    steps = -(-len(digits.train) // 256)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{3 * steps:08d}", f"step-{4 * steps:08d}"]
    last = tmp_path / "checkpoints" / f"step-{4 * steps:08d}"
    assert {"model.safetensors", "state.pt", "history.json"} <= {p.name for p in last.iterdir()}


def test_gradient_accumulation_steps_the_optimiser_less_often(digits, tmp_path):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[8])
    d = Distiller(student, epochs=1, batch_size=100, grad_accum=4, progress=False)
    d.fit(digits.train)
    batches = -(-len(digits.train) // 100)
    assert d.history[-1]["step"] == -(-batches // 4)


def test_lr_schedule_and_clipping(digits):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[8])
    d = Distiller(student, epochs=2, batch_size=256, lr=0.1, optimizer="sgd", schedule="cosine", warmup_epochs=1,
                  clip_grad_norm=1.0, progress=False)
    d.fit(digits.train)
    assert d.history[0]["lr"] == pytest.approx(0.1, rel=1e-6)  # end of warm-up
    assert d.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # end of cosine


def test_max_norm_projects_each_units_incoming_weights(digits):
    from distill.engine.loop import apply_max_norm

    layer = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, -2.0]]))  # row norms 5, 1, 2
    apply_max_norm(layer, 2.0)
    expected = torch.tensor([[1.2, 1.6], [0.6, 0.8], [0.0, -2.0]])  # only the first row is outside the ball
    assert torch.allclose(layer.weight, expected, atol=1e-5)
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[16])
    Distiller(student, epochs=1, batch_size=64, lr=0.5, optimizer="sgd", max_norm=0.3, progress=False).fit(digits.train)
    for module in (student.features[1], student.classifier):
        assert float(module.weight.detach().norm(dim=1).max()) <= 0.3 + 1e-5  # ~0.58 at initialisation


def test_cached_teacher_matches_the_live_teacher(digits, teacher):
    from distill.cache import CachedTeacher
    from distill.teacher import LiveTeacher

    live = LiveTeacher(teacher, ["logits", "features.0"])
    cached = CachedTeacher(live, digits.train, batch_size=500)
    batch = digits.train.__getitems__([5, 0, 77, 1200])
    a, b = live(batch), cached(batch)
    for tap in ("logits", "features.0"):
        assert torch.allclose(a[tap], b[tap], atol=1e-5), tap


def test_teacher_outputs_are_shared_between_runs(digits, teacher):
    from distill.cache import CachedTeacher, TeacherOutputs
    from distill.teacher import LiveTeacher

    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    outputs = TeacherOutputs()
    first = CachedTeacher(LiveTeacher(teacher, ["logits"]), digits.train, batch_size=500, outputs=outputs)
    passes = len(calls)
    assert sum(calls) == len(digits.train)
    again = CachedTeacher(LiveTeacher(teacher, ["logits"]), digits.train, batch_size=500, outputs=outputs)
    assert len(calls) == passes  # nothing new to compute
    more = CachedTeacher(LiveTeacher(teacher, ["logits", "features.0"]), digits.train, batch_size=500, outputs=outputs)
    assert sum(calls) == 2 * len(digits.train)  # one more pass, for the new tap only
    handle.remove()
    batch = digits.train.__getitems__([3, 9])
    assert set(first(batch)) == {"logits"} and set(more(batch)) == {"logits", "features.0"}
    assert torch.equal(first(batch)["logits"], again(batch)["logits"])
    with pytest.raises(ValueError, match="another dataset"):
        CachedTeacher(LiveTeacher(teacher, ["logits"]), digits.val, outputs=outputs)


def test_eval_every_skips_validation_between_epochs(digits):
    student = build_model("mlp", digits.input_shape, hidden=[8])
    d = Distiller(student, epochs=5, batch_size=256, eval_every=2, progress=False)
    d.fit(digits.train, digits.val)
    assert ["val/accuracy" in h for h in d.history] == [False, True, False, True, True]


def test_cache_teacher_trains_like_the_live_teacher(digits, teacher):
    results = []
    for cache in (False, True):
        seed_everything(0)
        student = build_model("mlp", digits.input_shape, hidden=[32])
        d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=3, lr=1e-2,
                      batch_size=64, progress=False, cache_teacher=cache)
        d.fit(digits.train, digits.val)
        results.append([h["val/accuracy"] for h in d.history])
    assert results[0] == pytest.approx(results[1], abs=1.0)  # equal up to float rounding of batched teacher passes


def test_cache_teacher_with_augmentation_is_refused(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[8])
    d = Distiller(student, teacher, [Term("kd")], augment=RandomShift(1), cache_teacher=True, progress=False)
    with pytest.raises(DistillError, match="augmentation"):
        d.fit(digits.train)


def test_count_macs_by_hand():
    from distill.evaluation import count_macs

    mlp = build_model("mlp", (1, 4, 4), 3, hidden=[5])
    assert count_macs(mlp, torch.zeros(2, 1, 4, 4)) == 16 * 5 + 5 * 3
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert count_macs(conv, torch.zeros(3, 2, 6, 6)) == 4 * 36 * 2 * 9 + 144 * 2


class NaNAfter:
    """A loss term that turns NaN from the n-th call on (a stand-in for a diverging term)."""

    def __init__(self, n):
        self.n, self.calls = n, 0
        self.__name__ = "exploding"

    def __call__(self, student_logits, teacher_logits):
        self.calls += 1
        value = (student_logits - teacher_logits).pow(2).mean()
        return value * float("nan") if self.calls > self.n else value


def test_nonfinite_loss_stops_naming_the_term_and_keeps_the_checkpoint(digits, teacher, tmp_path):
    from distill.engine import NonFiniteLoss

    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[16])
    batches = -(-len(digits.train) // 256)
    term = Term(NaNAfter(1 + batches + 3), 0.1)  # probe call + one good epoch + 3 batches
    d = Distiller(student, teacher, [Term("ce"), term], epochs=3, batch_size=256, progress=False, run_dir=tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, batch 4: term exploding = nan"):
        d.fit(digits.train)
    ckpt = tmp_path / "checkpoints" / f"step-{batches:08d}" / "model.safetensors"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{batches:08d}"]
    assert all(torch.isfinite(v).all() for v in load_file(ckpt).values())


def test_nonfinite_loss_can_skip_the_step(digits, teacher, tmp_path):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[16])
    term = Term(NaNAfter(4), 0.1)
    d = Distiller(student, teacher, [Term("ce"), term], epochs=1, batch_size=256, progress=False,
                  nonfinite="skip", run_dir=tmp_path)
    d.fit(digits.train)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    batches = -(-len(digits.train) // 256)
    assert d.history[-1]["skipped_steps"] == batches - 3  # the probe and two batches were finite
    assert '"event": "skipped"' in (tmp_path / "metrics.jsonl").read_text()


def test_resume_from_inside_an_epoch_is_bit_identical(digits, teacher, tmp_path):
    def run(run_dir, resume=False, seed=0):
        seed_everything(seed)
        student = build_model("mlp", digits.input_shape, hidden=[32], dropout=0.2)
        d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=2, lr=1e-2,
                      batch_size=64, progress=False, run_dir=run_dir, augment=RandomShift(1), keep_checkpoints=50,
                      checkpoint_every=5, grad_accum=2)
        d.fit(digits.train, digits.val, resume=resume)
        return student, d

    full, d_full = run(tmp_path / "full")
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir())
    states = [torch.load(c / "state.pt", weights_only=True) for c in checkpoints]
    mid = [c for c, st in zip(checkpoints, states) if st["position"] is not None and st["epoch"] == 1]
    assert mid, [c.name for c in checkpoints]
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    cut = mid[len(mid) // 2].name  # a checkpoint inside the second epoch
    for later in sorted((partial / "checkpoints").iterdir()):
        if later.name > cut:
            shutil.rmtree(later)
    resumed, d_res = run(partial, resume=True, seed=99)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["train/loss"] for h in d_full.history] == [h["train/loss"] for h in d_res.history]
    assert [h["val/accuracy"] for h in d_full.history] == [h["val/accuracy"] for h in d_res.history]
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    res_lines = (partial / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines]
    assert strip(full_lines) == strip(res_lines)


def test_a_failed_checkpoint_write_leaves_the_previous_one_usable(digits, tmp_path, monkeypatch):
    import distill.engine.checkpoint as engine

    def run(resume=False):
        seed_everything(0)
        student = build_model("mlp", digits.input_shape, hidden=[8])
        d = Distiller(student, epochs=3, batch_size=256, progress=False, run_dir=tmp_path)
        d.fit(digits.train, resume=resume)
        return student

    real_save, calls = engine.torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint's write dies half-way (the disk is full, the process killed)
            open(path, "wb").write(b"\x00" * 10)
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(engine.torch, "save", failing_save)
    with pytest.raises(OSError):
        run()
    monkeypatch.setattr(engine.torch, "save", real_save)
    complete = [p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.endswith(".tmp")]
    assert len(complete) == 1  # the first checkpoint, intact; the broken one never got its final name
    resumed = run(resume=True)
    seed_everything(0)
    reference = build_model("mlp", digits.input_shape, hidden=[8])
    Distiller(reference, epochs=3, batch_size=256, progress=False).fit(digits.train)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))


class QueueTerm(nn.Module):
    """A stateful loss term: a learned projection and a FIFO queue of past batch means (as CRD keeps)."""

    def __init__(self, size=10):
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.initial_weight = self.proj.weight.detach().clone()
        self.register_buffer("queue", torch.zeros(5, size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, student_logits, teacher_logits):
        loss = (self.proj(student_logits) - teacher_logits).pow(2).mean()
        loss = loss + 0.01 * (student_logits.mean(0) - self.queue.mean(0)).pow(2).sum()
        self.queue[self.ptr % 5] = student_logits.detach().mean(0)
        self.ptr += 1
        return loss


def test_stateful_terms_are_trained_checkpointed_and_restored(digits, teacher, tmp_path):
    def run(run_dir, resume=False, seed=0):
        seed_everything(seed)
        student = build_model("mlp", digits.input_shape, hidden=[16])
        term_module = QueueTerm()
        d = Distiller(student, teacher, [Term("ce"), Term(term_module, 0.1, name="queue")], epochs=2, batch_size=128,
                      progress=False, run_dir=run_dir, checkpoint_every=4, keep_checkpoints=20)
        d.fit(digits.train, resume=resume)
        return student, term_module

    student, module = run(tmp_path / "full")
    batches = -(-len(digits.train) // 128)
    assert int(module.ptr) == 2 * batches  # every training batch, not the probe
    assert not torch.equal(module.proj.weight, module.initial_weight)  # its parameters are trained
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    for later in sorted((partial / "checkpoints").iterdir())[2:]:  # killed inside the first epoch
        shutil.rmtree(later)
    student2, module2 = run(partial, resume=True, seed=5)
    assert torch.equal(module.queue, module2.queue) and int(module.ptr) == int(module2.ptr)
    assert torch.equal(module.proj.weight, module2.proj.weight)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), student2.state_dict().values()))


def test_feature_and_relational_terms_train_through_taps(digits, teacher):
    seed_everything(0)
    student = build_model("cnn", digits.input_shape, channels=[4, 8], hidden=16)
    terms = [Term("ce"), Term("dkd", 0.5, beta=2.0), Term("at", 100.0, student="features.0", teacher="features.0"),
             Term("nst", 1.0, student="features.1", teacher="features.1"),
             Term("rkd", 1.0, student="head", teacher="head"), Term("sp", 1.0), Term("pkt", 1.0), Term("cc", 1.0),
             Term("dist", 1.0)]
    d = Distiller(student, teacher, terms, epochs=3, lr=1e-2, batch_size=64, progress=False)
    history = d.fit(digits.train, digits.val)
    for name in ("dkd", "at", "nst", "rkd", "sp", "pkt", "cc", "dist"):
        assert np.isfinite(history[-1][f"train/{name}"]), name
    assert history[-1]["val/accuracy"] > 50


def test_bf16_training_stays_finite_and_learns(digits, teacher):
    seed_everything(0)
    student = build_model("cnn", digits.input_shape, channels=[8], hidden=16)
    d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=4)], epochs=3,
                  lr=1e-2, batch_size=64, progress=False, mixed_precision="bf16")
    d.fit(digits.train, digits.val)
    assert all(math.isfinite(h["train/loss"]) for h in d.history)
    assert d.history[-1]["val/accuracy"] > 85, d.history[-1]  # float32: 94.5


def test_compiled_channels_last_student_trains_like_the_eager_one(digits, teacher):
    histories = []
    for options in ({}, {"compile": "fullgraph", "channels_last": True}):
        seed_everything(0)
        student = build_model("cnn", digits.input_shape, channels=[8], hidden=16)
        d = Distiller(student, teacher, [Term("ce"), Term("hint", student="stage1", teacher="stage1"),
                                         Term("kd", temperature=4)],
                      epochs=1, lr=1e-2, batch_size=128, progress=False, **options)
        d.fit(digits.train, digits.val)
        histories.append(d.history[-1])
    assert histories[0]["train/hint"] == pytest.approx(histories[1]["train/hint"], rel=1e-3)
    assert histories[0]["val/accuracy"] == pytest.approx(histories[1]["val/accuracy"], abs=1.0)


def test_a_busy_machine_is_noted_when_torch_runs_several_threads(monkeypatch):
    import os

    from distill.engine.config import busy_machine_note

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.4, 3.0, 2.0))
    note = busy_machine_note(threads=2)
    assert "load 3.4 on 2 cores" in note and "--threads 1" in note and "\n" not in note
    assert busy_machine_note(threads=1) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.5, 0.2))
    assert busy_machine_note(threads=2) is None


def test_eval_mode_restores_the_models_own_mode_even_on_error():
    from distill.evaluation import eval_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    model.eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        model.train()  # a mode change inside the block does not leak out either
        raise RuntimeError("boom")
    assert not model.training


def test_tensorboard_tracker_records_losses_lr_validation_and_settings(digits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    student = build_model("mlp", digits.input_shape, hidden=[16])
    run_dir = tmp_path / "run"
    Distiller(student, None, epochs=2, batch_size=64, progress=False, run_dir=run_dir, log_every=2,
              hyperparameters={"recipe": {"name": "digits-test"}}).fit(digits.train, digits.val)
    events = sorted((run_dir / "tracking").rglob("events.out.tfevents.*"))
    assert events
    scalars = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"loss", "lr", "loss/ce", "train/loss", "val/accuracy"} <= scalars, scalars
    hparams = next((run_dir / "tracking").rglob("hparams.yml")).read_text()
    assert "train/lr" in hparams and "recipe/name: digits-test" in hparams and "term/ce" in hparams
    quiet = tmp_path / "quiet"
    Distiller(build_model("mlp", digits.input_shape, hidden=[16]), None, epochs=1, batch_size=64, progress=False,
              run_dir=quiet, trackers=[]).fit(digits.train)
    assert not (quiet / "tracking").exists()
    with pytest.raises(DistillError, match="unknown tracker 'tensorbored'"):
        Distiller(student, None, trackers=["tensorbored"])
