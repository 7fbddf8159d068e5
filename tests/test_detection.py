"""Object detection: the scene generator, the detector's loss and decoding, COCO mAP, the distillation losses
and methods, the task, and a toy run that learns."""
import numpy as np
import pytest
import torch

from distill.engine import Distiller
from distill.losses.detection import (FGD, GID, centre_focal_loss, decode, dense_targets, detection_loss,
                                      fine_grained_mask, general_instances, heatmap_kd, localization_kd,
                                      localization_kd_at_objects, masked_imitation, pearson_kd)
from distill.methods import METHODS
from distill.tasks import TaskError, coco_map, get_task
from distill.zoo import build_model
from distill.zoo.detection import CenterDet
from distill.zoo.scenes import SceneSettings, SceneSet, make_scene


pytestmark = pytest.mark.usefixtures("one_thread")


def bars(count: int = 40) -> tuple[torch.Tensor, np.ndarray]:
    """Synthetic sources: class 0 a wide bar, class 1 a tall bar (28 x 28 images), so a box's shape tells its class."""
    images = torch.zeros(count, 28, 28)
    labels = np.arange(count) % 2
    for k in range(count):
        if labels[k] == 0:
            images[k, 10:18, 2:26] = 1.0
        else:
            images[k, 2:26, 10:18] = 1.0
    return images, labels


def bar_scenes(count: int, seed: int = 0, size: int = 64) -> SceneSet:
    rng = np.random.default_rng(seed)
    sources, labels = bars()
    settings = SceneSettings(size=size, max_objects=3, min_scale=16, max_scale=28)
    made = [make_scene(rng, sources, labels, settings) for _ in range(count)]
    offsets = np.cumsum([0] + [len(m[1]) for m in made])
    return SceneSet(np.stack([m[0] for m in made]), np.concatenate([m[1] for m in made]),
                    np.concatenate([m[2] for m in made]), offsets)


# ------------------------------------------------------------------------------------------------ scenes
def test_scene_boxes_are_inside_the_canvas_tight_and_of_the_right_class():
    data = bar_scenes(30)
    assert len(data) == 30
    for i in range(len(data)):
        item = data[i]
        boxes, classes = item["boxes"], item["classes"]
        assert 1 <= len(boxes) <= 3 and item["image"].shape == (1, 64, 64)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # a wide bar is class 0, a tall one class 1: the class travels with its object
        assert ((w > h) == (classes == 0)).all()
        # tight: a bar's ink fills its box up to the resampled edge, a 3:1 bar keeps its shape within a pixel
        assert (torch.maximum(w, h) / torch.minimum(w, h) > 2.0).all()


def test_scenes_are_deterministic_and_overlap_is_bounded():
    a, b = bar_scenes(10, seed=3), bar_scenes(10, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.images, bar_scenes(10, seed=4).images)
    limit = SceneSettings().max_overlap
    for i in range(len(a)):
        boxes = a.target(i)["boxes"]
        for j in range(len(boxes)):
            for k in range(j):
                lt, rb = torch.maximum(boxes[j, :2], boxes[k, :2]), torch.minimum(boxes[j, 2:], boxes[k, 2:])
                inter = float((rb - lt).clamp_min(0).prod())
                smaller = float(min((boxes[m, 2:] - boxes[m, :2]).prod() for m in (j, k)))
                assert inter <= limit * smaller + 1e-6


def test_real_scenes_use_the_source_splits_and_are_cached(tmp_path, monkeypatch):
    from distill.zoo import scenes
    from distill.zoo.datasets import DataMissing

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    try:
        data = scenes.load_scenes(12, 6, 6, say=lambda *_: None)
    except DataMissing as err:
        pytest.skip(str(err))
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (96, 96) and split.classes.min() >= 0 and split.classes.max() < 20
        counts = np.diff(split.offsets)
        assert counts.min() >= 1 and counts.max() <= 6
        assert (split.boxes[:, 2:] <= 96).all() and (split.boxes[:, :2] >= 0).all()
    again = scenes.load_scenes(12, 6, 6, say=lambda *_: (_ for _ in ()).throw(AssertionError("regenerated")))
    assert np.array_equal(again.test.images, data.test.images)
    # test scenes are made of the sources' test images, validation scenes of a held-out tenth of their training images
    test_objects, test_labels = scenes._objects("test")
    assert len(test_objects) == 20000 and sorted(set(test_labels.tolist())) == list(range(20))
    assert len(scenes._objects("val")[0]) == 12000
    with pytest.raises(ValueError, match="min_objects"):
        scenes.generate("test", 1, 0, SceneSettings(min_objects=3, max_objects=2))


# ------------------------------------------------------------------------------- loss, targets, decoding
def test_decoding_a_hand_made_heatmap():
    heatmap = torch.full((1, 3, 8, 8), -10.0)
    heatmap[0, 2, 3, 4] = 2.0  # a peak of class 2 at row 3, column 4
    heatmap[0, 2, 3, 5] = 1.0  # its neighbour: not a local maximum, suppressed
    heatmap[0, 0, 6, 1] = 0.0  # a weaker peak of class 0
    box = torch.full((1, 4, 6, 8, 8), -20.0)
    box[0, :, 2] = 20.0  # every edge 2 strides from the centre
    box[0, 2, 2, 3, 4], box[0, 2, 3, 3, 4] = -20.0, 20.0  # the right edge of the class-2 peak 3 strides away
    found = decode(heatmap, box, stride=4, threshold=0.1)[0]
    assert found["classes"].tolist() == [2, 0]
    assert torch.allclose(found["scores"], torch.sigmoid(torch.tensor([2.0, 0.0])))
    # centre of (row 3, col 4) at stride 4 is (18, 14): left 8, top 8, right 12, bottom 8 pixels
    assert torch.allclose(found["boxes"][0], torch.tensor([10.0, 6.0, 30.0, 22.0]), atol=1e-3)
    assert torch.allclose(found["boxes"][1], torch.tensor([0.0, 18.0, 14.0, 32.0]), atol=1e-3)  # clipped at 0


def test_dense_targets_peak_at_centres_and_the_loss_prefers_the_truth():
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "classes": torch.tensor([1])}]
    heat, distances, weight = dense_targets(targets, 2, (8, 8), 4, bins=8)
    assert heat[0, 1, 4, 4] == 1.0 and heat[0, 0].max() == 0 and heat[0, 1].max() == 1.0
    assert torch.allclose(distances[0, :, 4, 4], torch.tensor([2.5, 2.5, 1.5, 1.5]))  # centre (18, 18): 10, 6 px
    assert weight[0, 4, 4] == 1.0 and weight[0, 0, 0] == 0
    # a heatmap and box logits that agree with the targets beat flat ones
    good_heat = torch.where(heat >= 1, 8.0, -8.0)
    bins = torch.arange(8.0)[None, None, :, None, None]
    good_box = -20 * (bins - distances[:, :, None]).abs()
    flat = [torch.zeros_like(good_heat, requires_grad=True), torch.zeros_like(good_box, requires_grad=True)]
    assert detection_loss([good_heat, good_box], targets) < 0.5 * detection_loss(flat, targets)
    detection_loss(flat, targets).backward()
    assert flat[0].grad.abs().sum() > 0 and flat[1].grad.abs().sum() > 0


def test_centre_focal_loss_by_hand():
    logit = torch.tensor(0.3)
    heat = torch.tensor([[[[1.0, 0.5]]]])
    heatmap = torch.tensor([[[[0.3, -0.4]]]])
    p0, p1 = torch.sigmoid(logit), torch.sigmoid(torch.tensor(-0.4))
    expected = -((1 - p0) ** 2 * torch.log(p0) + (1 - 0.5) ** 4 * p1**2 * torch.log(1 - p1))
    assert torch.allclose(centre_focal_loss(heatmap, heat), expected)


def test_detection_loss_refuses_bad_targets():
    heatmap, box = torch.zeros(1, 2, 8, 8), torch.zeros(1, 4, 6, 8, 8)
    outside = [{"boxes": torch.tensor([[0.0, 0.0, 40.0, 10.0]]), "classes": torch.tensor([0])}]
    with pytest.raises(ValueError, match="inside the 32 x 32 image"):
        detection_loss([heatmap, box], outside)
    with pytest.raises(ValueError, match="classes must be 0 to 1"):
        detection_loss([heatmap, box], [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "classes": torch.tensor([5])}])
    with pytest.raises(ValueError, match="same grid"):
        detection_loss([heatmap, torch.zeros(1, 4, 6, 4, 4)], [])


# ----------------------------------------------------------------------------------------------- COCO mAP
def _truths():
    return [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [50.0, 5.0, 80.0, 30.0]]), "classes": torch.tensor([0, 3])},
            {"boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0]]), "classes": torch.tensor([1])}]


def test_coco_map_of_perfect_predictions_is_one_and_of_wrong_ones_lower():
    truths = _truths()
    perfect = [{**t, "scores": torch.ones(len(t["boxes"]))} for t in truths]
    found = coco_map(perfect, truths, 4)
    assert found["map"] == pytest.approx(100.0) and found["map50"] == pytest.approx(100.0)  # mAP 1, in %
    shifted = [{**p, "boxes": p["boxes"] + 6} for p in perfect]
    found = coco_map(shifted, truths, 4)
    assert 0 < found["map"] < 100 and found["map50"] >= found["map"]
    wrong_class = [{**p, "classes": (p["classes"] + 1) % 4} for p in perfect]
    assert coco_map(wrong_class, truths, 4)["map"] == 0.0
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "classes": torch.zeros(0, dtype=torch.long)}] * 2
    assert coco_map(nothing, truths, 4) == {"map": 0.0, "map50": 0.0}


# ---------------------------------------------------------------------------------- distillation losses
def _outputs(seed: int, batch: int = 2, width: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, width, 8, 8, generator=g), torch.randn(batch, 3, 8, 8, generator=g),
            torch.randn(batch, 4, 6, 8, 8, generator=g))


TARGETS = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 16.0]]), "classes": torch.tensor([1])},
           {"boxes": torch.tensor([[0.0, 10.0, 12.0, 30.0], [16.0, 2.0, 30.0, 14.0]]), "classes": torch.tensor([0, 2])}]

LOSSES = {
    "heatmap_kd": lambda s, t: heatmap_kd(s[1], t[1], temperature=2.0),
    "masked_imitation": lambda s, t: masked_imitation(s[0], t[0], TARGETS),
    "pearson_kd": lambda s, t: pearson_kd(s[0], t[0]),
    "ld": lambda s, t: localization_kd(s[2], t[2]),
    "ld_gt": lambda s, t: localization_kd_at_objects(s[2], t[2], TARGETS),
    "fgd": lambda s, t: FGD()(s[0], t[0], TARGETS),
    "gid": lambda s, t: GID(top_k=5)(list(s), list(t), TARGETS),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_distillation_loss_is_zero_when_the_student_is_the_teacher(name):
    torch.manual_seed(0)
    teacher = _outputs(0)
    same = [x.clone().requires_grad_() for x in teacher]
    assert float(LOSSES[name](same, teacher).detach()) == pytest.approx(0.0, abs=1e-6)
    student = [x.clone().requires_grad_() for x in _outputs(1)]
    loss = LOSSES[name](student, teacher)
    assert float(loss.detach()) > 1e-4
    loss.backward()
    grads = [x.grad for x in student if x.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_pearson_kd_ignores_each_channels_scale_and_shift():
    features = _outputs(0)[0]
    assert float(pearson_kd(3.0 * features + 2.0, features)) == pytest.approx(0.0, abs=1e-6)
    assert float(pearson_kd(-features, features)) == pytest.approx(2.0, rel=1e-4)  # 1/2 * (2^2) per element


def test_heatmap_kd_gradient_matches_the_sigmoid_difference():
    s = torch.zeros(1, 1, 1, 1, requires_grad=True)
    t = torch.full((1, 1, 1, 1), 1.0)
    heatmap_kd(s, t).backward()  # d/ds binaryKL(sigmoid(t) || sigmoid(s)) = sigmoid(s) - sigmoid(t)
    assert torch.allclose(s.grad, torch.sigmoid(torch.tensor(0.0)) - torch.sigmoid(t))


def test_imitation_masks_cover_the_objects_and_general_instances_go_beyond_them():
    mask = fine_grained_mask([TARGETS[0]["boxes"]], (8, 8), 4)[0]
    assert mask[2, 2] == 1 and mask[7, 7] == 0  # the object's centre (12, 10) is in location (2, 2)
    teacher = list(_outputs(0)[1:])
    teacher[0] = torch.full_like(teacher[0], -8.0)
    teacher[0][0, 1, 6, 6] = 4.0  # the teacher sees an object nobody annotated, far from the ground truth
    student = [torch.full_like(teacher[0], -8.0), teacher[1]]
    boxes = general_instances(student, teacher, stride=4, top_k=3)
    assert len(boxes[0]) == 1 and len(boxes[1]) == 0
    centre = (boxes[0][0, :2] + boxes[0][0, 2:]) / 2
    assert torch.allclose(centre, torch.tensor([26.0, 26.0]), atol=4.0)


def test_distillation_losses_refuse_mismatched_shapes():
    features = _outputs(0)[0]
    with pytest.raises(ValueError, match="connector"):
        pearson_kd(features[:, :4], features)
    with pytest.raises(ValueError, match="differ"):
        heatmap_kd(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


# ------------------------------------------------------------------------------------- task and methods
def test_task_collates_variable_boxes_and_refuses_bad_items():
    task = get_task("detection")
    data = bar_scenes(3)
    batch = task.collate([data[i] for i in range(3)])
    assert batch["input"].shape == (3, 1, 64, 64) and isinstance(batch["label"], list)
    assert [len(t["boxes"]) for t in batch["label"]] == [len(data[i]["boxes"]) for i in range(3)]
    item = data[0]
    with pytest.raises(TaskError, match="inside the 64 x 64 image"):
        task.collate([{**item, "boxes": torch.tensor([[50.0, 0.0, 70.0, 10.0]]), "classes": torch.tensor([0])}])
    with pytest.raises(TaskError, match="boxes but"):
        task.collate([{**item, "classes": torch.tensor([0, 1, 1, 0, 1])}])
    with pytest.raises(TaskError, match="'image'"):
        task.collate([{"input": item["image"]}])
    with pytest.raises(TaskError, match="'image'"):
        task.collate([{"image": item["image"], "boxes": item["boxes"]}])  # boxes without classes
    unlabelled = task.collate([{"image": data[i]["image"]} for i in range(2)])  # a transfer set
    assert unlabelled["input"].shape == (2, 1, 64, 64) and "label" not in unlabelled
    with pytest.raises(TaskError, match="mixes items with and without targets"):
        task.collate([item, {"image": item["image"]}])
    with pytest.raises(TaskError, match=r"\(C, H, W\)"):
        task.collate([{**item, "image": item["image"][0]}])
    empty = task.collate([{**item, "boxes": torch.zeros(0, 4), "classes": torch.zeros(0)}])
    assert empty["label"][0]["boxes"].shape == (0, 4)


def tiny(seed: int, width: int = 8) -> CenterDet:
    torch.manual_seed(seed)
    return CenterDet(num_classes=2, widths=(width, width, 2 * width, 2 * width), neck=2 * width, head=2 * width,
                     bins=8)


def test_a_toy_detector_learns_in_seconds():
    train, val = bar_scenes(96, seed=0), bar_scenes(32, seed=1)
    model = tiny(0)
    d = Distiller(model, None, METHODS["detection"](), task="detection", epochs=6, lr=1e-2, batch_size=16,
                  progress=False, eval_batch_size=32)
    history = d.fit(train, val)
    assert history[-1]["train/detection"] < 0.6 * history[0]["train/detection"]
    assert history[-1]["val/map50"] > history[0]["val/map50"] + 10


@pytest.mark.parametrize("method", ["det_heatmap_kd", "det_fine_grained", "det_fgd", "det_pkd", "det_ld", "det_gid"])
def test_each_method_trains_a_student_from_a_teacher(method):
    train = bar_scenes(16, seed=0)
    teacher, student = tiny(0, width=12), tiny(1)
    d = Distiller(student, teacher.eval(), METHODS[method](), task="detection", epochs=1, lr=1e-2, batch_size=8,
                  progress=False)
    record = d.fit(train)[-1]
    distill_terms = [k for k in record if k.startswith("train/") and k not in ("train/loss", "train/detection")]
    assert distill_terms and all(np.isfinite(record[k]) and record[k] > 0 for k in distill_terms)
    assert METHODS[method]().__len__() == 2


def test_zoo_detectors_and_their_costs():
    teacher = build_model("centerdet_teacher", (1, 96, 96), num_classes=20)
    student = build_model("centerdet_student", (1, 96, 96), num_classes=20)
    out = student(torch.zeros(2, 1, 96, 96))
    assert out["logits"].shape == (2, 20, 24, 24) and out["box"].shape == (2, 4, 10, 24, 24)
    from distill.evaluation import count_macs, count_parameters

    x = torch.zeros(1, 1, 96, 96)
    assert count_macs(teacher, x) > 4 * count_macs(student, x)
    assert count_parameters(teacher) > 5 * count_parameters(student)
    with pytest.raises(ValueError, match="multiples of 16"):
        student(torch.zeros(1, 1, 90, 90))


# ------------------------------------------------------------------------------------------------- bench
def test_benchmark_refuses_unknown_arms_and_formats_its_table():
    from distill.detection_bench import format_table, run_detection_benchmark

    with pytest.raises(ValueError, match="unknown arms"):
        run_detection_benchmark(only=["nope"])
    speed = {"ms_batch1": 2.0, "ms_batch32": 1.0, "macs": 3e7, "params": 1000}
    rows = [{"arm": "scratch", "map": m, "map50": 2 * m, "val_map": m, "train_seconds": 10.0} for m in (10.0, 12.0)]
    table = format_table({"teacher": {"map": 30.0, "map50": 60.0, "val_map": 31.0, "train_seconds": 100.0},
                          "rows": rows, "speed": {"teacher": {**speed, "ms_batch1": 8.0}, "student": speed},
                          "settings": {"data": {"test": 1000}}})
    assert "| student | scratch | 11.0 ± 1.4 | 22.0 ± 2.8 |" in table and "4.0x" in table


def test_detections_are_drawn_beside_the_ground_truth(tmp_path):
    pytest.importorskip("matplotlib")
    from distill.detection_bench import draw_detections

    path = draw_detections(tmp_path, bar_scenes(2), tiny(0).eval(), arms=("scratch",), images=2)
    assert path.is_file() and path.stat().st_size > 1000


def test_weight_sweep_scores_validation_only_scales_the_weight_and_resumes(tmp_path, monkeypatch):
    from distill import detection_bench as bench

    class Scenes:  # the test split must never be read by the sweep
        settings, train, val = {"train": 1}, object(), object()

        @property
        def test(self):
            raise AssertionError("the sweep read the test scenes")

    calls = []

    def fake_fit(arm, seed, data, teacher, quick, weight=None):
        calls.append((arm, weight))
        weight = 1.0 if weight is None else weight
        return None, [{"val/map": 10 * weight, "val/map50": 20 * weight}], 1.0

    monkeypatch.setattr("distill.zoo.scenes.load_scenes", lambda **_: Scenes())
    teacher = torch.nn.Linear(1, 1)  # the same weights each call: the stored rows name them
    monkeypatch.setattr(bench, "cached_teacher", lambda *a, **k: (teacher, {"settings": {"t": 1}}))
    monkeypatch.setattr(bench, "fit_arm", fake_fit)
    results = bench.run_weight_sweep(only=["scratch", "pkd"], out_dir=tmp_path, scales=(0.5, 2.0), say=lambda *_: None)
    assert calls == [("scratch", None), ("pkd", 1.0), ("pkd", 4.0)]  # pkd's weight before the sweep is 2
    assert results["pkd"] == {0.5: [10.0], 2.0: [40.0]}
    table = (tmp_path / "table.md").read_text()
    assert "validation mAP 10.0" in table and "| pkd | 2 | 10.0 | **40.0** |" in table
    bench.run_weight_sweep(only=["pkd"], out_dir=tmp_path, scales=(0.5, 2.0), say=lambda *_: None)
    assert len(calls) == 3  # stored rows are reused
    with torch.no_grad():
        teacher.weight.add_(1.0)  # a teacher retrained to other weights: its rows are made again
    bench.run_weight_sweep(only=["pkd"], out_dir=tmp_path, scales=(0.5, 2.0), say=lambda *_: None)
    assert calls[3:] == [("pkd", 1.0), ("pkd", 4.0)]


def test_transfer_arm_distils_on_unlabelled_scenes_first(monkeypatch):
    from distill import detection_bench as bench
    from distill.zoo.scenes import UnlabelledScenes

    unlabelled = UnlabelledScenes(bar_scenes(16, seed=2))
    assert set(unlabelled[0]) == {"image"}
    labelled, val = bar_scenes(16, seed=0), bar_scenes(8, seed=1)
    monkeypatch.setattr(bench, "build", lambda name, seed: tiny(seed))
    monkeypatch.setattr(bench, "transfer_scenes", lambda quick: unlabelled)
    data = type("Data", (), {"train": labelled, "val": val})
    student, history, _ = bench.fit_arm("transfer", 0, data, tiny(5, width=12).eval(), quick=True)
    epochs = [r for r in history if r.get("event") == "epoch"]
    # stage 1 reads only the teacher's responses (no label term), stage 2 only the labels
    assert {"train/heatmap_kd", "train/ld"} <= set(epochs[0]) and "train/detection" not in epochs[0]
    assert "train/detection" in epochs[-1] and "train/heatmap_kd" not in epochs[-1]
