"""Data-free distillation: generators, DeepInversion, and the guarantee that no real training image is used."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distill import Distiller, Term, build_model, evaluate, seed_everything
from distill.data import ArrayDataset
from distill.datafree import SyntheticSet, deep_inversion
from distill.engine import DistillError
from distill.losses import bn_statistics_loss, dafl_generator_loss, js_divergence, logit_l1, total_variation


def test_dafl_generator_loss_by_hand():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    one_hot = (F.cross_entropy(z[:1], torch.tensor([0])) + F.cross_entropy(z[1:], torch.tensor([1]))).item() / 2
    activation = (1 + 3 + 2 + 0) / 4
    p = torch.softmax(z, 1).mean(0)
    entropy = -float((p * p.log()).sum())
    expected = one_hot - 0.1 * activation - 5.0 * entropy
    assert dafl_generator_loss(z, f, alpha=0.1, beta=5.0).item() == pytest.approx(expected, rel=1e-6)


def test_priors_and_discrepancies_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 3.0]]]])  # (1, 1, 2, 2)
    # vertical |1-0|, |3-1| -> mean 1.5; horizontal |1-0|, |3-1| -> mean 1.5
    assert total_variation(x).item() == pytest.approx(3.0)
    stats = [(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))]
    running = [(torch.tensor([1.0, 0.0]), torch.tensor([4.0, 1.0]))]
    assert bn_statistics_loss(stats, running).item() == pytest.approx(2.0 + 3.0)
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert logit_l1(a, b).item() == pytest.approx(1.5)
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert 0 < js_divergence(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])).item() <= math.log(2) + 1e-6


def _never(*args, **kwargs):
    raise AssertionError("the real training set was read")


@pytest.mark.parametrize("objective", ["noise", "dafl", "dfad", "zskt"])
def test_data_free_students_learn_without_touching_the_training_set(digits, teacher, objective, monkeypatch):
    monkeypatch.setattr(digits.train, "__getitems__", _never)
    monkeypatch.setattr(digits.train, "__getitem__", _never)
    seed_everything(0)
    cnn = objective == "zskt"  # ZSKT matches attention maps: a student with feature maps
    student = (build_model("cnn", digits.input_shape, channels=[4], hidden=16) if cnn
               else build_model("mlp", digits.input_shape, hidden=[32]))
    generator = None if objective == "noise" else build_model("generator", digits.input_shape, width=32)
    synthetic = SyntheticSet(teacher, objective, generator, student, input_shape=digits.input_shape, size=1600,
                             lr=1e-2 if objective == "dafl" else 1e-3)
    terms = {"noise": [Term("kd")], "dafl": [Term("kd")], "dfad": [Term("logit_l1")],
             "zskt": [Term("kd", temperature=1), Term("at", 250.0, student="stage1", teacher="stage1")]}[objective]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    untrained = copy.deepcopy(student)
    d = Distiller(student, teacher, terms, epochs=4, lr=1e-2, batch_size=64, progress=False)
    d.fit(synthetic)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    if objective != "noise":
        assert synthetic.generator_steps == math.ceil(synthetic.calls / synthetic.student_steps)
    images = synthetic.samples(256)
    assert images.shape == (256, *digits.input_shape) and images.min() >= 0 and images.max() <= 1
    # the student learnt to answer like the teacher on what it was shown (accuracy on real digits at this
    # tiny budget is noisy; the schemes benchmark measures it)
    with torch.no_grad():
        said = teacher(images).argmax(1)
        before, after = [(m.eval()(images).argmax(1) == said).float().mean().item() for m in (untrained, student)]
    assert after > before + 0.1, (before, after)


def test_generator_steps_update_the_generator_only(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[8])
    generator = build_model("generator", digits.input_shape, width=16)
    synthetic = SyntheticSet(teacher, "dfad", generator, student, size=64)
    s_before = [p.clone() for p in student.parameters()]
    g_before = [p.clone() for p in generator.parameters()]
    synthetic.make_batch(synthetic.__getitems__(list(range(32))))
    assert synthetic.generator_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(s_before, student.parameters()))
    assert all(p.grad is None for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))


def test_a_synthetic_set_refuses_the_teacher_cache_and_checks_its_arguments(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[8])
    synthetic = SyntheticSet(teacher, "noise", input_shape=digits.input_shape, size=128)
    d = Distiller(student, teacher, [Term("kd")], epochs=1, progress=False, cache_teacher=True)
    with pytest.raises(DistillError, match="synthetic"):
        d.fit(synthetic)
    with pytest.raises(ValueError, match="pass generator="):
        SyntheticSet(teacher, "dafl")
    with pytest.raises(ValueError, match="pass student="):
        SyntheticSet(teacher, "dfad", build_model("generator", digits.input_shape))


def test_deep_inversion_images_teach_a_student(digits, teacher):
    x, y = deep_inversion(teacher, 256, digits.input_shape, 10, steps=150)
    assert x.shape == (256, *digits.input_shape) and x.min() >= 0 and x.max() <= 1
    assert (teacher(x).argmax(1) == y).float().mean() > 0.9  # the teacher sees the classes it was asked for
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[32])
    Distiller(student, teacher, [Term("kd")], epochs=10, lr=1e-2, batch_size=64, progress=False,
              cache_teacher=True).fit(ArrayDataset(x, None))
    assert evaluate(student, digits.test)["accuracy"] > 35  # chance is 10%; the teacher 97%
    with pytest.raises(ValueError, match="no BatchNorm1d or BatchNorm2d"):
        deep_inversion(build_model("mlp", digits.input_shape, hidden=[4]), 4, digits.input_shape, 10)


def test_deep_inversion_matches_the_statistics_of_fully_connected_batch_norms():
    torch.manual_seed(0)
    hidden = torch.nn.Linear(16, 6)
    bn = torch.nn.BatchNorm1d(6)
    net = torch.nn.Sequential(torch.nn.Flatten(), hidden, bn, torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    with torch.no_grad():  # the statistics of dark images, which the starting noise around 0.5 does not have
        h = hidden(0.3 * torch.rand(256, 16))
        bn.running_mean.copy_(h.mean(0))
        bn.running_var.copy_(h.var(0, unbiased=False))

    def distance(images):
        with torch.no_grad():
            h = hidden(images.flatten(1))
        return bn_statistics_loss([(h.mean(0), h.var(0, unbiased=False))], [(bn.running_mean, bn.running_var)]).item()

    start, _ = deep_inversion(net, 64, (1, 4, 4), 3, steps=0, tv_weight=0.0, l2_weight=0.0)
    fitted, _ = deep_inversion(net, 64, (1, 4, 4), 3, steps=200, lr=0.05, bn_weight=10.0, tv_weight=0.0,
                               l2_weight=0.0)
    assert distance(fitted) < 0.3 * distance(start)


def test_deep_inversion_jitter_shows_the_teacher_shifted_images(digits, teacher):
    seen = []
    hook = teacher.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    try:  # lr 0: the images stay the initial noise, so every step's input is a shift of the returned images
        x, _ = deep_inversion(teacher, 8, digits.input_shape, 10, steps=6, lr=0.0, jitter=2)
    finally:
        hook.remove()
    shifts = []
    for batch in seen:
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(x, (dy, dx), dims=(-2, -1)), batch.clamp(0, 1))]
        assert found, "the teacher saw something other than a shift of at most 2 pixels"
        shifts.append(found[0])
    assert len(shifts) == 6 and any(s != (0, 0) for s in shifts)


def test_a_resumed_data_free_run_continues_the_same_generator(digits, teacher, tmp_path):
    import shutil

    def run(run_dir, resume=False):
        seed_everything(0)
        student = build_model("mlp", digits.input_shape, hidden=[16])
        generator = build_model("generator", digits.input_shape, width=16)
        synthetic = SyntheticSet(copy.deepcopy(teacher), "dfad", generator, student, size=256, seed=3)
        d = Distiller(student, teacher, [Term("logit_l1")], epochs=2, lr=1e-2, batch_size=32, progress=False,
                      run_dir=run_dir, keep_checkpoints=10, checkpoint_every=3)
        d.fit(synthetic, resume=resume)
        return student, generator

    full_student, full_generator = run(tmp_path / "full")
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    checkpoints = sorted((partial / "checkpoints").iterdir())
    for later in checkpoints[2:]:  # killed early in the first epoch
        shutil.rmtree(later)
    student, generator = run(partial, resume=True)
    for a, b in [(full_student, student), (full_generator, generator)]:
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(p, q), name


def test_data_free_methods_from_a_recipe_never_read_the_training_set(tmp_path, cache_dir, monkeypatch):
    from distill.data import ArrayDataset
    from distill.experiment import run_recipe
    from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree
    from distill.report import write_report

    tree = apply_overrides(read_recipe_tree("digits"), ["teacher.train.epochs=3", "train.epochs=2",
                                                       "train.cache_teacher=true"])
    tree["student"] = {"model": "cnn", "options": {"channels": [4], "hidden": 16}}
    tree["methods"] = [
        {"method": "kd", "label": "noise", "alpha": 1.0, "data_free": {"objective": "noise", "size": 256}},
        {"method": "kd", "label": "dafl", "alpha": 1.0,
         "data_free": {"objective": "dafl", "size": 256, "lr": 0.01, "generator": {"width": 16}}},
        {"method": "kd", "label": "deepinv", "alpha": 1.0,
         "data_free": {"objective": "deep_inversion", "size": 64, "steps": 5, "batch_size": 32}},
    ]
    recipe = parse_recipe(tree)
    reads = []
    real_getitems = ArrayDataset.__getitems__

    def spy(self, indices):
        if self.name.startswith("digits") and len(self) > 1000:  # the training split (the others are smaller)
            reads.append(len(indices))
        return real_getitems(self, indices)

    from distill.experiment import get_teacher
    from distill.zoo import load_dataset

    data = load_dataset("digits", recipe.data.val_size)
    get_teacher(recipe, data, tmp_path / "run")  # trained (reading the training set) before the spy
    real_getitem = ArrayDataset.__getitem__

    def spy_item(self, i):
        spy(self, [i])
        return real_getitem(self, i)

    monkeypatch.setattr(ArrayDataset, "__getitems__", spy)
    monkeypatch.setattr(ArrayDataset, "__getitem__", spy_item)
    summary = run_recipe(recipe, tmp_path / "run", resume=True)
    assert reads == []
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {"teacher", "noise", "dafl", "deepinv"}
    assert (tmp_path / "run" / "students" / "dafl" / "samples.safetensors").is_file()
    report = write_report(tmp_path / "run")
    assert (report.parent / "samples-dafl.png").is_file() and (report.parent / "samples-deepinv.png").is_file()
    assert "samples-dafl.png" in report.read_text()
    with pytest.raises(RecipeError, match="unknown data-free objective"):
        parse_recipe(dict(tree, methods=[{"method": "kd", "data_free": {"objective": "gan"}}]))
    with pytest.raises(RecipeError, match="has no parameter 'speed'"):
        parse_recipe(dict(tree, methods=[{"method": "kd", "data_free": {"objective": "dafl", "speed": 1}}]))


def test_the_generator_makes_batches_with_the_datas_mean_and_std():
    torch.manual_seed(0)
    generator = build_model("generator", (2, 8, 8), width=8, mean=[0.13, 0.5], std=[0.31, 0.1]).train()
    x = generator.sample(64)
    per_channel = x.transpose(0, 1).flatten(1)
    # the last batch norm standardises each channel (biased variance, eps 1e-5), then mean + std * that
    assert per_channel.mean(1).tolist() == pytest.approx([0.13, 0.5], abs=1e-4)
    assert per_channel.std(1, unbiased=False).tolist() == pytest.approx([0.31, 0.1], rel=1e-3)
    with pytest.raises(ValueError, match="one per channel"):
        build_model("generator", (2, 8, 8), mean=[0.1, 0.2, 0.3])
    from distill.datafree import input_statistics
    images = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)]).unsqueeze(1).repeat(1, 2, 1, 1)  # (2, 2, 4, 4)
    images[:, 1] = 0.5
    stats = input_statistics(images)
    assert stats["mean"] == pytest.approx([0.5, 0.5]) and stats["std"] == pytest.approx([(32 * 0.25 / 31) ** 0.5, 0.0])


def test_dafl_entropy_weight_is_the_authors_5_on_log10():
    # the authors' code: one_hot + 0.1 * (-mean|f|) + 5 * sum(p * log10 p), p the batch's mean prediction
    z = torch.tensor([[3.0, 0.0, -1.0], [0.5, 0.2, 0.1], [-2.0, 0.0, 2.0]])
    f = torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, 3.0]])
    p = torch.softmax(z, 1).mean(0)
    one_hot = F.cross_entropy(z, z.argmax(1)).item()
    theirs = one_hot + 0.1 * -(6.5 / 6) + 5 * float((p * torch.log10(p)).sum())
    assert dafl_generator_loss(z, f).item() == pytest.approx(theirs, rel=1e-6)
    # a batch predicted uniformly over the classes reaches the entropy term's minimum, -beta ln C
    uniform = torch.eye(3) * 50
    assert dafl_generator_loss(uniform, torch.zeros(3, 2), alpha=0.0, beta=1.0).item() == pytest.approx(
        -math.log(3), abs=1e-4)


def test_a_dafl_step_trains_the_student_on_the_generator_steps_images_and_leaves_the_teacher_alone(digits, teacher):
    student = build_model("mlp", digits.input_shape, hidden=[8])
    generator = build_model("generator", (1, 8, 8), width=8)
    synthetic = SyntheticSet(teacher, "dafl", generator, student, kd_weight=1.0, size=64)
    assert synthetic.optimizer.param_groups[0]["lr"] == 0.2  # the authors' generator learning rate
    g_before = [p.clone() for p in generator.parameters()]
    batch = synthetic.make_batch(synthetic.__getitems__(list(range(16))))
    assert synthetic.generator_steps == 1 and torch.equal(batch["input"], synthetic.batch)
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters())  # the engine's gradients stay the engine's
    assert any(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))
    with pytest.raises(ValueError, match="kd_weight"):
        SyntheticSet(teacher, "dafl", generator, kd_weight=1.0)


def test_lenet5_and_its_half_are_the_papers_sizes_with_the_dafl_feature_as_embedding():
    from distill.evaluation import count_parameters
    from distill.taps import TapRecorder

    for name, params, features in [("lenet5", 61706, 120), ("lenet5_half", 15738, 60)]:
        model = build_model(name, (1, 28, 28))
        assert count_parameters(model) == params  # DAFL / DFAD's LeNet-5 on 32x32: 61,706 and 15,738
        values = TapRecorder(model, ["embedding", "logits"]).collect(model(torch.randn(3, 1, 28, 28)))
        assert values["embedding"].shape == (3, features) and values["logits"].shape == (3, 10)
        assert build_model(name, (1, 32, 32))(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 28x28"):
        build_model("lenet5", (1, 8, 8))
    bn = build_model("lenet5", (1, 28, 28), batch_norm=True)  # for DeepInversion: two batch norms, 44 more
    assert count_parameters(bn) == 61706 + 2 * (6 + 16) and sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 2
    values = TapRecorder(bn, ["stage1", "stage2"]).collect(bn(torch.randn(3, 1, 28, 28)))
    assert values["stage1"].shape == (3, 6, 14, 14) and values["stage2"].shape == (3, 16, 5, 5)  # the pooled maps
    full = build_model("lenet5", (1, 28, 28), batch_norm=True, fc_batch_norm=True)  # and after fc 120, fc 84
    assert count_parameters(full) == count_parameters(bn) + 2 * (120 + 84) and sum(
        isinstance(m, torch.nn.BatchNorm1d) for m in full.modules()) == 2
    values = TapRecorder(full, ["embedding", "logits"]).collect(full.eval()(torch.randn(3, 1, 28, 28)))
    assert values["embedding"].shape == (3, 120) and values["logits"].shape == (3, 10)


def test_datafree_benchmark_quick_rows_table_and_resume(tmp_path, cache_dir):
    """The benchmark on tiny settings: every teacher trained and cached, every arm's row with its fields, the
    table, and a second call that reuses every stored row."""
    from distill.datafree_bench import ARMS, run_datafree_benchmark

    said = []
    summary = run_datafree_benchmark(seeds=1, quick=True, out_dir=tmp_path / "out", say=said.append)
    assert summary["teachers"]["plain"]["val"] > 30  # three tiny epochs already learn digits (chance: 10%)
    rows = {r["arm"]: r for r in summary["rows"]}
    assert list(rows) == list(ARMS)
    assert rows["dafl"]["steps"] == 4 and rows["dafl"]["generator_steps"] >= 4 and len(rows["dafl"]["curve"]) == 2
    assert sum(rows["deep-inversion"]["teacher_classes"]) == 32 and rows["deep-inversion"]["images"] == 32
    assert set(summary["teachers"]) == {"plain", "bn", "resnet8"}  # the ResNet-8 one inverted by its arm
    assert sum(rows["deep-inversion-resnet8"]["teacher_classes"]) == 32
    assert (tmp_path / "out" / "dfad" / "samples-seed-0.png").is_file()
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| dafl | 4 |" in table and "98.20" in table and "| teacher ResNet-8 |" in table
    said.clear()
    again = run_datafree_benchmark(seeds=1, quick=True, out_dir=tmp_path / "out", say=said.append)
    assert again["rows"] == summary["rows"] and not any(s.startswith("training the") for s in said)
    assert sum("stored" in s for s in said) == len(ARMS)


def test_the_benchmark_teacher_does_not_depend_on_what_ran_before_it(cache_dir):
    """A fresh process's generator starts from a random seed: the teacher is seeded before it is built, so the
    same settings train the same weights whatever drew random numbers first."""
    import shutil

    from distill.cache import weights_digest
    from distill.datafree_bench import load_data, teacher

    data, digests = load_data(True), []
    for state in (1, 2):
        torch.manual_seed(state)
        digests.append(weights_digest(teacher(data, "plain", True, say=lambda *_: None)[0]))
        shutil.rmtree(cache_dir / "teachers")
    assert digests[0] == digests[1]


def test_inverted_images_are_cached_by_teacher_weights_and_settings(cache_dir, monkeypatch):
    """DeepInversion's images are made once per (teacher weights, count, seed, settings); a second call reads
    them back unchanged without synthesising, and other weights or settings make new ones."""
    import distill.datafree as datafree
    from distill.datafree_bench import inverted_images
    from distill.zoo import build_model

    data = SimpleNamespace(input_shape=(1, 28, 28), num_classes=10)
    torch.manual_seed(0)
    teacher = build_model("lenet5", data.input_shape, batch_norm=True).eval()
    settings = {"steps": 2, "lr": 0.05, "bn_weight": 10.0, "tv_weight": 1e-3, "l2_weight": 0.0}
    images, seconds = inverted_images(teacher, 4, data, 0, settings)
    assert images.shape == (4, 1, 28, 28) and seconds > 0

    def refuse(*args, **kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(datafree, "deep_inversion", refuse)
    again, same_seconds = inverted_images(teacher, 4, data, 0, settings)
    assert torch.equal(again, images) and same_seconds == seconds
    with pytest.raises(AssertionError, match="synthesised again"):
        inverted_images(teacher, 4, data, 1, settings)  # another seed
    with torch.no_grad():
        next(teacher.parameters()).add_(1.0)
    with pytest.raises(AssertionError, match="synthesised again"):
        inverted_images(teacher, 4, data, 0, settings)  # other weights
