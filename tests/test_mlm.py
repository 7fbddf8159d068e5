"""The masked-LM head trainer and the MLM augmentations, on a tiny BERT and a tiny WordPiece vocabulary."""
import math
import random

import pytest
import torch

from distill.augment import masked_refill, mlm_augment
from distill.errors import DistillError
from distill.mlm import head_names, masked_items, mlm_accuracy, train_mlm_head, unigram_baseline

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a cat dog bird sat ran slept on under near mat rug bed big small red blue old and it was very good "
         "bad movie film is . ,").split()
PIECES = ["##s", "##ly", "##er"]


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + PIECES)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_mlm(tok, seed=0):
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, pad_token_id=0)
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(cfg)


def sentences(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        adj, noun, verb = rng.choice(["big", "small", "red", "old"]), rng.choice(["cat", "dog", "bird"]), \
            rng.choice(["sat", "ran", "slept"])
        where, place = rng.choice(["on", "under", "near"]), rng.choice(["mat", "rug", "bed"])
        out.append(f"The {adj} {noun}{rng.choice(['', 's'])} {verb} {where} the {place}.")
    return out


def test_train_mlm_head_changes_only_the_head_and_lowers_the_loss(tok):
    model = tiny_mlm(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    val = masked_items(sentences(60, seed=1), tok, seed=1)
    start = mlm_accuracy(model, val)
    out = train_mlm_head(model, sentences(400), tok, val_sentences=sentences(60, seed=1), epochs=4, lr=1e-2,
                         batch_size=64)
    head = set(head_names(model))
    assert head == {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                    "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                    "cls.predictions.transform.LayerNorm.bias"}
    for name, p in model.named_parameters():
        if name in head:
            assert not torch.equal(p, before[name]), name
            assert p.requires_grad
        else:
            assert torch.equal(p, before[name]), name  # encoder and the tied word embeddings bit-identical
            assert not p.requires_grad
    end = mlm_accuracy(model, val)
    assert end["perplexity"] < 0.8 * start["perplexity"]
    assert end["accuracy"] > start["accuracy"]
    assert out["val"]["perplexity"] == pytest.approx(mlm_accuracy(model, masked_items(
        sentences(60, seed=1), tok, seed=1))["perplexity"])
    losses = [r["train/loss"] for r in out["history"] if "train/loss" in r]
    assert losses[-1] < losses[0]


def test_mlm_accuracy_on_a_hand_case(tok):
    model = tiny_mlm(tok)
    v = tok.get_vocab()
    with torch.no_grad():
        model.cls.predictions.bias.zero_()
        for word, value in (("the", 100.0), ("cat", 90.0), ("a", 80.0), ("sat", 70.0), ("on", 60.0)):
            model.cls.predictions.bias[v[word]] = value
    ids = torch.tensor([v["[CLS]"], v["[MASK]"], v["[MASK]"], v["[MASK]"], v["[SEP]"]])
    labels = torch.tensor([-100, v["the"], v["cat"], v["dog"], -100])
    out = mlm_accuracy(model, [{"input_ids": ids, "labels": labels}])
    assert out["count"] == 3
    assert out["accuracy"] == pytest.approx(100 / 3)   # "the" is everyone's top-1
    assert out["top5"] == pytest.approx(200 / 3)       # "dog" is not in the top 5
    expected = -torch.log_softmax(model.cls.predictions.bias.detach(), -1)[labels[1:4]].mean()
    assert math.log(out["perplexity"]) == pytest.approx(float(expected), abs=1.0)  # the bias dominates
    base = unigram_baseline([{"input_ids": ids, "labels": labels}] * 2, [{"input_ids": ids, "labels": labels}],
                            len(tok))
    assert base["top5"] == 100.0 and base["count"] == 3


def _no_special(texts):
    return not any(s in t for t in texts for s in SPECIAL)


def test_mlm_augment_is_seeded_replaces_about_p_and_never_special(tok):
    model = tiny_mlm(tok)
    texts = ["the big cat sat on the mat", "A small dogs ran under the rug", "it was very good"]
    a = mlm_augment(texts, model, tok, n_per_text=40, replace_prob=0.4, top_k=5, seed=0)
    assert a == mlm_augment(texts, model, tok, n_per_text=40, replace_prob=0.4, top_k=5, seed=0)
    assert a != mlm_augment(texts, model, tok, n_per_text=40, replace_prob=0.4, top_k=5, seed=1)
    assert len(a) == 3 * 40 and _no_special(a)
    changed = total = 0
    for i, text in enumerate(texts):
        for new in a[i * 40:(i + 1) * 40]:
            old_words, new_words = text.split(), new.split()
            assert len(old_words) == len(new_words)
            changed += sum(o.lower() != n.lower() for o, n in zip(old_words, new_words))
            total += len(old_words)
    assert 0.3 < changed / total < 0.5
    assert a[40].startswith(("A ", "The ", "Big ", "Small ", "Red ", "Old ", "It ", "Bird ", "Cat ", "Dog ")) or \
        a[40][0].isupper()  # the capital of "A" is kept
    assert mlm_augment(texts, model, tok, n_per_text=2, replace_prob=0.0) == [t for t in texts for _ in range(2)]


def test_masked_refill_is_seeded_changes_about_mask_prob_and_never_special(tok):
    model = tiny_mlm(tok)
    texts = sentences(30, seed=3)
    a = masked_refill(texts, model, tok, n_per_text=4, mask_prob=0.15, seed=0)
    assert a == masked_refill(texts, model, tok, n_per_text=4, mask_prob=0.15, seed=0)
    assert a != masked_refill(texts, model, tok, n_per_text=4, mask_prob=0.15, seed=1)
    assert len(a) == 120 and _no_special(a)
    changed = total = 0
    for i, text in enumerate(texts):
        old = tok(text)["input_ids"]
        for new in a[i * 4:(i + 1) * 4]:
            new_ids = tok(new)["input_ids"]
            assert new != text and 1 not in new_ids  # no [UNK]: every refill is a vocabulary entry
            if len(new_ids) == len(old):
                changed += sum(x != y for x, y in zip(old, new_ids))
                total += len(old) - 2
    assert 0.08 < changed / total < 0.3
    assert masked_refill(texts[:2], model, tok, mask_prob=1.0, top_k=3, temperature=0.5, seed=0) != texts[:2]


@pytest.mark.parametrize("call", [
    lambda m, t: mlm_augment("one string", m, t),
    lambda m, t: mlm_augment(["ok", 3], m, t),
    lambda m, t: mlm_augment(["ok"], m, t, replace_prob=1.5),
    lambda m, t: mlm_augment(["ok"], m, t, n_per_text=0),
    lambda m, t: mlm_augment(["ok"], m, t, top_k=0),
    lambda m, t: mlm_augment(["ok"], object(), t),
    lambda m, t: masked_refill(["ok"], m, t, mask_prob=0.0),
    lambda m, t: masked_refill(["ok"], m, t, temperature=0),
    lambda m, t: masked_refill(["ok"], m, t, top_k=-1),
    lambda m, t: train_mlm_head(m.bert, ["the cat sat"], t),
    lambda m, t: train_mlm_head(m, ["the cat sat"], t, epochs=0),
    lambda m, t: train_mlm_head(m, "the cat sat", t),
])
def test_bad_arguments_are_one_line_errors(tok, call):
    with pytest.raises(DistillError) as err:
        call(tiny_mlm(tok), tok)
    assert "\n" not in str(err.value) and len(str(err.value)) <= 300
