"""Grad-CAM++: the closed form, model maps, the teacher tap, the distillation loss and ``distill explain``."""
import copy
import json

import pytest
import torch
from torch import nn

from distill.cli import main
from distill.explain import ExplainError, cam_agreement, explain_run, gradcam_maps, normalize_maps
from distill.losses.cam import cam_match_loss, gradcam_pp
from distill.taps import TapError, TapRecorder
from distill.teacher import LiveTeacher


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCNN(nn.Module):
    def __init__(self, channels=4, classes=3, pool=1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pool),
                                      nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))
        self.tap_aliases = {"last_stage": "features"}

    def forward(self, x):
        return self.head(self.features(x))


def test_gradcam_pp_by_hand_on_a_linear_head_after_average_pooling():
    # logits = W @ mean_ij(A) + b, so dY_c/dA_kij = W[c, k] / (H W) everywhere: g = (0.5, 0.3) for class 0
    A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -3.0], [1.0, 2.0]]]], dtype=torch.float64)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        head[2].weight.copy_(torch.tensor([[2.0, 1.2], [0.0, 0.0]]))
        head[2].bias.zero_()
    A.requires_grad_()
    logits = head(A)
    assert int(logits.argmax()) == 0
    (g,) = torch.autograd.grad(logits[0, 0], A)
    assert torch.allclose(g[0, 0], torch.full((2, 2), 0.5, dtype=torch.float64))
    assert torch.allclose(g[0, 1], torch.full((2, 2), 0.3, dtype=torch.float64))
    # alpha_k = g^2 / (2 g^2 + sum(A_k) g^3) = 1 / (2 + sum(A_k) g): 1/(2 + 10*0.5) = 1/7 and 1/(2 + 0) = 1/2
    # w_k = sum_ij alpha_k relu(g_k) = 4 alpha_k g_k: 2/7 and 0.6
    w0, w1 = 2 / 7, 0.6
    expected = torch.relu(w0 * A[0, 0] + w1 * A[0, 1]).detach()  # position (0, 1): 4/7 - 1.8 < 0 -> 0
    assert expected[0, 1] == 0
    got = gradcam_pp(A.detach(), g)
    assert got.shape == (1, 2, 2) and got.dtype == torch.float64
    assert torch.allclose(got[0], expected)
    # a zero gradient has a zero denominator: alpha = 0, no NaN, an all-zero map
    zero = gradcam_pp(A.detach(), torch.zeros_like(g))
    assert torch.equal(zero, torch.zeros(1, 2, 2, dtype=torch.float64))


def test_gradcam_maps_equals_the_manual_autograd_computation_and_works_frozen():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(5, 1, 6, 6)
    A = model.features(x)
    logits = model.head(A)
    classes = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), A)
    expected = gradcam_pp(A.detach(), g)
    maps, got_logits = gradcam_maps(model, x, "features")
    assert maps.shape == (5, 6, 6) and not maps.requires_grad
    assert torch.allclose(maps, expected, atol=1e-6) and torch.allclose(got_logits, logits.detach())
    assert (maps > 0).any()
    for p in model.parameters():
        p.requires_grad_(False)
    frozen, _ = gradcam_maps(model, x, "last_stage")  # an alias, on a frozen model
    assert torch.allclose(frozen, expected, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    others = (classes + 1) % 3
    A = A.detach().requires_grad_()
    (g,) = torch.autograd.grad(model.head(A).gather(1, others[:, None]).sum(), A)
    other, _ = gradcam_maps(model, x, "features", class_index=others)
    assert torch.allclose(other, gradcam_pp(A.detach(), g), atol=1e-6)
    assert not torch.allclose(other, expected, rtol=0, atol=1e-6)
    with pytest.raises(ExplainError, match=r"\(N, C, H, W\)"):
        gradcam_maps(model, x, "head.1")  # the flattened (N, C) vector


def test_gradcam_tap_of_a_live_teacher_equals_gradcam_maps_and_gives_the_teacher_no_gradients():
    torch.manual_seed(1)
    model = TinyCNN()
    x = torch.randn(4, 1, 6, 6)
    expected, logits = gradcam_maps(copy.deepcopy(model).eval(), x, "features")
    teacher = LiveTeacher(model, ["gradcam++(last_stage)", "features", "logits"])
    with torch.no_grad():  # as in the engine's probe
        values = teacher({"input": x})
    assert torch.allclose(values["gradcam++(last_stage)"], expected, atol=1e-6)
    assert torch.allclose(values["logits"], logits)
    assert all(not v.requires_grad for v in values.values())
    # a LiveTeacher freezes its model only while Distiller.fit runs; called on its own it still never
    # leaves gradients on the teacher's parameters, and runs it in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    with pytest.raises(TapError, match="nearest"):
        TapRecorder(model, ["gradcam++(featurez)"])
    recorder = TapRecorder(model, ["gradcam++(head.1)"])
    with pytest.raises(TapError, match=r"\(N, C, H, W\)"):
        recorder.collect(model(x))


def _student_values(student, x):
    recorder = TapRecorder(student, ["features", "logits"])
    values = recorder.collect(student(x))
    recorder.remove()
    return [values["features"], values["logits"]]


def test_cam_match_loss_is_zero_for_the_teacher_itself_and_trains_through_the_students_map():
    torch.manual_seed(2)
    x = torch.randn(6, 1, 8, 8)
    teacher_model = TinyCNN(channels=4)
    teacher = LiveTeacher(copy.deepcopy(teacher_model), ["gradcam++(features)", "logits"])
    t = teacher({"input": x})
    teacher_values = [t["gradcam++(features)"], t["logits"]]

    same = copy.deepcopy(teacher_model).eval()
    assert float(cam_match_loss(_student_values(same, x), teacher_values).detach()) < 1e-10

    student = TinyCNN(channels=3, pool=2).eval()  # a different network with a 4x4 map, resized to 8x8
    loss = cam_match_loss(_student_values(student, x), teacher_values)
    assert loss.dim() == 0 and float(loss.detach()) > 1e-4
    loss.backward()
    for p in (student.features[0].weight, student.features[3].weight, student.head[2].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the head's weights reach the loss only through the gradient map: that is the double backward
    with torch.no_grad():
        values = _student_values(student, x)
    with pytest.raises(ValueError, match="autograd"):
        cam_match_loss(values, teacher_values)


def test_cam_agreement_is_one_for_equal_maps_and_minus_one_for_inverted_ones():
    torch.manual_seed(3)
    maps = torch.rand(4, 5, 5)
    assert torch.allclose(cam_agreement(maps, maps), torch.ones(4))
    assert torch.allclose(cam_agreement(maps, 3 * maps + 1), torch.ones(4), atol=1e-6)
    assert torch.allclose(cam_agreement(maps, 2 - maps), -torch.ones(4), atol=1e-6)
    # a coarse map against its upsampled self: resized to the larger size
    coarse = torch.rand(4, 2, 2)
    assert (cam_agreement(coarse, normalize_maps(coarse, (8, 8))) > 0.999).all()
    assert cam_agreement(maps, torch.zeros(4, 5, 5)).eq(0).all()  # nothing to correlate
    assert float(cam_agreement(maps, maps, reduction="mean")) == pytest.approx(1.0)
    normal = normalize_maps(torch.rand(3, 4, 4) * 7 - 2, (6, 6))
    assert normal.shape == (3, 6, 6) and float(normal.min()) >= 0 and float(normal.max()) <= 1


def test_engine_trains_a_student_with_the_cam_term_and_a_cached_teacher(digits):
    from distill.engine import Distiller
    from distill.terms import Term
    from distill.zoo import build_model

    torch.manual_seed(4)
    small = digits.train.subset(range(128))
    teacher = build_model("cnn", (1, 8, 8), 10, channels=[4, 8], hidden=16)
    student = build_model("cnn", (1, 8, 8), 10, channels=[4, 4], hidden=8)
    terms = [Term("ce"), Term(cam_match_loss, 2.0, student=["last_stage", "logits"],
                              teacher=["gradcam++(last_stage)", "logits"])]
    d = Distiller(student, teacher, terms, epochs=1, batch_size=64, progress=False, cache_teacher=True)
    history = d.fit(small)
    assert history[-1]["train/cam_match_loss"] > 0


@pytest.fixture
def run_dir(finished_run):
    return finished_run


def test_distill_explain_writes_the_picture_and_an_agreement_per_student(run_dir, capsys):
    assert main(["explain", str(run_dir), "--images", "3", "--agreement-images", "50"]) == 0
    out = capsys.readouterr().out
    assert "| scratch |" in out and "| kd |" in out and "gradcam.png" in out
    assert (run_dir / "explain" / "gradcam.png").stat().st_size > 0
    result = json.loads((run_dir / "explain" / "explain.json").read_text())
    assert result["images"] == 50 and result["reference"] == "teacher"
    for label in ("scratch", "kd"):
        row = result["models"][label]
        assert -1 <= row["mean"] <= 1 and row["std"] >= 0 and 0 <= row["same_prediction"] <= 1


def test_explain_errors_are_one_line_with_exit_code_2(run_dir, tmp_path, capsys):
    with pytest.raises(ExplainError, match=r"\(N, C, H, W\)"):  # a non-convolutional layer
        explain_run(run_dir, images=0, agreement_images=4, layer="head", out=tmp_path / "x")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text())
    for args, needle in ([str(tmp_path / "missing")], "not a run directory"), ([str(untrained)], "not trained"):
        assert main(["explain", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distill: error:") and needle in err and "\n" not in err


def test_cam_match_loss_sees_through_the_float_copies_of_mixed_precision():
    # Accelerate hands the losses float32 copies of a bf16 student's tensors; the class score depends on the
    # original feature map, not on its copy, so the loss must differentiate at the original
    torch.manual_seed(3)
    x = torch.randn(6, 1, 8, 8)
    teacher = LiveTeacher(TinyCNN(channels=4), ["gradcam++(features)", "logits"])
    t = teacher({"input": x})
    teacher_values = [t["gradcam++(features)"], t["logits"]]
    student = TinyCNN(channels=3, pool=2).eval()
    features, logits = _student_values(student, x)
    direct = cam_match_loss([features, logits], teacher_values)
    (expected,) = torch.autograd.grad(direct, student.head[2].weight)
    features, logits = _student_values(student, x)
    copied = cam_match_loss([features.double(), logits.double()], teacher_values)
    (got,) = torch.autograd.grad(copied, student.head[2].weight)
    assert float(copied) == pytest.approx(float(direct), rel=1e-6)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-8)
