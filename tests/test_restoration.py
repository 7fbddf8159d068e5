"""Image restoration: photographs and their split, degradations, PSNR / SSIM, the task, the losses and methods,
the networks, and a toy run that learns."""
import copy
import math

import numpy as np
import pytest
import torch

from distill.engine.probe import probe
from distill.losses.restoration import contrastive_loss, haar_dwt, l1_loss, wavelet_kd_loss
from distill.methods import METHODS
from distill.image_quality import psnr, ssim
from distill.tasks import TaskError, get_task
from distill.teacher import LiveTeacher
from distill.zoo import build_model, photos
from distill.zoo.restoration import RestorationNet

RESTORE = [name for name in METHODS if name.startswith("restore_") and name != "restore_scratch"]


# ------------------------------------------------------------------------------------------------ metrics
def test_psnr_of_identical_images_is_infinite_and_ssim_is_one():
    image = np.random.default_rng(0).random((1, 16, 16))
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(np.stack([image[0]] * 3), np.stack([image[0]] * 3)) == pytest.approx(1.0)  # RGB


def test_psnr_matches_its_formula_and_clips_to_the_unit_range():
    clean = np.full((1, 8, 8), 0.5)
    assert psnr(clean + 0.1, clean) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert psnr(np.full((1, 8, 8), 3.0), np.ones((1, 8, 8))) == math.inf  # 3 clipped to 1
    assert ssim(clean + np.random.default_rng(1).normal(0, 0.2, clean.shape), clean) < 0.9


# ------------------------------------------------------------------------------------------------ data
def test_photographs_are_split_by_photograph():
    names = [n for split in photos.SPLITS.values() for n in split]
    assert len(names) == len(set(names)) == len(photos.SKIMAGE) + len(photos.SKLEARN)
    images = photos.photographs()
    assert set(images) == set(names)
    assert all(im.ndim == 2 and im.dtype == np.float32 and 0 <= im.min() and im.max() <= 1 for im in images.values())
    # no test tile appears among the training patches (they come from other photographs)
    data = photos.load_photos("denoise", limit={"train": 300, "val": 10, "test": 20})
    assert data.images == photos.SPLITS
    train = data.train.labels.flatten(1)
    for tile in data.test.labels[:, :, :40, :40].flatten(1):
        assert not bool((train == tile).all(1).any())


def test_noise_is_sigma_25_fixed_per_seed_and_sr_halves_the_size():
    clean = torch.full((64, 1, 40, 40), 0.5)
    noisy = photos.degrade(clean, "denoise", seed=3)
    assert float((noisy - clean).std()) * 255 == pytest.approx(25.0, rel=0.02)
    assert torch.equal(noisy, photos.degrade(clean, "denoise", seed=3))
    assert not torch.equal(noisy, photos.degrade(clean, "denoise", seed=4))
    small = photos.degrade(clean, "sr", seed=0)
    assert small.shape == (64, 1, 20, 20) and torch.allclose(small, clean[..., :20, :20])  # flat stays flat
    with pytest.raises(ValueError, match="even"):
        photos.degrade(torch.zeros(1, 1, 5, 6), "sr", 0)
    with pytest.raises(ValueError, match="denoise, sr"):
        photos.degrade(clean, "deblur", 0)


# ------------------------------------------------------------------------------------------------ the task
def test_task_scores_psnr_and_ssim_and_refuses_mismatched_images():
    task = get_task("restoration")
    clean = torch.rand(4, 1, 16, 16)
    batch = task.collate([{"input": clean[i] + 0.1, "label": clean[i]} for i in range(4)])
    sums: dict = {}
    task.add_batch(sums, (clean + 0.1).clamp(max=1.0), batch, None)
    found = task.summarize(sums)
    want = np.mean([psnr((clean[i] + 0.1).numpy(), clean[i].numpy()) for i in range(4)])
    assert found["psnr"] == pytest.approx(want) and 0 < found["ssim"] < 1
    assert task.selection(True) == ("psnr", "max") and task.selection(False) == ("teacher_psnr", "max")
    # unlabelled: scored against the teacher's images
    sums = {}
    task.add_batch(sums, clean, task.collate([{"input": clean[i]} for i in range(4)]), clean)
    assert task.summarize(sums)["teacher_psnr"] == math.inf
    with pytest.raises(TaskError, match="do not match"):
        task.collate([{"input": torch.rand(1, 10, 10), "label": torch.rand(1, 15, 15)}])
    with pytest.raises(TaskError, match="do not match"):
        task.collate([{"input": torch.rand(3, 8, 8), "label": torch.rand(1, 8, 8)}])
    with pytest.raises(TaskError, match="images"):
        task.collate([{"input": torch.rand(8), "label": torch.rand(8)}])
    sr = task.collate([{"input": torch.rand(1, 8, 8), "label": torch.rand(1, 16, 16)}])
    assert sr["label"].shape == (1, 1, 16, 16)


def test_networks_shapes_taps_and_channel_errors():
    denoiser, sr = build_model("dncnn", (1, 40, 40), depth=5, channels=8), build_model("srnet", (1, 20, 20), depth=4)
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(denoiser(x), x)  # the zero-initialised tail: the identity before training
    assert sr(x).shape == (2, 1, 24, 24)
    assert denoiser.tap_aliases["degraded"] == "head:input"
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        denoiser(torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match="depth >= 3"):
        RestorationNet(depth=2)
    with pytest.raises(ValueError, match="init 'he' or 'torch'"):
        RestorationNet(init="xavier")


def test_he_initialisation_keeps_a_deep_trunk_s_features_alive():
    # PyTorch's default shrinks a deep ReLU stack's activations; He's keeps their scale (why srnet uses it)
    x = torch.rand(16, 1, 20, 20)
    scale = {}
    for init in ("torch", "he"):
        torch.manual_seed(0)
        net = RestorationNet(depth=10, channels=48, scale=2, init=init)
        with torch.no_grad():
            scale[init] = net.body(torch.relu(net.head(x))).pow(2).mean().sqrt().item()
        assert torch.allclose(net(x), torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic"))
    assert scale["he"] > 10 * scale["torch"]
    assert build_model("srnet", (1, 20, 20)).head.bias.abs().sum() == 0  # srnet: He's, biases at zero


# ------------------------------------------------------------------------------------------------ losses
def test_haar_bands_of_a_block_and_perfect_energy():
    block = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    ll, lh, hl, hh = (float(b) for b in haar_dwt(block))
    assert (ll, lh, hl, hh) == (5.0, -2.0, -1.0, 0.0)
    x = torch.randn(2, 3, 8, 6)
    assert float(sum((b ** 2).sum() for b in haar_dwt(x))) == pytest.approx(float((x ** 2).sum()), rel=1e-5)
    # a constant image has no high frequencies: wavelet KD ignores a change of brightness
    assert float(wavelet_kd_loss(torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.7))) == 0.0


def test_each_loss_is_zero_for_equal_images_positive_otherwise_and_has_gradients():
    torch.manual_seed(0)
    t, noisy = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    s = (t + 0.1 * torch.randn_like(t)).requires_grad_()
    for loss in (lambda a: l1_loss(a, t), lambda a: wavelet_kd_loss(a, t),
                 lambda a: contrastive_loss(a, t, noisy)):
        assert float(loss(t)) == 0.0
        value = loss(s)
        assert float(value.detach()) > 0
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    # wavelet KD's gradient against finite differences, in double precision
    a = torch.rand(1, 1, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: wavelet_kd_loss(z, torch.zeros_like(z) + 0.5, levels=2).double(), (a,))
    # nearer the teacher and farther from the input lowers the contrastive loss
    near, far = t + 0.01 * torch.randn_like(t), t + 0.3 * torch.randn_like(t)
    assert float(contrastive_loss(near, t, noisy)) < float(contrastive_loss(far, t, noisy))
    assert contrastive_loss(t, t, noisy[..., :8, :8]).shape == ()  # a smaller negative (SR's input) is upsampled
    with pytest.raises(ValueError, match="same shape"):
        l1_loss(t, t[..., :8])
    with pytest.raises(ValueError, match="same shape"):
        wavelet_kd_loss(t, t[:1])


@pytest.mark.parametrize("name", RESTORE)
def test_each_method_costs_nothing_beyond_the_labels_when_student_is_teacher(name):
    torch.manual_seed(0)
    teacher = build_model("dncnn", (1, 16, 16), depth=4, channels=8)
    torch.nn.init.normal_(teacher.tail.weight, std=0.05)
    student = copy.deepcopy(teacher)
    clean = torch.rand(4, 1, 16, 16)
    batch = get_task("restoration").collate([{"input": c + 0.1 * torch.randn_like(c), "label": c} for c in clean])
    options = {"connector": "auto"} if name == "restore_feature" else {}
    terms = [t for t in METHODS[name](**options) if t.name != "l1"]  # the distillation terms
    if name == "restore_combined":  # its connector is a 1x1 conv; the same-width hint is tested by restore_feature
        terms = [t for t in terms if t.name != "hint"]
    assert terms
    taps = [tap for t in terms for tap in t.teacher_taps]
    live = LiveTeacher(teacher, taps)
    model = probe(student, terms, live, batch, "cpu")
    values = model(batch["input"])
    for term in terms:
        assert float(term(values, live(batch), batch).detach()) == pytest.approx(0.0, abs=1e-7), term.name
    with torch.no_grad():
        student.head.weight.add_(0.05 * torch.randn_like(student.head.weight))
    values = model(batch["input"])
    assert all(float(term(values, live(batch), batch).detach()) > 0 for term in terms)


def test_methods_keep_the_clean_images_l1_and_check_their_weights():
    assert [t.name for t in METHODS["restore_scratch"]()] == ["l1"]
    assert [(t.name, t.weight) for t in METHODS["restore_output"](alpha=0.3)] == [("l1", 0.7), ("image_kd", 0.3)]
    assert [t.name for t in METHODS["restore_combined"]()] == ["l1", "image_kd", "hint", "wavelet_kd", "csd"]
    assert [t.name for t in METHODS["restore_combined"](beta=0, lam=0)] == ["l1", "image_kd", "wavelet_kd"]
    with pytest.raises(ValueError, match="alpha"):
        METHODS["restore_output"](alpha=2.0)


# ------------------------------------------------------------------------------------------------ training
def test_a_toy_denoiser_learns_in_seconds():
    from distill.engine import Distiller
    from distill.evaluation import evaluate

    data = photos.load_photos("denoise", limit={"train": 128, "val": 16, "test": 16})
    torch.manual_seed(0)
    model = build_model("dncnn", (1, 40, 40), depth=3, channels=8)
    before = evaluate(model, data.test, task="restoration")["psnr"]  # the identity: the noisy input's PSNR
    Distiller(model, terms=METHODS["restore_scratch"](), epochs=2, lr=1e-2, batch_size=16, progress=False,
              task="restoration").fit(data.train)
    after = evaluate(model, data.test, task="restoration")
    assert after["psnr"] > before + 2.0, (before, after)


def test_a_toy_distillation_run_with_every_term():
    from distill.engine import Distiller

    data = photos.load_photos("sr", limit={"train": 32, "val": 4, "test": 4})
    torch.manual_seed(0)
    teacher = build_model("srnet", (1, 40, 40), depth=4, channels=12).eval()
    student = build_model("srnet", (1, 40, 40), depth=3, channels=6)
    run = Distiller(student, teacher, METHODS["restore_combined"](), epochs=1, lr=1e-3, batch_size=16,
                    progress=False, task="restoration")
    run.fit(data.train, data.val)
    last = run.history[-1]
    assert math.isfinite(last["val/psnr"]) and {"train/hint", "train/csd", "train/wavelet_kd"} <= set(last)


def test_the_benchmark_table_and_its_arms():
    from distill.restoration_bench import ARMS, format_table

    assert {"denoise-scratch", "denoise-output", "sr-feature", "sr-wavelet", "sr-contrastive", "sr-combined"} <= set(ARMS)
    row = {"task": "sr", "params": 100, "ssim": 0.8, "teacher_psnr": 35.0}
    summary = {"teachers": {"sr": {"params": 800, "psnr": 31.0, "ssim": 0.85, "input": {"psnr": 29.0, "ssim": 0.8}}},
               "speed": {"sr": {"teacher": 800.0, "student": 100.0}}, "macs": {"sr": {"teacher": 4e4, "student": 5e3}},
               "rows": [{**row, "arm": "sr-scratch", "seed": s, "psnr": 30.0 + s} for s in range(3)]}
    table = format_table(summary)
    assert "| sr | student | sr-scratch | 100 | 5,000 | 31.00 ± 1.00 |" in table and "8.0×" in table


def test_a_cached_model_is_trained_once_then_loaded(tmp_path):
    from distill.fileio import cached_model

    calls = []

    def train():
        calls.append(1)
        with torch.no_grad():
            model.tail.weight.fill_(0.5)
        return {"history": [1]}

    model = build_model("dncnn", depth=3, channels=4)
    _, info = cached_model(tmp_path / "t", model, train, say=lambda *_: None)
    again, stored = cached_model(tmp_path / "t", build_model("dncnn", depth=3, channels=4), train)
    assert len(calls) == 1 and stored == info and info["history"] == [1] and "seconds" in info
    assert float(again.tail.weight.detach().mean()) == 0.5 and not again.training


def test_the_restoration_recipe_names_its_task_models_and_methods():
    from distill.recipe import load_recipe

    recipe = load_recipe("restoration")
    assert recipe.build_task().name == "restoration"
    assert [m.name for m in recipe.methods] == ["restore_scratch", "restore_output", "restore_wavelet",
                                                "restore_contrastive"]
    assert photos.sr_photos.__doc__ and recipe.data.dataset == "distill.zoo.photos:load_photos"


def test_the_own_loss_can_be_the_squared_error():
    assert [t.name for t in METHODS["restore_wavelet"](own="mse")] == ["mse", "wavelet_kd"]
    assert [t.name for t in get_task("restoration", loss="mse").default_terms()] == ["mse"]
    with pytest.raises(ValueError, match="own must be"):
        METHODS["restore_scratch"](own="l2")
    with pytest.raises(TaskError, match="'l1' or 'mse'"):
        get_task("restoration", loss="huber")


def test_restoration_methods_need_the_restoration_task():
    from distill.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="needs 'task: restoration'"):
        load_recipe("restoration", ["task=classification"])
