"""The language methods by name on tiny BERTs: each trains the student, leaves the teacher alone and
logs its terms."""
import pytest
import torch

pytest.importorskip("transformers")

from distill.engine import Distiller, TrainConfig  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.methods.registry import METHOD_INPUTS  # noqa: E402
from distill.stages import as_stages, fit_stages  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.zoo.bert import MaskedTexts, bert_student  # noqa: E402
from test_mixkd import sentences  # noqa: E402

TOKEN_METHODS = sorted(name for name, needs in METHOD_INPUTS.items() if needs == "tokens" and name != "distilbert")


def tiny(layers, seed, hidden=32, head="classification"):
    return bert_student(layers, head=head, seed=seed, vocab_size=50, hidden_size=hidden,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=32)


@pytest.fixture(scope="module")
def teacher():
    model = tiny(4, 1)
    Distiller(model, epochs=6, lr=3e-3, batch_size=16, progress=False,
              task=get_task("classification", pad_token_id=0)).fit(sentences(96), sentences(32, 1))
    return model


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_each_language_method_trains_the_student_only(teacher, name):
    fn = METHODS[name]
    params = {"student_layers": 2, "teacher_layers": 4} if "student_layers" in fn.__code__.co_varnames else {}
    student = tiny(2, 2, hidden=16)  # narrower: hidden-state terms need their connectors
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = fit_stages(student, teacher, as_stages(fn(**params)), sentences(48), sentences(16, 1),
                     task=get_task("classification", pad_token_id=0), say=lambda *_: None,
                     config=TrainConfig(epochs=2, batch_size=16, lr=3e-3, progress=False))
    history = out["history"]
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history)
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder.layer.0" in k for k in changed)
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    terms = {k[len("train/"):] for k in history[0] if k.startswith("train/") and k != "train/loss"}
    expected = {t.name for stage in as_stages(fn(**params)) for t in stage.terms}
    assert terms <= expected and terms


def test_tinybert_trains_intermediate_layers_then_the_prediction_layer(teacher):
    stages = METHODS["tinybert"](2, 4)
    assert [s.name for s in stages] == ["intermediate layers", "prediction layer"]
    first = {t.name for t in stages[0].terms}
    assert first == {"embedding_mse", "attention_mse_s1_t2", "attention_mse_s2_t4", "hidden_mse_s1_t2",
                     "hidden_mse_s2_t4"}
    assert [(t.name, t.weight) for t in stages[1].terms] == [("kd", 1.0)]
    with pytest.raises(ValueError, match="stage must be"):
        METHODS["tinybert"](2, 4, stage="all")


def test_pkd_leaves_out_the_last_pair():
    names = [t.name for t in METHODS["pkd"](3, 6)]
    assert names == ["ce", "pkd_s1_t2", "pkd_s2_t4", "kd"]
    assert [t.name for t in METHODS["pkd"](3, 6, strategy="last")][1:3] == ["pkd_s1_t4", "pkd_s2_t5"]


def test_distilbert_general_distillation_on_masked_lm_batches():
    class Tok:
        all_special_ids, mask_token_id = [0, 1, 2, 3], 3

        def __len__(self):
            return 50

    items = MaskedTexts([s["input_ids"] for s in sentences(48)], Tok(), seed=0)
    teacher = tiny(4, 1, head="mlm")
    student = tiny(2, 2, head="mlm")
    out = fit_stages(student, teacher, as_stages(METHODS["distilbert"]()), items, None,
                     task=get_task("tokens", shift=False, pad_token_id=0), say=lambda *_: None,
                     config=TrainConfig(epochs=3, batch_size=16, lr=3e-3, progress=False))
    history = out["history"]
    assert {"train/kd", "train/ce", "train/cos"} <= set(history[0])
    assert history[-1]["train/cos"] < history[0]["train/cos"]
