"""Seq2seq distillation (Kim & Rush 2016): G2P data, beam search, the word- and sequence-level methods."""
import itertools
import shutil

import pytest
import torch

from distill.engine import TrainConfig
from distill.errors import DistillError
from distill.losses.kd import kd_loss
from distill.methods import METHODS
from distill.methods.registry import METHOD_INPUTS
from distill.seq2seq import BeamTargets, beam_decode, beam_search, g2p_scores, greedy, next_token_log_probs
from distill.stages import as_stages, fit_stages
from distill.tasks import get_task
from distill.zoo.datasets import DataMissing
from distill.zoo.g2p import EOS, G2PError, pair_item, phonemize, words_list
from distill.zoo.seq2seq import Seq2SeqTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


SEQ2SEQ_METHODS = sorted(name for name, needs in METHOD_INPUTS.items() if needs == "seq2seq")


def tiny(d=32, layers=1, vocab=12, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return Seq2SeqTransformer(vocab, vocab, d_model=d, heads=2, encoder_layers=layers, decoder_layers=layers,
                              dropout=dropout, max_len=16)


def copy_items(n, seed=0, vocab=12):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        length = int(torch.randint(2, 5, (), generator=g))
        tokens = torch.randint(3, vocab, (length,), generator=g).tolist()
        items.append(pair_item(tokens, tokens))
    return items


def train(student, teacher, method, items, epochs, lr=1e-2, **options):
    task = get_task("tokens", shift=False, pad_token_id=0)
    return fit_stages(student, teacher, as_stages(METHODS[method](**options)), items, None, task=task,
                      say=lambda *_: None,
                      config=TrainConfig(epochs=epochs, batch_size=32, lr=lr, progress=False, seed=0))["history"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_phonemize_a_handful_of_words():
    words = ["cat", "hello", "through", "dog", "cat"]
    out = phonemize(words, chunk=2)
    assert len(out) == 5 and all(out) and out[0] == out[4]
    assert out[0] == ["k", "'a", "t"]
    assert phonemize(words) == out  # deterministic, chunking does not matter
    with pytest.raises(G2PError, match="lower-case alphabetic"):
        phonemize(["Cat"])


def test_missing_word_list_is_one_line(tmp_path):
    with pytest.raises(DataMissing) as err:
        words_list(tmp_path / "nope")
    assert "apt-get install wamerican" in str(err.value) and "\n" not in str(err.value)


@torch.no_grad()
def exhaustive(log_probs, max_len, vocab, alpha):
    """Every target of at most max_len tokens (</s> ending it, or max_len tokens), best normalised score."""
    best = None
    for n in range(max_len + 1):
        for seq in itertools.product(range(3, vocab), repeat=n):
            ended = n < max_len
            full = list(seq) + ([EOS] if ended else [])
            total = 0.0
            for t in range(len(full)):
                prefix = torch.tensor([[1, *full[:t]]])
                total += float(log_probs(prefix, torch.tensor([0]))[0, full[t]])
            score = total / len(full) ** alpha
            if best is None or score > best[1]:
                best = (list(seq), score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_equals_exhaustive_search(alpha):
    model = tiny(vocab=5, seed=3).eval()
    source = torch.tensor([[3, 4, 3], [4, 4, 0]])
    found = beam_decode(model, source, beam=32, max_len=3, length_penalty=alpha)
    for b in range(2):
        f = next_token_log_probs(model, source[b:b + 1])
        seq, score = exhaustive(f, 3, 5, alpha)
        assert found[b][0][0] == seq and found[b][0][1] == pytest.approx(score, abs=1e-5)
        assert [h[1] for h in found[b]] == sorted((h[1] for h in found[b]), reverse=True)


def test_beam_of_one_is_greedy_and_batching_changes_nothing():
    model = tiny(seed=1).eval()
    source = torch.randint(3, 12, (6, 4), generator=torch.Generator().manual_seed(0))
    ones = beam_decode(model, source, beam=1, max_len=6)
    assert [h[0][0] for h in ones] == greedy(model, source, 6)
    fives = beam_decode(model, source, beam=5, max_len=6)
    alone = beam_decode(model, source[2:3], beam=5, max_len=6)[0]
    assert [h[0] for h in fives[2]] == [h[0] for h in alone]
    assert [h[1] for h in fives[2]] == pytest.approx([h[1] for h in alone], abs=1e-6)  # float noise of batching


@torch.no_grad()
def test_incremental_decoding_equals_the_whole_prefix_and_decodes_the_same():
    model = tiny(d=32, layers=2, seed=4).eval()
    g = torch.Generator().manual_seed(1)
    source = torch.randint(3, 12, (5, 6), generator=g)
    source[1, 4:] = 0  # a padded source
    prefix = torch.cat([torch.ones(5, 1, dtype=torch.long), torch.randint(3, 12, (5, 7), generator=g)], 1)
    memory, padding = model.encode(source)
    full = model.decode(memory, padding, prefix)
    cache = model.start_decoding(memory, padding)
    steps = torch.stack([model.decode_step(cache, prefix[:, t]) for t in range(prefix.shape[1])], 1)
    assert torch.allclose(steps, full, atol=1e-5)

    class Whole(torch.nn.Module):  # the same model without incremental decoding: the prefix re-run every step
        def __init__(self, inner):
            super().__init__()
            self.inner, self.max_len = inner, inner.max_len

        def encode(self, ids):
            return self.inner.encode(ids)

        def decode(self, *args):
            return self.inner.decode(*args)

    whole = Whole(model)
    assert greedy(model, source, 8) == greedy(whole, source, 8)
    fast, slow = beam_decode(model, source, beam=4, max_len=8), beam_decode(whole, source, beam=4, max_len=8)
    for a, b in zip(fast, slow):
        assert [h[0] for h in a] == [h[0] for h in b]
        assert [h[1] for h in a] == pytest.approx([h[1] for h in b], abs=1e-5)


def test_masked_token_kd_is_zero_when_teacher_equals_student():
    logits = torch.randn(3, 5, 7)
    labels = torch.tensor([[4, 5, 2, -100, -100], [3, 2, -100, -100, -100], [5, 6, 7, 8, 2]])
    other = logits.clone()
    other[labels == -100] = torch.randn(int((labels == -100).sum()), 7)  # padding positions differ: not counted
    assert float(kd_loss(logits, other, 1.0, mask=labels)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_loss(logits, torch.randn(3, 5, 7), 1.0, mask=labels)) > 0


def test_seq2seq_methods_are_their_own_input_kind():
    assert SEQ2SEQ_METHODS == ["seq_inter", "seq_level_kd", "word_kd", "word_seq_kd"]


@pytest.fixture(scope="module")
def copy_teacher():
    teacher = tiny(d=48, seed=0)
    train(teacher, None, "scratch", copy_items(384), epochs=12)
    assert g2p_scores(teacher, copy_items(64, seed=9))["word_acc"] > 90
    return teacher.eval()


@pytest.mark.parametrize("method", SEQ2SEQ_METHODS)
def test_each_method_learns_the_copy_task(copy_teacher, method):
    student = tiny(d=32, seed=1)
    before = g2p_scores(student, copy_items(64, seed=9))["word_acc"]
    history = train(student, copy_teacher, method, copy_items(384), epochs=8)
    after = g2p_scores(student, copy_items(64, seed=9), beam=2)
    assert before < 10 and after["word_acc"] > 70, (method, before, after)
    assert history[-1]["train/loss"] < history[0]["train/loss"]


def test_interpolation_picks_the_hypothesis_closest_to_the_reference():
    targets = BeamTargets(interpolate=True)
    hyps = [([3, 4, 5], -0.1), ([3, 4, 6], -0.5), ([3, 9], -0.2)]
    assert targets.choose(hyps, [3, 4, 6]) == [3, 4, 6]
    assert BeamTargets().choose(hyps, [3, 4, 6]) == [3, 4, 5]


def test_transfer_set_is_made_once_and_round_trips(copy_teacher, tmp_path):
    task = get_task("tokens", shift=False, pad_token_id=0)
    items = copy_items(40, seed=5)
    targets = BeamTargets()
    targets.attach(None, copy_teacher)
    targets.fill(items, task.collate, batch_size=16)
    assert len(targets.store) == 40
    targets.save(tmp_path / "t.npz")
    loaded = BeamTargets().load(tmp_path / "t.npz")
    assert loaded.store == targets.store
    batch = task.collate(items[:4])
    out = loaded(batch)  # no teacher needed: every sample is stored
    assert out["label"].shape[0] == 4 and bool((out["label"] == EOS).sum(1).eq(1).all())


def test_errors_are_one_line():
    with pytest.raises(DistillError) as err:
        beam_search(lambda p, r: torch.zeros(len(p), 4), 2, beam=0)
    assert "beam must be a positive integer" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DistillError, match="needs a live teacher"):
        BeamTargets()(get_task("tokens", shift=False, pad_token_id=0).collate(copy_items(2)))
    with pytest.raises(ValueError, match="word_kd must be a number"):
        METHODS["seq_level_kd"](word_kd=2)
    with pytest.raises(DistillError, match="max_len"):
        tiny()(torch.ones(1, 20, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    from distill.seq2seq_bench import run_seq2seq_benchmark

    with pytest.raises(DistillError, match="unknown arms .'nope'.; arms: scratch"):
        run_seq2seq_benchmark(only=["nope"])


def test_benchmark_is_registered_and_its_table_reads_rows():
    from distill.cli import ARM_BENCHMARKS
    from distill.seq2seq_bench import ARMS, format_table

    assert ARM_BENCHMARKS["seq2seq"] == ("distill.seq2seq_bench", "run_seq2seq_benchmark")
    assert {method for method, _ in ARMS.values()} - {"parallel"} <= set(METHODS)
    speed = {"greedy_wps": 100.0, "beam_wps": 20.0}
    row = {"greedy_per": 10.0, "beam_per": 9.0, "greedy_acc": 50.0, "beam_acc": 55.0, "params": 1000, **speed}
    table = format_table({"teacher": row, "words": {"train": 10, "val": 1, "test": 2},
                          "rows": [{**row, "arm": "seq-kd", "seed": s} for s in range(2)]})
    assert "| student | seq-kd | 1,000 | 10.00 ± 0.00 | 9.00 ± 0.00 |" in table


@pytest.mark.parametrize("on_teacher", [False, True])
def test_parallel_student_learns_the_copy_task_through_the_engine(copy_teacher, on_teacher):
    from distill.seq2seq import ctc_greedy, parallel_items, parallel_task
    from distill.zoo.seq2seq import ParallelCTC

    torch.manual_seed(0)
    student = ParallelCTC(12, 12, d_model=32, heads=2, layers=2, dropout=0.0)
    items, held_out = copy_items(384), copy_items(64, seed=9)
    targets = None
    if on_teacher:
        transfer = BeamTargets()
        transfer.attach(None, copy_teacher)
        targets = transfer.fill(items, get_task("tokens", shift=False, pad_token_id=0).collate).store
    task = parallel_task(12, student.upsample)
    history = fit_stages(student, None, as_stages(METHODS["ctc"]()), parallel_items(items, targets),
                         parallel_items(held_out), task=task, say=lambda *_: None,
                         config=TrainConfig(epochs=15, batch_size=64, lr=3e-3, progress=False, seed=0))["history"]
    assert history[-1]["train/loss"] < history[0]["train/loss"] / 2
    scored = g2p_scores(student, held_out)
    assert scored["word_acc"] > 60
    # the task's CER is the phoneme error rate and its WER 100 - word accuracy (one symbol, one character)
    assert history[-1]["val/cer"] == pytest.approx(scored["per"])
    assert history[-1]["val/wer"] == pytest.approx(100 - scored["word_acc"])
    source = torch.tensor([[3, 3, 4, 0]])
    assert all(s != 0 for s in ctc_greedy(student, source)[0])


def test_the_ctc_task_counts_a_token_sources_frames():
    from distill.seq2seq import parallel_items, parallel_task

    task = parallel_task(12, frames_per_token=2)
    batch = task.collate(parallel_items([pair_item([3, 4, 5], [6]), pair_item([7], [8, 9])]))
    assert batch["lengths"].tolist() == [6, 2]
    assert batch["mask"].shape == (2, 6) and batch["mask"].sum(1).tolist() == [6, 2]
    assert batch["label"].tolist() == [[6, -100], [8, 9]]
    with pytest.raises(DistillError, match="frames_per_token"):
        get_task("ctc", frames_per_token=0)


def test_sampling_stops_once_every_row_has_ended():
    from distill.generation import sample

    calls = []

    def step(model, ids, past, seen):
        calls.append(seen)
        logits = torch.full((len(ids), 4), -9.0)
        logits[:, EOS] = 9.0
        return logits, None

    seqs, alive = sample(torch.nn.Identity(), torch.ones(2, 1, dtype=torch.long), 6, seeds=[0, 1], temperature=0, eos_token_id=EOS,
                         step=step)
    assert len(calls) == 1 and seqs[:, 1:].eq(EOS).all() and alive.tolist() == [[True] + [False] * 5] * 2
