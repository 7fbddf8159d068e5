"""Transformer taps (hidden states, attention maps, pooled vectors) on unmodified Hugging Face models, the layer
maps, and the TinyBERT / DistilBERT / PKD / RAIL-KD / CILDA losses checked against hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from distill import Distiller, Term, seed_everything
from distill.losses.transformer import (RailKD, attention_mse, cilda_loss, cosine_hidden, hidden_mse, pkd_loss,
                                        random_layer_map)
from distill.taps import TapError, TapRecorder
from distill.tasks import get_task
from distill.teacher import LiveTeacher
from distill.terms import LOSSES
from distill.transformer import LayerMapError, layer_map, layer_terms, rail_kd_term

transformers = pytest.importorskip("transformers")


def tiny_bert(layers=2, hidden=32, seed=0, heads=4):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return transformers.BertForSequenceClassification(config).eval()


def padded_batch(lengths, width=None, seed=0, pad=0):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(1, 100, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, pad), "attention_mask": mask}


ALL_TAPS = ["embeddings", "hidden[0]", "hidden[1]", "hidden[3]", "hidden[-1]", "cls[2]", "mean[-1]",
            "attention[1]", "attention[-1]", "attention_scores[2]"]


# ------------------------------------------------------------------------------------------------ taps
def test_taps_equal_hugging_face_outputs():
    model = tiny_bert(layers=3)
    inputs = padded_batch([7, 4, 2])
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    model(**inputs, output_hidden_states=True, output_attentions=True)
    before = hooks()  # transformers adds hooks of its own on the first call
    recorder = TapRecorder(model, ALL_TAPS)
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    v = recorder.collect(out)
    hs, att = out.hidden_states, out.attentions
    assert torch.equal(v["embeddings"], hs[0]) and torch.equal(v["hidden[0]"], hs[0])
    assert torch.equal(v["hidden[1]"], hs[1]) and torch.equal(v["hidden[3]"], hs[3])
    assert torch.equal(v["hidden[-1]"], hs[3])
    assert torch.equal(v["cls[2]"], hs[2][:, 0])
    mask = inputs["attention_mask"]
    means = torch.stack([hs[3][n, : int(mask[n].sum())].mean(0) for n in range(3)])
    torch.testing.assert_close(v["mean[-1]"], means)
    torch.testing.assert_close(v["attention[1]"], att[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(v["attention[-1]"], att[2], rtol=0, atol=1e-6)
    assert (v["attention[1]"][1, :, :, 4:] == 0).all()  # padded keys get no attention
    recorder.remove()
    assert hooks() == before


def test_attention_scores_are_qk_over_sqrt_d_from_the_weights_before_the_mask():
    model = tiny_bert(layers=2)
    inputs = padded_batch([6, 3])
    recorder = TapRecorder(model, ["attention_scores[2]"])
    out = model(**inputs, output_hidden_states=True)
    scores = recorder.collect(out)["attention_scores[2]"]
    h = out.hidden_states[1]  # the input of layer 2
    attn = model.bert.encoder.layer[1].attention.self
    q = (h @ attn.query.weight.T + attn.query.bias).reshape(2, 6, 4, 8).permute(0, 2, 1, 3)
    k = (h @ attn.key.weight.T + attn.key.bias).reshape(2, 6, 4, 8).permute(0, 2, 1, 3)
    expected = torch.einsum("nhqd,nhkd->nhqk", q, k) / math.sqrt(8)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores[1, :, :, 3:].abs().min() > 0  # not masked: the mask is not part of the scores


def test_taps_work_for_a_teacher_under_inference_mode_and_positional_inputs():
    model = tiny_bert(layers=2)
    inputs = padded_batch([5, 2])
    teacher = LiveTeacher(model, ["hidden[-1]", "mean[1]", "attention[2]"])
    values = teacher({"input": inputs})
    assert not any(v.is_inference() for v in values.values())
    recorder = TapRecorder(model, ["mean[1]"])
    with torch.no_grad():
        positional = recorder.collect(model(inputs["input_ids"], inputs["attention_mask"]))["mean[1]"]
    torch.testing.assert_close(positional, values["mean[1]"])


def test_a_wrong_index_is_one_line_with_the_valid_range():
    model = tiny_bert(layers=2)
    with pytest.raises(TapError, match=r"hidden\[0\]\.\.hidden\[2\]") as err:
        TapRecorder(model, ["hidden[3]"])
    assert "\n" not in str(err.value)
    with pytest.raises(TapError, match=r"attention\[1\]\.\.attention\[2\]"):
        TapRecorder(model, ["attention[0]"])
    with pytest.raises(TapError, match=r"-3\.\.-1"):
        TapRecorder(model, ["mean[-4]"])
    TapRecorder(model, ["hidden[-3]", "attention_scores[-2]"]).remove()  # the lowest negative indices are valid


def test_distilbert_layers_and_attention_are_found_too():
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=32, attn_implementation="eager")
    model = transformers.DistilBertModel(config).eval()
    inputs = padded_batch([6, 3])
    recorder = TapRecorder(model, ["hidden[0]", "hidden[2]", "attention[2]"])
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    v = recorder.collect(out)
    assert torch.equal(v["hidden[0]"], out.hidden_states[0]) and torch.equal(v["hidden[2]"], out.hidden_states[2])
    torch.testing.assert_close(v["attention[2]"], out.attentions[1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- padding excluded
def test_padding_changes_no_loss():
    student, teacher = tiny_bert(layers=2, seed=1), tiny_bert(layers=4, seed=2)
    terms = [Term("attention_mse", student="attention_scores[2]", teacher="attention_scores[4]"),
             Term("attention_mse", student="attention[1]", teacher="attention[2]", name="probs"),
             Term("hidden_mse", student="hidden[1]", teacher="hidden[2]", connector=None),
             Term("embedding_mse", connector=None), Term("cosine_hidden", connector=None),
             Term("pkd", student="cls[1]", teacher="cls[2]", connector=None),
             Term("cilda", connector=None), rail_kd_term(2, 4)]
    rail = terms[-1]
    s_taps = [tap for t in terms for tap in t.student_taps]
    t_taps = [tap for t in terms for tap in t.teacher_taps]
    s_rec, t_rec = TapRecorder(student, s_taps), TapRecorder(teacher, t_taps)

    def losses(inputs):
        with torch.no_grad():
            s, t = s_rec.collect(student(**inputs)), t_rec.collect(teacher(**inputs))
        return [float(term(s, t, {"input": inputs, "epoch": 1}).detach()) for term in terms]

    short = padded_batch([6, 3, 5], seed=3)
    longer = padded_batch([6, 3, 5], width=10, seed=3)
    longer["input_ids"][:, :6] = short["input_ids"]  # the same real tokens, more padding ...
    longer["input_ids"][longer["attention_mask"] == 0] = 7  # ... and another pad token
    before = losses(short)
    assert rail.fn.projections is not None
    after = losses(longer)
    for term, a, b in zip(terms, before, after):
        assert a > 0 and a == pytest.approx(b, rel=1e-4, abs=1e-6), term.name
    # without the mask, padding would count
    unmasked = Term("hidden_mse", student="hidden[1]", teacher="hidden[2]", connector=None)
    with torch.no_grad():
        s, t = s_rec.collect(student(**longer)), t_rec.collect(teacher(**longer))
    assert float(unmasked(s, t, {"input": {"input_ids": longer["input_ids"]}})) != pytest.approx(before[2], rel=1e-3)


# ----------------------------------------------------------------------------------- losses by hand
def _mask(rows):
    return torch.tensor(rows)


def test_attention_mse_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    mask = _mask([[1, 1, 1, 0], [1, 1, 0, 0]])
    per_head = []
    for h in range(3):
        total, count = 0.0, 0
        for n in range(2):
            for q in range(4):
                for k in range(4):
                    if mask[n, q] and mask[n, k]:
                        total += float(s[n, h, q, k] - t[n, h, q, k]) ** 2
                        count += 1
        per_head.append(total / count)
    assert float(attention_mse(s, t, mask)) == pytest.approx(sum(per_head) / 3, rel=1e-5)
    assert float(attention_mse(s, t)) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="heads"):
        attention_mse(s, t[:, :2])


def test_hidden_mse_and_cosine_by_hand():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    mask = _mask([[1, 1, 0], [1, 0, 0]])
    real = [(0, 0), (0, 1), (1, 0)]
    mse = sum(float(((s[n, i] - t[n, i]) ** 2).sum()) for n, i in real) / (len(real) * 5)
    assert float(hidden_mse(s, t, mask)) == pytest.approx(mse, rel=1e-5)
    cos = [float(s[n, i] @ t[n, i]) / (float(s[n, i].norm()) * float(t[n, i].norm())) for n, i in real]
    assert float(cosine_hidden(s, t, mask)) == pytest.approx(sum(1 - c for c in cos) / len(real), rel=1e-5)
    target = torch.ones(3)
    pairs = torch.stack([s[n, i] for n, i in real]), torch.stack([t[n, i] for n, i in real])
    assert float(cosine_hidden(s, t, mask)) == pytest.approx(float(F.cosine_embedding_loss(*pairs, target)), rel=1e-5)
    with pytest.raises(ValueError, match="attention_mask"):
        hidden_mse(s, t, mask[:, :2])
    assert LOSSES["embedding_mse"][0] is hidden_mse and LOSSES["embedding_mse"][1]["student"] == "hidden[0]"


def test_pkd_by_hand():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(3, 4, generator=g) for _ in range(2)]
    t = [torch.randn(3, 4, generator=g) for _ in range(2)]
    expected = 0.0
    for sl, tl in zip(s, t):
        for n in range(3):
            expected += sum((float(sl[n, d]) / float(sl[n].norm()) - float(tl[n, d]) / float(tl[n].norm())) ** 2
                            for d in range(4)) / 3
    assert float(pkd_loss(s, t)) == pytest.approx(expected, rel=1e-5)
    assert float(pkd_loss(s[0], t[0]) + pkd_loss(s[1], t[1])) == pytest.approx(expected, rel=1e-5)


def test_cilda_by_hand():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    tau = 0.5
    expected = 0.0
    for i in range(4):
        sims = [float(s[i] @ t[j]) / (float(s[i].norm()) * float(t[j].norm())) / tau for j in range(4)]
        expected += -(sims[i] - math.log(sum(math.exp(x) for x in sims)))
    assert float(cilda_loss(s, t, temperature=tau)) == pytest.approx(expected / 4, rel=1e-5)
    assert float(cilda_loss(t, t, temperature=0.01)) < 1e-3  # each sample matches its own teacher vector
    assert LOSSES["cilda"][1]["gather"] is True


def test_rail_kd_redraws_its_map_each_epoch_and_matches_by_hand():
    maps = [RailKD(seed=5).layers(2, 6, epoch) for epoch in range(6)]
    assert maps[0] == RailKD(seed=5).layers(2, 6, 0)  # the same on every process and after a resume
    assert len(set(map(tuple, maps))) > 1
    for pairs in maps:
        assert [m for m, _ in pairs] == [1, 2] and pairs[0][1] < pairs[1][1] <= 6
    g = torch.Generator().manual_seed(4)
    s = [torch.randn(3, 4, generator=g) for _ in range(2)]
    t = [torch.randn(3, 5, generator=g) for _ in range(6)]
    for mode in ("layer", "concat"):
        loss = RailKD(mode=mode, seed=5)
        value = loss(s, t, epoch=3)
        chosen = [t[n - 1] for _, n in loss.layers(2, 6, 3)]
        with torch.no_grad():
            if mode == "layer":
                projected = [p(x) for p, x in zip(loss.projections, s)]
            else:
                projected, chosen = [loss.projections[0](torch.cat(s, 1))], [torch.cat(chosen, 1)]
        expected = sum(float(((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).sum(1).mean())
                       for a, b in zip(projected, chosen))
        assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    assert sorted(n for _, n in random_layer_map(3, 3)) == [1, 2, 3]


def test_soft_cross_entropy_is_kd_over_t_squared_plus_the_teacher_entropy():
    g = torch.Generator().manual_seed(5)
    zs, zt, temp = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), 2.0
    p_t = torch.softmax(zt / temp, 1)
    soft_ce = float(-(p_t * torch.log_softmax(zs / temp, 1)).sum(1).mean())
    entropy = float(-(p_t * p_t.log()).sum(1).mean())
    kd = float(LOSSES["kd"][0](zs, zt, temperature=temp))
    assert soft_ce == pytest.approx(kd / temp**2 + entropy, rel=1e-5)


# ----------------------------------------------------------------------------------------- layer maps
@pytest.mark.parametrize("s, t, strategy, teacher", [
    (2, 4, "uniform", [2, 4]), (3, 6, "uniform", [2, 4, 6]), (2, 6, "uniform", [3, 6]),
    (4, 12, "uniform", [3, 6, 9, 12]),
    (4, 6, "uniform", [2, 3, 5, 6]), (4, 6, "skip", [1, 2, 3, 4]), (4, 12, "skip", [3, 6, 9, 12]),
    (3, 6, "last", [4, 5, 6]), (2, 4, "top", [3, 4]), (4, 12, "bottom", [1, 2, 3, 4]),
    (2, 4, [1, 3], [1, 3]), (2, 4, [(1, 4), (2, 2)], [4, 2]),
])
def test_layer_maps(s, t, strategy, teacher):
    assert layer_map(s, t, strategy) == list(zip(range(1, s + 1), teacher))


@pytest.mark.parametrize("args, match", [
    ((4, 2, "uniform"), "more layers"), ((2, 4, "middle"), "unknown strategy"), ((0, 4), "positive"),
    ((2, 4, [1, 5]), "teacher layers 1..4"), ((2, 4, []), "explicit"),
])
def test_bad_layer_maps_are_one_line(args, match):
    with pytest.raises(LayerMapError, match=match) as err:
        layer_map(*args)
    assert "\n" not in str(err.value)


def test_layer_terms_make_one_term_per_pair():
    terms = layer_terms("hidden_mse", 2, 4) + layer_terms("attention_mse", 2, 4, weight=0.5)
    assert [(t.name, t.student, t.teacher) for t in terms] == [
        ("hidden_mse_s1_t2", "hidden[1]", "hidden[2]"), ("hidden_mse_s2_t4", "hidden[2]", "hidden[4]"),
        ("attention_mse_s1_t2", "attention_scores[1]", "attention_scores[2]"),
        ("attention_mse_s2_t4", "attention_scores[2]", "attention_scores[4]")]
    assert terms[0].connector == "auto" and terms[2].weight == 0.5
    assert [t.teacher for t in layer_terms("pkd", 6, 12, "skip")[:-1]] == [f"cls[{i}]" for i in (2, 4, 6, 8, 10)]
    assert layer_terms("cosine_hidden", 1, 2, tap="mean")[0].student == "mean[1]"
    with pytest.raises(LayerMapError, match="tap="):
        layer_terms("kd", 2, 4)


# ----------------------------------------------------------------------------------------- end to end
class Items(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            length = int(torch.randint(4, 11, (1,), generator=g))
            ids = torch.randint(2, 100, (length,), generator=g)
            ids[0] = 1
            self.items.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": i % 2})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_tinybert_terms_lower_their_losses_end_to_end():
    seed_everything(0)
    teacher, student = tiny_bert(layers=4, hidden=32, seed=0), tiny_bert(layers=2, hidden=16, seed=1, heads=4)
    terms = layer_terms("hidden_mse", 2, 4) + layer_terms("attention_mse", 2, 4)
    epochs = set()

    def epoch_seen(student_logits, epoch=None):  # the loop hands a loss taking `epoch` the epoch
        epochs.add(epoch)
        return student_logits.sum() * 0

    d = Distiller(student, teacher, terms + [Term(epoch_seen, 0.0, teacher=None)],
                  task=get_task("classification", pad_token_id=0), epochs=4, lr=3e-3,
                  batch_size=16, progress=False)
    history = d.fit(Items(48, seed=0))
    for term in terms:
        key = f"train/{term.name}"
        assert history[-1][key] < 0.8 * history[0][key], (key, history[0][key], history[-1][key])
    assert "hidden_mse_s1_t2" in d.model.connectors  # widths 16 -> 32: a learned W_h
    assert epochs == {None, 0, 1, 2, 3}  # None: the set-up batch
