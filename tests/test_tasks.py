"""Tasks: the engine beyond image classification — Hugging Face items padded per batch, token-level
distillation with masks and accumulation, embeddings, regression / multi-label without labels, and the
shapes of the CTC, detection and restoration tasks to come."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from distill import Distiller, DistillError, Term, seed_everything
from distill.tasks import IGNORE_INDEX, Task, TaskError, get_task

transformers = pytest.importorskip("transformers")


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# --------------------------------------------------------------------------- sentence classification (BERT)
def keyword_items(n, seed, vocab=20, keyword=3):
    """Variable-length token sequences (HF items); the label says whether the keyword token occurs."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = int(torch.randint(4, 13, (1,), generator=g))
        ids = torch.randint(4, vocab, (length,), generator=g)
        label = i % 2
        if label:
            ids[int(torch.randint(1, length, (1,), generator=g))] = keyword
        ids[0] = 1  # [CLS]
        items.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": label})
    return ListDataset(items)


def tiny_bert(layers, hidden, seed):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=20, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=16,
                                     num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def test_hf_items_are_padded_per_batch():
    task = get_task("classification", pad_token_id=0)
    data = keyword_items(8, seed=0)
    batch = task.collate([data[i] for i in range(3)])
    lengths = [len(data[i]["input_ids"]) for i in range(3)]
    assert set(batch["input"]) == {"input_ids", "attention_mask"}  # the target is not a model input
    assert batch["input"]["input_ids"].shape == (3, max(lengths))  # padded to this batch's longest item
    assert batch["input"]["attention_mask"].sum(1).tolist() == lengths
    assert batch["label"].tolist() == [data[i]["labels"] for i in range(3)]
    short = lengths.index(min(lengths))
    assert (batch["input"]["input_ids"][short, min(lengths):] == 0).all()
    with pytest.raises(TaskError, match="pad_token_id"):
        get_task("classification").collate([data[i] for i in range(3)])


def test_bert_distils_hf_items_through_the_python_api():
    task = get_task("classification", pad_token_id=0)
    train, val = keyword_items(384, seed=1), keyword_items(128, seed=2)
    seed_everything(0)
    teacher = tiny_bert(2, 32, seed=0)
    Distiller(teacher, task=task, epochs=6, lr=3e-3, batch_size=32, progress=False).fit(train)
    student = tiny_bert(1, 16, seed=1)
    d = Distiller(student, teacher, [Term("ce", 0.5), Term("kd", 0.5, temperature=2)], task=task, epochs=6,
                  lr=3e-3, batch_size=32, progress=False)
    history = d.fit(train, val)
    assert "val/accuracy" in history[-1]
    assert history[-1]["val/accuracy"] > 85  # chance is 50
    assert d.evaluate(val)["accuracy"] == history[-1]["val/accuracy"]


def keyword_splits():
    """A recipe's data function (``data: {dataset: "test_tasks:keyword_splits"}``)."""
    return {"train": keyword_items(384, seed=1), "val": keyword_items(128, seed=2), "test": keyword_items(128, seed=3)}


def test_bert_distils_hf_items_through_a_recipe(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import parse_recipe

    for name, (layers, hidden) in {"teacher": (2, 32), "student": (1, 16)}.items():
        tiny_bert(layers, hidden, seed=0).save_pretrained(tmp_path / name)
    fast = {"epochs": 6, "lr": 3e-3, "batch_size": 32, "progress": False}
    recipe = parse_recipe({
        "name": "bert-keyword", "task": {"name": "classification", "pad_token_id": 0},
        "data": {"dataset": "test_tasks:keyword_splits"},
        "teacher": {"model": f"hf:{tmp_path / 'teacher'}", "train": fast},
        "student": {"model": f"hf:{tmp_path / 'student'}"},
        "methods": [{"method": "scratch"}, {"method": "kd", "alpha": 0.5, "temperature": 2}],
        "train": fast, "evaluation": {"latency_batch_size": 16, "latency_repeats": 2}})
    summary = run_recipe(recipe, tmp_path / "run")
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {"teacher", "scratch", "kd"}
    assert rows["teacher"]["test_accuracy"] > 85 and rows["kd"]["test_accuracy"] > 75
    assert rows["kd"]["params"] < rows["teacher"]["params"]
    assert "kd vs scratch" in (tmp_path / "run" / "summary.md").read_text()


def test_a_user_collate_fn_is_used_for_training_and_evaluation():
    calls = []

    def collate(items):
        calls.append(len(items))
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(it["input_ids"]) for it in items], batch_first=True)
        return {"input_ids": ids, "attention_mask": (ids != 0).long(),
                "labels": torch.tensor([it["labels"] for it in items])}

    data = keyword_items(40, seed=3)
    d = Distiller(tiny_bert(1, 8, seed=0), collate_fn=collate, epochs=1, batch_size=16, progress=False)
    history = d.fit(data, data)
    assert 0 <= history[-1]["val/accuracy"] <= 100
    assert 16 in calls and 40 in calls  # training batches and the evaluation batch


# ---------------------------------------------------------------------------------------- causal LM
def lm_items(n, seed):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        length = int(torch.randint(5, 15, (1,), generator=g))
        start = int(torch.randint(1, 10, (1,), generator=g))
        items.append({"input_ids": [(start + 2 * k) % 29 + 1 for k in range(length)]})  # counting by two
    return ListDataset(items)


def tiny_gpt(layers, width, seed):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=30, n_positions=16, n_embd=width, n_layer=layers, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=1, eos_token_id=1)
    return transformers.GPT2LMHeadModel(config)


def test_token_task_shifts_labels_and_masks_padding():
    task = get_task("tokens", pad_token_id=0)
    batch = task.collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["input"]["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    # position i is scored on token i + 1; the last position and padding do not count
    assert batch["label"].tolist() == [[6, 7, IGNORE_INDEX], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["mask"].tolist() == [[True, True, False], [True, False, False]]


def _lm_run(grad_accum, batch_size, teacher, epochs=1, optimizer="sgd", lr=0.1):
    from distill.losses import generalized_jsd_loss

    student = tiny_gpt(1, 16, seed=5)
    terms = [Term("ce", 0.5), Term(generalized_jsd_loss, 0.5, beta=0.5, temperature=1.0, name="gjsd")]
    d = Distiller(student, teacher, terms, task=get_task("tokens", pad_token_id=0), epochs=epochs, lr=lr,
                  optimizer=optimizer, batch_size=batch_size, grad_accum=grad_accum, progress=False,
                  schedule="constant")
    history = d.fit(lm_items(64, seed=7), lm_items(32, seed=8))
    return student, history


def test_causal_lm_distils_token_by_token_and_accumulation_matches():
    teacher = tiny_gpt(2, 32, seed=4)
    Distiller(teacher, task=get_task("tokens", pad_token_id=0), epochs=8, lr=1e-2, batch_size=16,
              progress=False).fit(lm_items(256, seed=6))
    plain, history = _lm_run(1, 16, teacher)
    accumulated, _ = _lm_run(2, 8, teacher)
    # the same 16 items per step, padded differently; every token loss is normalised by the step's tokens, so
    # plain SGD ends at the same weights (per-micro-batch means would weight short sequences' tokens more)
    for (name, a), b in zip(plain.state_dict().items(), accumulated.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5), name
    assert {"val/accuracy", "val/perplexity", "val/loss"} <= set(history[-1])
    _, longer = _lm_run(1, 16, teacher, epochs=6, optimizer="adamw", lr=1e-2)
    assert longer[-1]["val/perplexity"] < 0.5 * longer[0]["val/perplexity"]  # it learns


# ------------------------------------------------------------------------------------------- embeddings
def test_embedding_student_learns_teacher_vectors_with_unlabelled_validation():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 8))
    student = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8))
    train, val = torch.randn(512, 10), torch.randn(128, 10)
    d = Distiller(student, teacher, task="embedding", epochs=15, lr=1e-2, batch_size=64, progress=False)
    history = d.fit(ListDataset(list(train)), ListDataset(list(val)))
    first, last = history[0], history[-1]
    assert {"val/teacher_cosine", "val/teacher_mse", "val/teacher_top1"} <= set(last)
    assert last["val/teacher_cosine"] > 0.95 and last["val/teacher_cosine"] > first["val/teacher_cosine"]
    assert last["val/teacher_top1"] > 90  # the teacher's own vector is the nearest among the batch's
    assert d.best()["metric"] == "teacher_cosine"


def test_a_run_table_of_unlabelled_vectors_shows_their_fidelity_to_the_teacher():
    from types import SimpleNamespace

    from distill.experiment import _scores, format_table

    torch.manual_seed(0)
    teacher, student = nn.Linear(10, 8), nn.Linear(10, 8)
    split = ListDataset(list(torch.randn(32, 10)))
    data = SimpleNamespace(val=split, test=split, task=get_task("embedding"))
    rows = [{"label": label, "model": "linear", "params": 88, "seconds_per_batch": 0.001,
             **_scores(model, data, teacher)} for label, model in (("teacher", teacher), ("student", student))]
    assert rows[0]["metric"] == "teacher_cosine" and rows[0]["test_teacher_cosine"] == pytest.approx(1)
    assert -1 < rows[1]["test_teacher_cosine"] < 0.9  # an untrained student, not NaN
    table = format_table({"latency_batch_size": 8, "metric": rows[1]["metric"], "rows": rows})
    assert "test teacher_cosine" in table and "| teacher (linear) | 88 | - | 1 |" in table


# ------------------------------------------------------------------------ regression and multi-label
class PitchNet(nn.Module):
    """A pitch-estimation-like model: 24 sigmoid outputs (pitch bins), no class labels."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 24))

    def forward(self, x):
        return self.net(x)


def sigmoid_mse(student, teacher):
    return ((student.sigmoid() - teacher.sigmoid()) ** 2).mean()


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_sigmoid_outputs_validate_without_labels(task):
    torch.manual_seed(0)
    teacher, student = PitchNet(64), PitchNet(16)
    inputs = torch.randn(400, 16)
    d = Distiller(student, teacher, [Term(sigmoid_mse)], task=task, epochs=12, lr=1e-2, batch_size=50,
                  progress=False)
    history = d.fit(ListDataset(list(inputs[:300])), ListDataset(list(inputs[300:])))
    assert history[-1]["val/teacher_mse"] < history[0]["val/teacher_mse"]
    if task == "multilabel":
        assert history[-1]["val/teacher_agreement"] > max(80, history[0]["val/teacher_agreement"])


def test_float_targets_reach_a_regression_task_unchanged():
    x = torch.randn(64, 3)
    y = (0.25 + x[:, 0] * 1.5).tolist()  # Python floats, not whole numbers
    data = ListDataset(list(zip(x, y)))
    task = get_task("regression")
    batch = task.collate([data[i] for i in range(4)])
    assert batch["label"].dtype.is_floating_point
    assert torch.equal(batch["label"], torch.tensor(y[:4], dtype=batch["label"].dtype))
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    history = Distiller(model, task=task, epochs=30, lr=5e-2, batch_size=16, progress=False).fit(data, data)
    assert history[-1]["val/mse"] < 1e-2  # a linear target, learnt
    with pytest.raises(TaskError, match="regression"):  # a classifier refuses to round them
        get_task("classification").collate([data[i] for i in range(4)])


def test_multilabel_metrics_by_hand():
    task = get_task("multilabel")
    sums = {}
    logits = torch.tensor([[2.0, -1.0, 3.0], [-2.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    task.add_batch(sums, logits, {"label": labels}, None)
    metrics = task.summarize(sums)
    # label 0: tp 1 -> F1 1; label 1: tp 1 -> 1; label 2: fp 1, fn 1 -> 0
    assert metrics["f1"] == pytest.approx(100 * 2 / 3)
    assert metrics["accuracy"] == pytest.approx(100 * 4 / 6)


# ----------------------------------------------------------------------------------- the loop's guards
def test_empty_or_unjudgeable_validation_is_an_error(digits):
    from distill import build_model

    student = build_model("mlp", digits.input_shape, hidden=[8])
    with pytest.raises(DistillError, match="validation set is empty"):
        Distiller(student, epochs=1, progress=False).fit(digits.train, ListDataset([]))
    unlabelled = ListDataset([digits.val[i]["input"] for i in range(10)])
    with pytest.raises(DistillError, match="no targets and there is no teacher"):
        Distiller(student, epochs=1, progress=False).fit(digits.train, unlabelled)


def test_labels_out_of_range_in_validation_are_named(digits):
    from distill import build_model

    bad = ListDataset([(digits.val[i]["input"], 12) for i in range(10)])
    with pytest.raises(TaskError, match="label 12 is out of range for a model with 10 outputs"):
        Distiller(build_model("mlp", digits.input_shape, hidden=[8]), epochs=1, progress=False).evaluate(bad)


def test_softmax_losses_are_refused_for_sigmoid_outputs():
    with pytest.raises(DistillError, match="term 'kd' reads the outputs as a softmax distribution.*multilabel"):
        Distiller(PitchNet(8), PitchNet(16), [Term("kd")], task="multilabel")


def test_a_mistyped_keyword_is_one_line():
    with pytest.raises(DistillError, match="unknown keyword 'epoch'.*did you mean 'epochs'") as err:
        Distiller(nn.Linear(2, 2), epoch=3)
    assert "\n" not in str(err.value)


# ------------------------------------------- the shapes of the tasks to come: CTC, detection, restoration
class CTCTask(Task):
    """Variable-length frames with CTC targets: the toy shape of the speech task."""

    name = "ctc-toy"

    def default_terms(self):
        return []


def test_ctc_shape_variable_frames_and_targets():
    g = torch.Generator().manual_seed(0)
    items = [{"input": torch.randn(int(t), 5, generator=g), "label": torch.randint(1, 4, (int(u),), generator=g)}
             for t, u in [(12, 3), (9, 2), (15, 4), (10, 1)]]
    task = CTCTask()
    batch = task.collate(items)
    assert batch["input"].shape == (4, 15, 5) and batch["lengths"].tolist() == [12, 9, 15, 10]
    assert batch["label"].shape == (4, 4) and (batch["label"][3, 1:] == IGNORE_INDEX).all()

    class Frames(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = nn.GRU(5, 8, batch_first=True), nn.Linear(8, 4)

        def forward(self, x):
            return self.out(self.rnn(x)[0])

    def ctc(log_probs, labels, lengths):
        target_lengths = (labels != IGNORE_INDEX).sum(1)
        return nn.functional.ctc_loss(log_probs.log_softmax(-1).transpose(0, 1), labels.clamp(min=0),
                                      lengths, target_lengths)

    class WithLengths(Term):  # a term reading the frame lengths from the batch
        def __call__(self, s, t, batch=None):
            return self.fn(s["logits"], batch["label"], batch["lengths"])

    torch.manual_seed(0)
    model = Frames()
    d = Distiller(model, terms=[WithLengths(ctc, teacher=None, name="ctc")], task=task, epochs=20, lr=1e-2,
                  batch_size=4, progress=False)
    history = d.fit(ListDataset(items))
    assert history[-1]["train/ctc"] < history[0]["train/ctc"]


class BoxesTask(Task):
    """Boxes and classes per image: the toy shape of the detection task (targets that do not stack)."""

    name = "boxes-toy"

    def split_item(self, raw):
        return {"input": raw["image"], "label": {"boxes": raw["boxes"], "classes": raw["classes"]}}

    def stack_labels(self, labels):
        return list(labels)


def test_detection_shape_boxes_per_image():
    items = [{"image": torch.rand(1, 16, 16), "boxes": torch.rand(n, 4), "classes": torch.arange(n)}
             for n in (1, 3, 2)]
    batch = BoxesTask().collate(items)
    assert batch["input"].shape == (3, 1, 16, 16)
    assert [len(t["boxes"]) for t in batch["label"]] == [1, 3, 2]

    def box_count_loss(pred, targets):  # a stand-in for a detector's loss: predict how many objects
        counts = torch.tensor([float(len(t["boxes"])) for t in targets])
        return ((pred.squeeze(-1) - counts) ** 2).mean()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 1))
    d = Distiller(model, terms=[Term(box_count_loss, teacher=None, labels=True)], task=BoxesTask(), epochs=30,
                  lr=1e-2, batch_size=3, progress=False)
    history = d.fit(ListDataset(items))
    assert history[-1]["train/loss"] < 0.1 * history[0]["train/loss"]


def test_restoration_shape_image_to_image():
    torch.manual_seed(0)
    clean = torch.rand(48, 1, 8, 8)
    noisy = clean + 0.1 * torch.randn_like(clean)
    data = ListDataset(list(zip(noisy, clean)))
    teacher = nn.Conv2d(1, 1, 3, padding=1)
    Distiller(teacher, task="regression", epochs=40, lr=2e-2, batch_size=16, progress=False).fit(data)
    student = nn.Conv2d(1, 1, 3, padding=1)
    d = Distiller(student, teacher, [Term(_mse, teacher="logits")],
                  task="regression", epochs=40, lr=2e-2, batch_size=16, progress=False)
    history = d.fit(data, data)
    assert {"val/mse", "val/mae"} <= set(history[-1])
    assert history[-1]["val/mse"] < history[0]["val/mse"]


def _mse(student, teacher):
    return ((student - teacher) ** 2).mean()


# ------------------------------------------------------------------------ the teacher cache over tokens
def test_token_teacher_cache_keeps_top_k_along_the_vocabulary_ragged(tmp_path):
    import numpy as np

    from distill.cache import fingerprint

    task = get_task("tokens", pad_token_id=0)
    teacher = tiny_gpt(1, 16, seed=4)
    data = lm_items(40, seed=9)

    def run(**cache):
        student = tiny_gpt(1, 16, seed=5)
        Distiller(student, teacher, [Term("kd", temperature=1.0)], task=task, epochs=2, lr=0.1, optimizer="sgd",
                  batch_size=8, eval_batch_size=16, progress=False, **cache).fit(data)
        return student

    live = run()
    full = run(cache_teacher=True, teacher_cache_dir=str(tmp_path / "full"), teacher_top_k=30)  # k = vocabulary
    for (name, a), b in zip(live.state_dict().items(), full.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    run(cache_teacher=True, teacher_cache_dir=str(tmp_path / "top5"), teacher_top_k=5)
    tokens = sum(len(data[i]["input_ids"]) for i in range(len(data)))
    values = [np.load(p) for p in (tmp_path / "top5").glob("*.values.npy")]
    assert [v.shape for v in values] == [(tokens, 5)]  # one row per real token, none for padding
    # the fingerprint sees every tensor of dict inputs
    other = ListDataset([{"input_ids": [1] + item["input_ids"][1:]} for item in data.items])
    assert fingerprint(teacher, data, task.collate) != fingerprint(teacher, other, task.collate)


# ------------------------------------------------------------------ recipes with the user's own code
def small_mlp(width=16):
    """A recipe's model factory (``model: test_tasks:small_mlp``): any nn.Module."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def test_a_recipe_builds_a_model_from_a_factory_and_names_bad_sources(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import RecipeError, load_recipe

    recipe = load_recipe("digits", ["student.model=test_tasks:small_mlp", "student.options={width: 12}",
                                    "teacher.train.epochs=2", "train.epochs=2", "train.progress=false",
                                    "teacher.train.progress=false"])
    rows = {r["label"]: r for r in run_recipe(recipe, tmp_path / "run")["rows"]}
    assert rows["kd"]["params"] == 64 * 12 + 12 + 12 * 10 + 10
    for override, message in [("student.model=no_such_module:f", "cannot import"),
                              ("student.model=test_tasks:missing", "has no 'missing'"),
                              ("student.model=hf:/nonexistent", "no Hugging Face model folder"),
                              ("data.dataset=nope", "unknown dataset"),
                              ("task=nope", "unknown task")]:
        with pytest.raises(RecipeError, match=message):
            recipe = load_recipe("digits", [override])
            run_recipe(recipe, tmp_path / "bad")


def test_token_batches_carry_their_lengths_padded_or_not():
    task = get_task("tokens", pad_token_id=0)
    assert task.collate([{"input_ids": [5, 6]}, {"input_ids": [7, 8]}])["lengths"].tolist() == [2, 2]
    assert task.collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])["lengths"].tolist() == [3, 1]


def test_a_run_table_of_another_metric_keeps_the_latency_and_speed_up_columns():
    from distill.experiment import format_table

    rows = [{"role": "teacher", "label": "teacher", "model": "cnn", "params": 100, "test_mse": 0.5,
             "seconds_per_batch": 0.004, "speedup": 1.0},
            {"role": "student", "label": "scratch", "model": "mlp", "params": 10, "test_mse": 0.9,
             "seconds_per_batch": 0.001, "speedup": 4.0},
            {"role": "student", "label": "kd", "model": "mlp", "params": 10, "test_mse": 0.7,
             "seconds_per_batch": 0.001, "speedup": 4.0}]
    table = format_table({"latency_batch_size": 8, "metric": "mse", "rows": rows})
    assert "| teacher (cnn) | 100 | - | 0.5 | - | 4.00 | 1.0x |" in table
    assert "| kd (mlp) | 10 | - | 0.7 | - | 1.00 | 4.0x |" in table
    assert "kd vs scratch: -0.2 test mse" in table
