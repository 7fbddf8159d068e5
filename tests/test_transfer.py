"""Transfer sets and augmentation for distillation: unlabelled inputs, mixup, jitter."""
import pytest
import torch

from distill import DistillError, Distiller, MixUp, Term, build_model, seed_everything, unlabelled
from distill.data import Compose, RandomShift


def test_mixup_makes_convex_combinations_of_two_images_of_the_batch():
    x = torch.arange(4 * 3, dtype=torch.float32).view(4, 1, 3) * torch.tensor([1.0, 10.0, 100.0])
    g = torch.Generator().manual_seed(0)
    mixed = MixUp(0.4)(x, g)
    again = MixUp(0.4)(x, torch.Generator().manual_seed(0))
    assert torch.equal(mixed, again)  # a function of the generator's state
    for row in mixed:
        # row = lam * x_i + (1 - lam) * x_j for some i, j and lam in [0, 1]
        found = False
        for i in range(4):
            for j in range(4):
                d = x[i] - x[j]
                if d.abs().sum() == 0:
                    found |= torch.allclose(row, x[i])
                    continue
                lam = ((row - x[j]) * d).sum() / (d * d).sum()
                found |= bool(0 <= lam <= 1 and torch.allclose(row, lam * x[i] + (1 - lam) * x[j], atol=1e-4))
        assert found
    with pytest.raises(ValueError, match="positive"):
        MixUp(0)


def test_a_transfer_set_without_labels_teaches_through_the_teacher_alone(digits, teacher):
    seed_everything(0)
    student = build_model("mlp", digits.input_shape, hidden=[32])
    d = Distiller(student, teacher, [Term("kd", temperature=4)], epochs=4, lr=1e-2, batch_size=64, progress=False)
    d.fit(unlabelled(digits.train), digits.val)
    assert d.history[-1]["val/accuracy"] > 80
    d = Distiller(build_model("mlp", digits.input_shape, hidden=[8]), teacher, [Term("ce")], progress=False)
    with pytest.raises(DistillError, match="term .ce. needs labels"):
        d.fit(unlabelled(digits.train))


def test_mixup_and_jitter_kd_learn(digits, teacher):
    # a 1-pixel shift is an eighth of a digits image: harder, so a lower bar (chance is 10%)
    for augment, bar in ((MixUp(1.0), 75), (Compose(RandomShift(1), MixUp(1.0)), 50)):
        seed_everything(0)
        student = build_model("mlp", digits.input_shape, hidden=[32])
        d = Distiller(student, teacher, [Term("kd", temperature=4)], augment=augment, epochs=4, lr=1e-2,
                      batch_size=64, progress=False)
        d.fit(digits.train, digits.val)
        assert d.history[-1]["val/accuracy"] > bar, augment


def test_a_recipe_trains_students_on_a_transfer_set(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree

    tree = apply_overrides(read_recipe_tree("digits"), ["data.student_labels=false", "teacher.train.epochs=3",
                                                       "train.epochs=4"])
    tree["methods"] = [{"method": "kd", "alpha": 1.0}]
    summary = run_recipe(parse_recipe(tree), tmp_path / "run")
    assert all(row["test_accuracy"] > 60 for row in summary["rows"][1:])
    tree["methods"] = [{"method": "scratch"}]
    with pytest.raises(RecipeError, match="'scratch': its student sees no labels .student_labels: false., but its "
                                           "term 'ce' needs them"):
        parse_recipe(tree)  # found before anything trains


def test_methods_choose_their_own_transfer_set_and_augmentation(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree

    tree = apply_overrides(read_recipe_tree("digits"), ["teacher.train.epochs=3", "train.epochs=3",
                                                       "train.cache_teacher=true"])
    tree["methods"] = [{"method": "kd"},
                       {"method": "kd", "label": "transfer", "alpha": 1.0, "student_labels": False},
                       {"method": "kd", "label": "mixup", "alpha": 1.0, "augment": {"mixup": 1.0}},
                       {"method": "kd", "label": "jitter", "augment": {"shift": 1}}]
    summary = run_recipe(parse_recipe(tree), tmp_path / "run")
    rows = {row["label"]: row for row in summary["rows"]}
    assert all(rows[k]["test_accuracy"] > 60 for k in ("kd", "transfer", "mixup", "jitter"))
    tree["methods"] = [{"method": "scratch", "student_labels": False}]
    with pytest.raises(RecipeError, match="sees no labels"):
        parse_recipe(tree)
