import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.analyze import (AnalyzeError, adversarial_examples, analyze_models, expected_calibration_error, occlude,
                             saliency)
from distill.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ece_by_hand():
    # confidences 0.9, 0.9 (bin 13, one right one wrong) and 0.6, 0.6 (bin 8, both right)
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]]))
    labels = torch.tensor([0, 1, 0, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-6)
    # perfectly confident and right: zero
    assert expected_calibration_error(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), torch.tensor([0, 1])) < 1e-6


def test_occlude_replaces_exactly_the_ranked_pixels():
    x = torch.ones(1, 2, 2, 2)
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    top = occlude(x, maps, 0.5, most=True, fill=0.0)
    assert torch.equal(top[0, :, 0, :], torch.zeros(2, 2)) and torch.equal(top[0, :, 1, :], torch.ones(2, 2))
    bottom = occlude(x, maps, 0.25, most=False, fill=-1.0)
    assert bottom[0, :, 1, 1].tolist() == [-1.0, -1.0] and int((bottom == -1).sum()) == 2


def test_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    clean = F.cross_entropy(model(x), y)
    for steps in (0, 5):
        adv = adversarial_examples(model, x, y, eps=0.05, steps=steps, generator=torch.Generator().manual_seed(0))
        assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert F.cross_entropy(model(adv), y) > clean
    # FGSM on a linear model is exactly x + eps * sign(grad)
    xg = x.clone().requires_grad_()
    grad, = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    expected = (x + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.allclose(adversarial_examples(model, x, y, eps=0.05), expected)
    assert all(p.grad is None for p in model.parameters())


def test_saliency_falls_back_to_input_gradients_without_the_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    maps, how = saliency(model, x, torch.tensor([0, 1, 2, 0]), layer="last_stage")
    assert how == "input gradient" and maps.shape == (4, 4, 4)
    # the input gradient of a linear score is the weight row, whatever the image
    assert torch.allclose(maps[1], model[1].weight[1].abs().view(4, 4))


def test_distill_analyze_writes_table_plot_and_numbers(finished_run, capsys):
    out = finished_run / "analyze-test"
    assert main(["analyze", str(finished_run), "--images", "120", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| teacher |" in printed and "| scratch |" in printed and "| kd |" in printed
    result = json.loads((out / "analysis.json").read_text())
    assert result["images"] == 120 and result["saliency"] == "gradcam++" and result["baseline"] == "scratch"
    teacher, kd = result["models"]["teacher"], result["models"]["kd"]
    assert teacher["agreement"] == 100 and teacher["kl_to_teacher"] == pytest.approx(0, abs=1e-6)
    assert kd["kl_to_teacher"] > 0 and 0 <= kd["pgd_transfer"] <= 100 and 0 <= kd["ece"] <= 100
    assert -1 <= kd["cam_agreement"] <= 1  # the CNN students have the teacher's layer alias
    assert result["models"]["scratch"]["agreement_with_baseline"] == 100
    assert (out / "analysis.png").stat().st_size > 0 and "| kd |" in (out / "analysis.md").read_text()


def test_analyze_errors_are_one_line(finished_run, tmp_path, capsys):
    models = {"a": nn.Linear(2, 2)}
    with pytest.raises(AnalyzeError, match="eps must be"):
        analyze_models(models, [(torch.rand(1, 2, 2), 0)], eps=2)
    with pytest.raises(AnalyzeError, match="image tensors"):
        analyze_models(models, [(torch.rand(2), 0)])
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error:") and "not a run directory" in err and "\n" not in err


# ---------------------------------------------------------------- causal distillation by interchange interventions
from distill.engine import TrainConfig  # noqa: E402
from distill.interventions import Interchange  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.stages import Stage, fit_stages  # noqa: E402
from distill.errors import DistillError  # noqa: E402


def test_input_interchange_pastes_the_source_region_and_masks_the_new_labels():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    swap = Interchange(size=0.5)
    batch = swap({"input": x, "label": torch.tensor([3, 7]), "index": torch.tensor([0, 1])},
                 torch.Generator().manual_seed(0))
    made, perm = batch["input"], swap._plan[1]
    assert made.shape == (4, 1, 4, 4) and torch.equal(made[:2], x)
    assert batch["label"].tolist() == [3, 7, -100, -100] and batch["index"].tolist() == [0, 1, 0, 1]
    changed = (made[2:] != x)
    # exactly one 2x2 square per counterfactual differs at most, and it holds the other image's pixels
    for i in range(2):
        rows, cols = torch.nonzero(changed[i, 0], as_tuple=True)
        assert len(rows) in (0, 4)
        if len(rows):
            assert torch.equal(made[2 + i, 0][changed[i, 0]], x[int(perm[i]), 0][changed[i, 0]])


def test_layer_interchange_swaps_each_models_own_region_on_made_batches_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    swap = Interchange(size=0.5, student_layer="1")
    handles = swap.attach(model)
    try:
        x = torch.rand(3, 1, 6, 6)
        batch = swap({"input": x}, torch.Generator().manual_seed(1))
        out = model(batch["input"])
        _, perm, corners = swap._plan
        features = model[1](model[0](x))
        expected = swap._interchange(torch.cat([features, features]), perm, corners)
        assert torch.allclose(out, model[4](model[3](model[2](expected))))
        assert torch.allclose(model(x), model[4](model[3](model[2](features))))  # another batch: untouched
    finally:
        for h in handles:
            h.remove()


def test_interchange_method_learns_digits_and_checks_its_input():
    from distill.zoo.datasets import load_dataset
    from distill.zoo.models import build_model

    data = load_dataset("digits", val_size=200)
    torch.manual_seed(0)
    teacher = build_model("cnn", in_shape=(1, 8, 8), channels=[8, 16], hidden=32)
    fit_stages(teacher, None, [Stage(METHODS["scratch"]())], data.train, data.val, say=lambda *_: None,
               config=TrainConfig(epochs=3, lr=3e-3, batch_size=64, progress=False))
    student = build_model("cnn", in_shape=(1, 8, 8), channels=[4, 8], hidden=16)
    out = fit_stages(student, teacher, METHODS["interchange"](student_layer="stage1", teacher_layer="stage1"),
                     data.train, data.val, say=lambda *_: None,
                     config=TrainConfig(epochs=3, lr=3e-3, batch_size=64, progress=False))
    accuracy = [h["val/accuracy"] for h in out["history"]]
    assert accuracy[-1] > 40 and accuracy[-1] > accuracy[0]  # 10 classes; kd at these settings: 61.5
    with pytest.raises(DistillError, match="size must be"):
        Interchange(size=0)
    with pytest.raises(DistillError, match=r"\(N, C, H, W\) input"):
        Interchange()({"input": torch.rand(4, 16)})
