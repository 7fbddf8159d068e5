"""Every method runs from Python and from a recipe; staged methods freeze, restore and resume as they should."""
import pytest
import torch
from safetensors.torch import load_file

from distill import load_dataset
from distill.engine import Distiller, TrainConfig, modules_before
from distill.experiment import run_recipe
from distill.methods import METHODS
from distill.methods.registry import METHOD_INPUTS
from distill.recipe import parse_recipe
from distill.stages import Stage, as_stages, fit_stages, stage_epochs
from distill.terms import Term
from distill.zoo import build_model

WIDTHS = [8, 16, 16]  # equal stage widths in teacher and student: FSP compares flows channel by channel


@pytest.fixture(scope="module")
def small():
    data = load_dataset("digits", val_size=100, train_size=256)
    torch.manual_seed(0)
    teacher = build_model("resnet", data.input_shape, depth=14, widths=WIDTHS)
    Distiller(teacher, terms=[Term("ce")], epochs=3, lr=5e-3, batch_size=64, optimizer="adam",
              progress=False).fit(data.train)
    return data, teacher


def _student(data, seed=0):
    torch.manual_seed(seed)
    return build_model("resnet", data.input_shape, depth=8, widths=WIDTHS)


# methods for one teacher and one student; the schemes need several teachers or a cohort of peers and have
# their own tests (test_multi_teacher.py, test_online.py); methods for token sequences have theirs
ONE_PAIR = sorted(name for name in set(METHODS) - {"multi_teacher", "dml", "kdcl", "one"}
                  if METHOD_INPUTS[name] == "any")

CONFIG = TrainConfig(epochs=2, batch_size=64, lr=0.01, optimizer="adam", progress=False, cache_teacher=True)


@pytest.mark.parametrize("name", ONE_PAIR)
def test_every_method_trains_from_python(small, name):
    data, teacher = small
    student = _student(data)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = fit_stages(student, teacher, as_stages(METHODS[name]()), data.train, data.val, config=CONFIG)
    assert result["history"] and all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result["history"])
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert "fc.weight" in changed and "conv1.weight" in changed
    # the teacher is never trained: weights and batch-norm statistics unchanged, no gradients
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


def test_every_method_runs_from_a_recipe(tmp_path, cache_dir):
    recipe = parse_recipe({
        "name": "all-methods", "data": {"dataset": "digits", "val_size": 100, "train_size": 200},
        "teacher": {"model": "resnet", "options": {"depth": 14, "widths": WIDTHS}, "train": {"epochs": 1}},
        "student": {"model": "resnet", "options": {"depth": 8, "widths": WIDTHS}},
        "methods": [{"method": name} for name in ONE_PAIR],
        "train": {"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01, "progress": False,
                  "cache_teacher": True},
        "evaluation": {"latency_batch_size": 8, "latency_repeats": 1, "cam_agreement_images": 20},
    })
    summary = run_recipe(recipe, tmp_path / "run")
    labels = [row["label"] for row in summary["rows"]]
    assert labels == ["teacher", *ONE_PAIR]
    for row in summary["rows"][1:]:
        assert 0 <= row["test_accuracy"] <= 100 and row["epoch_seconds"]
        assert -1 <= row["cam_agreement"] <= 1


def test_modules_before_finds_the_student_up_to_a_layer(small):
    data, _ = small
    student = _student(data)
    batch = {"input": data.train.inputs[:4]}
    names = {id(p): n for n, p in student.named_parameters()}
    used = {names[i] for i in modules_before(student, "stage2", batch)}
    assert any(n.startswith("layer2.") for n in used) and "conv1.weight" in used and "bn1.weight" in used
    assert not any(n.startswith(("layer3.", "fc.")) for n in used)
    used_in = {names[i] for i in modules_before(student, "layer2:input", batch)}
    assert any(n.startswith("layer1.") for n in used_in) and not any(n.startswith("layer2.") for n in used_in)


def test_two_stage_fitnets_freezes_then_unfreezes(small):
    data, teacher = small
    student = _student(data)
    hint, kd = METHODS["fitnets"](two_stage=True, student_layer="stage2", teacher_layer="stage2")
    assert hint.train_up_to == "stage2" and [t.name for t in kd.terms] == ["ce", "kd"]

    def params():
        return {k: v.detach().clone() for k, v in student.named_parameters()}

    start = params()
    fit_stages(student, teacher, [hint], data.train, config=CONFIG)
    after_hint = params()
    moved = {k for k in start if not torch.equal(start[k], after_hint[k])}
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv2.weight"} <= moved
    assert not any(k.startswith(("layer3.", "fc.")) for k in moved)  # beyond the guided layer: untouched
    fit_stages(student, teacher, [kd], data.train, config=CONFIG)
    moved = {k for k, v in params().items() if not torch.equal(v, after_hint[k])}
    assert "layer3.0.conv1.weight" in moved and "fc.weight" in moved and "conv1.weight" in moved


def test_kd_weight_is_annealed_in_fitnets_stage_two():
    _, kd = METHODS["fitnets"](two_stage=True, alpha=0.9, alpha_end=0.5)
    ce, soft = kd.terms
    assert soft.weight_at(0, 10) == pytest.approx(0.9) and soft.weight_at(5, 10) == pytest.approx(0.7)
    assert soft.weight_at(10, 10) == pytest.approx(0.5) and ce.weight_at(10, 10) == pytest.approx(0.5)
    warm = METHODS["dkd"](warmup=0.2)[1]
    assert warm.weight_at(0, 10) == 0 and warm.weight_at(1, 10) == pytest.approx(0.5) and warm.weight_at(7, 10) == 1


def test_stage_epochs():
    terms = [Term("ce")]
    assert stage_epochs([Stage(terms, 0.25), Stage(terms)], 8) == [2, 6]
    assert stage_epochs([Stage(terms, 3), Stage(terms)], 8) == [3, 5]
    assert stage_epochs([Stage(terms, 0.25), Stage(terms)], 1) == [1, 1]


def test_factor_transfer_paraphraser_is_trained_then_frozen_and_a_resumed_run_matches(small, tmp_path):
    data, teacher = small

    def run(run_dir, resume=False):
        student = _student(data)
        stages = METHODS["ft"]()
        fit_stages(student, teacher, stages, data.train, config=CONFIG, run_dir=run_dir, resume=resume)
        return student, stages

    student, stages = run(tmp_path / "full")
    paraphraser = stages[0].terms[0].fn.paraphraser
    trained = {k: v.clone() for k, v in paraphraser.state_dict().items()}
    stage2 = load_file(str(tmp_path / "full" / "stage-2" / "checkpoints" / sorted(
        p.name for p in (tmp_path / "full" / "stage-2" / "checkpoints").iterdir())[-1] / "model.safetensors"))
    saved = {k.split("paraphraser.", 1)[1]: v for k, v in stage2.items() if "source.paraphraser." in k}
    assert saved and all(torch.equal(saved[k], trained[k]) for k in saved)  # frozen through stage 2

    # interrupted after stage 1: stage 1 is restored (paraphraser included), stage 2 trains the same way
    first, _ = run(tmp_path / "part")
    import shutil
    shutil.rmtree(tmp_path / "part" / "stage-2")
    resumed, _ = run(tmp_path / "part", resume=True)
    for (k, a), b in zip(student.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_finished_student_is_reused_only_while_its_settings_are_unchanged(tmp_path, cache_dir, capsys):
    tree = {"data": {"dataset": "digits", "val_size": 100, "train_size": 200},
            "teacher": {"model": "cnn", "options": {"channels": [4, 8], "hidden": 16}, "train": {"epochs": 1}},
            "student": {"model": "mlp", "options": {"hidden": [16]}},
            "methods": [{"method": "scratch"}, {"method": "kd", "temperature": 4.0}],
            "train": {"epochs": 1, "progress": False}, "evaluation": {"latency_batch_size": 8, "latency_repeats": 1}}
    first = run_recipe(parse_recipe(tree), tmp_path / "run")
    again = run_recipe(parse_recipe(tree), tmp_path / "run", resume=True)
    assert [r["train_seconds"] for r in again["rows"][1:]] == [r["train_seconds"] for r in first["rows"][1:]]
    tree["methods"][1]["temperature"] = 2.0
    changed = run_recipe(parse_recipe(tree), tmp_path / "run", resume=True)
    assert changed["rows"][1]["train_seconds"] == first["rows"][1]["train_seconds"]  # scratch: reused
    assert changed["rows"][2]["train_seconds"] != first["rows"][2]["train_seconds"]  # kd: trained again
    assert "settings changed" in capsys.readouterr().out
    tree["evaluation"]["cam_agreement_images"] = 10  # an MLP has no feature map: reported, not fatal
    mlp = run_recipe(parse_recipe(tree), tmp_path / "run", resume=True)
    assert "cam_agreement" not in mlp["rows"][1]
    assert "Grad-CAM++ agreement not measured" in capsys.readouterr().out


def test_methods_register_where_they_are_defined():
    import distill.methods as methods
    from distill.methods import STAGES, kd, register_method
    from distill.methods.common import with_ce_and_kd

    assert kd is METHODS["kd"] and callable(kd)
    for name, fn in METHODS.items():
        assert fn.__module__.startswith("distill.methods."), name
        assert getattr(methods, name) is fn
    assert STAGES == ("stage1", "stage2", "stage3")
    with pytest.raises(ValueError, match="registered twice"):
        register_method("kd")(lambda: [])
    # CE and KD, as the name says; KD's temperature defaults to kd_loss's, written into the term
    terms = with_ce_and_kd([], alpha=0.5)
    assert [t.name for t in terms] == ["ce", "kd"] and terms[1].params["temperature"] == 4.0
    assert kd()[1].params == kd(temperature=4.0)[1].params


def test_function_matching_gives_teacher_and_student_the_same_mixed_view(digits, teacher):
    """Beyer et al.'s consistency: whatever view the student trains on, the teacher labelled that same view."""
    from distill.methods import METHODS
    from distill.stages import as_stages, fit_stages
    from distill.engine import TrainConfig

    [stage] = as_stages(METHODS["function_matching"](mixup=1.0, shift=1))
    assert [t.name for t in stage.terms] == ["kd"] and stage.augment is not None
    seen = {}
    student = build_model("mlp", digits.input_shape, hidden=[16])
    student.register_forward_pre_hook(lambda m, args: seen.setdefault("student", []).append(args[0].clone()))
    handle = teacher.register_forward_pre_hook(lambda m, args: seen.setdefault("teacher", []).append(args[0].clone()))
    try:
        fit_stages(student, teacher, [stage], digits.train, None, say=lambda *_: None,
                   config=TrainConfig(epochs=1, batch_size=64, progress=False))
    finally:
        handle.remove()
    originals = {tuple(x.flatten().tolist()) for x in digits.train.inputs}
    mixed = [x for x in seen["student"] if sum(tuple(row.flatten().tolist()) in originals for row in x) < len(x) / 2]
    assert len(mixed) >= len(digits.train) // 64  # every training step saw mostly mixed images
    teacher_views = {x.numpy().tobytes() for x in seen["teacher"]}
    assert all(x.numpy().tobytes() in teacher_views for x in mixed)  # ... and the teacher saw exactly those
