"""Students prepared on unlabelled text, the sparse masked LM, and the nlp benchmark's table."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from distill.methods import METHODS  # noqa: E402
from distill.zoo.bert import MaskedTexts, SparseMaskedLM, bert_student, masked_lm_collate  # noqa: E402
from test_text_zoo import _Tok, needs_minilm, needs_rt  # noqa: E402


def test_sparse_masked_lm_scores_exactly_the_predicted_positions():
    model = bert_student(2, head="mlm", seed=0, vocab_size=60, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32).eval()
    seqs = [torch.tensor([1] + list(range(4, 4 + n)) + [2]) for n in (5, 9, 14)]
    batch = masked_lm_collate(0)(MaskedTexts(seqs, _Tok(), seed=3).items)
    predict = batch.pop("predict")
    labels = batch.pop("labels")
    assert predict.shape == batch["input_ids"].shape and labels.shape == (int(predict.sum()),)
    assert batch["attention_mask"].sum(1).tolist() == [7, 11, 16]
    full = model(**batch).logits
    sparse = SparseMaskedLM(model)(**batch, predict=predict)
    torch.testing.assert_close(sparse, full[predict])


def test_bench_arms_name_registered_methods_and_known_initialisations():
    from distill.nlp_bench import ARMS, DEFAULT_ARMS, SHAPES, format_table

    assert set(DEFAULT_ARMS) == set(SHAPES) and all(set(arms) <= set(ARMS) for arms in DEFAULT_ARMS.values())
    assert all(method in METHODS or method == "transfer" for _, method, _ in ARMS.values())
    assert {init for init, _, _ in ARMS.values()} <= {"random", "teacher-layers", "mlm", "distilbert", "tinybert"}
    rows = [{"arm": "kd", "shape": "L2-H384", "seed": s, "test_accuracy": a, "params": 10} for s, a in
            enumerate((80.0, 82.0, 84.0))]
    summary = {"teacher": {"params": 20, "test_accuracy": 85.0}, "rows": rows,
               "latency": {"teacher": {"batch1": 0.012, "batch32": 0.006},
                           "L2-H384": {"batch1": 0.004, "batch32": 0.001, "speedup": {"batch1": 3.04, "batch32": 6.0},
                                       "speedup_range": {"batch1": [2.91, 3.2], "batch32": [5.5, 6.1]}}}}
    table = format_table(summary)
    assert ("| L2-H384 | kd | 10 | 82.00 ± 2.00 | 3 | 96.5% | 4.00 | 1.00 | 3.0× (2.9–3.2) / 6.0× (5.5–6.1) |"
            in table)
    assert "Not trained" not in table
    summary["missing"] = ["pd L2-H384 seed 2"]
    assert format_table(summary).endswith("\n\nNot trained yet: pd L2-H384 seed 2.")


@needs_rt
@needs_minilm
def test_prepared_students_are_cached_and_load_with_a_task_head(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    import distill.pretrain as pretrain
    import distill.zoo.corpora as corpora

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    sentences = [f"the {w} film was {v} and long ." for w in ("first", "second", "third", "last")
                 for v in ("good", "bad", "odd", "fine")] * 70
    monkeypatch.setattr(corpora, "unlabelled_sentences", lambda seed=0: list(sentences))
    monkeypatch.setattr(pretrain, "VAL_SENTENCES", 64)
    for kind in ("mlm", "tinybert"):
        folder = pretrain.pretrained_student(kind, layers=1, hidden=48, max_sentences=128, batch_size=64,
                                             progress=False, say=lambda *_: None)
        info = json.loads((folder / "pretraining.json").read_text())
        assert info["train_set"]["sentences"] == 128 and info["steps"] == 2
        assert info["train_set"]["tokens"] > 128 * 8
        student = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
        assert student.config.num_hidden_layers == 1 and student.config.hidden_size == 48
        monkeypatch.setattr(pretrain, "_prepare", lambda *a, **k: pytest.fail("trained again"))
        assert pretrain.pretrained_student(kind, layers=1, hidden=48, max_sentences=128, batch_size=64,
                                           progress=False) == folder
        monkeypatch.undo()
        monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
        monkeypatch.setattr(corpora, "unlabelled_sentences", lambda seed=0: list(sentences))
        monkeypatch.setattr(pretrain, "VAL_SENTENCES", 64)
    with pytest.raises(ValueError, match="hidden 384"):
        pretrain.pretrained_student("distilbert", layers=1, hidden=48)
    with pytest.raises(ValueError, match="multiple of 12"):
        pretrain.pretrained_student("tinybert", layers=1, hidden=64, max_sentences=128, progress=False,
                                    say=lambda *_: None)


def test_bench_flags_of_the_nlp_benchmark_are_refused_elsewhere(capsys):
    from distill.cli import main

    assert main(["bench", "digits", "--arm", "kd"]) == 2
    assert "--arm and --train-only are for the nlp, embeddings, llm, speech, seq2seq, dense and datafree" in capsys.readouterr().err
    assert main(["bench", "nlp", "--set", "train.lr=1"]) == 2
    assert "the nlp benchmark takes" in capsys.readouterr().err
    assert main(["bench", "llm", "--pair", "L2-H384"]) == 2
    assert "the llm benchmark takes" in capsys.readouterr().err
    assert main(["bench", "llm", "--stored"]) == 2
    assert "the llm benchmark takes" in capsys.readouterr().err
    assert main(["bench", "digits", "--stored"]) == 2
    assert "--stored is for the nlp, embeddings and speech benchmarks" in capsys.readouterr().err
    for name in ("nlp", "embeddings", "speech"):
        assert main(["bench", name, "--stored", "--train-only"]) == 2
        assert "give one of them" in capsys.readouterr().err
    assert main(["bench", "embeddings", "--stored", "--pair", "x"]) == 2
    assert "the embeddings benchmark takes --seeds, --quick, --arm, --train-only, --stored and --out" in \
        capsys.readouterr().err


def test_stored_rows_are_read_only_with_their_key(tmp_path):
    from distill.fileio import bench_row, stored_row

    path = tmp_path / "kd" / "seed-0.json"
    assert stored_row(path, "k1") is None
    row, made = bench_row(path, "k1", lambda: {"test_accuracy": 80.0})
    assert made and stored_row(path, "k1") == row == {"test_accuracy": 80.0, "key": "k1"}
    assert stored_row(path, "k2") is None  # made with other settings: not this row
    assert bench_row(path, "k2", lambda: 1 / 0, train=False) == (None, False)  # a table of stored rows: none made


def test_latency_times_the_models_in_interleaved_rounds():
    import time
    from types import SimpleNamespace

    from distill.nlp_bench import latency

    class Sleeper(torch.nn.Module):
        def __init__(self, seconds, name, calls):
            super().__init__()
            self.seconds, self.name, self.calls = seconds, name, calls

        def forward(self, input_ids, attention_mask=None, **_):
            self.calls.append(self.name)
            time.sleep(self.seconds)
            return input_ids.float()

    class Test(list):
        @property
        def input_ids(self):
            return [item["input_ids"] for item in self]

    test = Test({"input_ids": torch.arange(1, 3 + i % 7), "labels": i % 2} for i in range(40))
    calls = []
    models = {"teacher": Sleeper(0.02, "teacher", calls), "student": Sleeper(0.002, "student", calls)}
    times = latency(models, SimpleNamespace(test=test), rounds=3, repeats=3)
    per_model_and_batch = 2 + 3  # warm-up and timed calls
    assert calls == (["teacher"] * 2 * per_model_and_batch + ["student"] * 2 * per_model_and_batch) * 3
    assert times["teacher"]["speedup"] == {"batch1": 1.0, "batch32": 1.0}
    for b, size in (("batch1", 1), ("batch32", 32)):
        assert times["teacher"][b] >= 0.02 / size and times["student"][b] >= 0.002 / size
        low, high = times["student"]["speedup_range"][b]
        assert 1.5 < low <= times["student"]["speedup"][b] <= high  # 10x asleep, less the call overhead
