"""Speech recognition with CTC: features, decoding, the CTC distillation losses, the task, the data, a toy model."""
import itertools
import json
import math
import shutil
import time

import numpy as np
import pytest
import torch

from distill.losses.ctc import (Lexicon, beam_decode, ctc_align, ctc_frame_kd, ctc_loss, ctc_sequence_kd,
                                greedy_decode, prefix_beam_search)
from distill.methods import METHODS
from distill.tasks import TaskError, edit_distance, get_task
from distill.zoo import speech

pytestmark = pytest.mark.usefixtures("one_thread")  # small recurrent models: a second thread only waits
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)")
needs_asterisk = pytest.mark.skipif(not (speech.ASTERISK_TEXT.is_file() and speech.ASTERISK_WAV.is_dir()),
                                    reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")


# ------------------------------------------------------------------------------------------------ features
def test_log_mel_of_a_tone_matches_a_hand_computation():
    rate, freq = 8000, 1000.0
    samples = torch.sin(2 * math.pi * freq * torch.arange(rate // 4) / rate)
    out = speech.log_mel(samples, rate, normalise=False)
    win, hop, n_fft = 200, 80, 256  # 25 ms, 10 ms at 8 kHz; the window padded to a power of two
    assert out.shape == (1 + (len(samples) - win) // hop, speech.N_MELS)
    # frame 3 by hand: periodic Hann window, a DFT as explicit sums, power, the triangles of the mel filters
    x = samples[3 * hop: 3 * hop + win].double().numpy() * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win))
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(win)[None, :]
    power = (x * np.cos(2 * np.pi * k * n / n_fft)).sum(1) ** 2 + (x * np.sin(2 * np.pi * k * n / n_fft)).sum(1) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(20), mel(3800), speech.N_MELS + 2) / 2595) - 1)
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    energies = []
    for m in range(speech.N_MELS):
        lo, mid, hi = edges[m: m + 3]
        weights = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
        energies.append(np.log((weights * power).sum() + 1e-6))
    assert np.allclose(out[3].numpy(), energies, atol=1e-3)
    # the loudest band is the one whose centre is nearest the tone
    assert int(out[3].argmax()) == int(np.abs(edges[1:-1] - freq).argmin())
    normalised = speech.log_mel(samples, rate)
    assert torch.allclose(normalised.mean(0), torch.zeros(speech.N_MELS), atol=1e-3)


def test_stacked_features_halve_the_frame_rate():
    feats = torch.arange(14.0).reshape(7, 2)
    assert speech.stack_frames(feats, 2).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_feature_errors_say_what_to_give():
    with pytest.raises(speech.SpeechError, match="one mono signal"):
        speech.log_mel(torch.zeros(2, 800), 8000)
    with pytest.raises(speech.SpeechError, match="fewer than one"):
        speech.log_mel(torch.zeros(10), 8000)
    with pytest.raises(speech.SpeechError, match="not a PCM WAV"):
        speech.read_wav(b"not a wav file at all")


def test_normalize_spells_digits_and_drops_punctuation():
    assert speech.normalize("Press 1, then #!  It's OK.") == "press one then it's ok"


# ------------------------------------------------------------------------------------------------ decoding
def _posteriors(rows):
    return torch.tensor(rows).log()


def test_greedy_decoding_of_a_hand_made_posterior():
    # frames:  a  a  blank  a  b  b  (padding: b)
    p = torch.full((7, 3), 0.05)
    for t, s in enumerate([1, 1, 0, 1, 2, 2, 2]):
        p[t, s] = 0.9
    assert greedy_decode(p.log()) == [[1, 1, 2]]
    assert greedy_decode(p.log()[None], torch.tensor([4])) == [[1, 1]]  # the real frames only


def test_beam_search_finds_what_greedy_misses():
    # two frames, blank 0.55 each: the best path is blank-blank (""), but "a" has three paths, 0.6975 in all
    lp = _posteriors([[0.55, 0.45], [0.55, 0.45]])
    assert greedy_decode(lp) == [[]]
    assert beam_decode(lp[None]) == [[1]]
    (best, score), (second, score2) = prefix_beam_search(lp, beam=4, n_best=2)
    assert best == (1,) and math.isclose(math.exp(score), 0.6975, rel_tol=1e-6)
    assert second == () and math.isclose(math.exp(score2), 0.3025, rel_tol=1e-6)


def test_prefix_beam_search_sums_every_alignment():
    torch.manual_seed(0)
    lp = torch.randn(4, 3).log_softmax(-1)
    exact: dict[tuple, float] = {}
    for path in itertools.product(range(3), repeat=4):
        collapsed = tuple(s for s, _ in itertools.groupby(path) if s != 0)
        exact[collapsed] = exact.get(collapsed, 0.0) + math.exp(sum(float(lp[t, s]) for t, s in enumerate(path)))
    found = prefix_beam_search(lp, beam=100, n_best=100, prune=1e-12)
    assert len(found) == len(exact)
    for symbols, score in found:
        assert math.isclose(math.exp(score), exact[symbols], rel_tol=1e-5)


@pytest.mark.parametrize("target", [[1, 2], [1, 1], [2, 1, 2]])
def test_forced_alignment_is_the_best_path_of_the_target(target):
    torch.manual_seed(len(target))
    logits = torch.randn(6, 3) * 2
    lp = logits.log_softmax(-1)
    paths = [p for p in itertools.product(range(3), repeat=6)
             if [s for s, _ in itertools.groupby(p) if s != 0] == target]
    best = max(paths, key=lambda p: sum(float(lp[t, s]) for t, s in enumerate(p)))
    # the spans of the best path by hand: run j of non-blank frames is target symbol j
    runs = [[t for t, _ in group] for key, group in itertools.groupby(enumerate(best), lambda x: x[1]) if key != 0]
    assert ctc_align(logits, target).tolist() == [[run[0], run[-1]] for run in runs]


def test_forced_alignment_follows_a_sure_posterior_and_refuses_what_cannot_fit():
    p = torch.full((7, 3), 0.05)
    for t, s in enumerate([0, 1, 1, 0, 0, 2, 0]):
        p[t, s] = 0.9
    assert ctc_align(p.log(), [1, 2]).tolist() == [[1, 2], [5, 5]]
    # two frames: "a a" needs a blank between the two a's
    with pytest.raises(ValueError, match="cannot hold"):
        ctc_align(torch.zeros(2, 3), [1, 1])
    with pytest.raises(ValueError, match="symbol ids"):
        ctc_align(torch.zeros(4, 3), [0, 1])


def _every_sequence(lp: torch.Tensor) -> dict[tuple, float]:
    """p(symbols | x) of every collapsed symbol sequence, summed over all CTC paths (blank 0) by enumeration."""
    exact: dict[tuple, float] = {}
    for path in itertools.product(range(lp.shape[1]), repeat=len(lp)):
        collapsed = tuple(s for s, _ in itertools.groupby(path) if s != 0)
        exact[collapsed] = exact.get(collapsed, 0.0) + math.exp(sum(float(lp[t, s]) for t, s in enumerate(path)))
    return exact


def test_lexicon_constrained_search_equals_the_best_vocabulary_sequence():
    # symbols: 1 space, 2 a, 3 b, 4 c; the lexicon {"ab", "c"}. A constrained search keeps exactly the
    # probabilities of the vocabulary sequences, so with a wide beam its best is the most likely of them
    torch.manual_seed(1)
    lp = torch.randn(6, 5).mul(2).log_softmax(-1)
    lexicon = Lexicon([[2, 3], [4]], separator=1)
    exact = _every_sequence(lp)
    words = {(2, 3), (4,)}
    legal = {k: v for k, v in exact.items() if not k or all(tuple(w) in words for w in _split(k, 1))}
    best = max(legal, key=legal.get)
    (found, score), = prefix_beam_search(lp, beam=500, prune=1e-12, lexicon=lexicon)
    assert found == best and math.isclose(math.exp(score), legal[best], rel_tol=1e-5)
    assert max(exact, key=exact.get) not in legal  # the unconstrained best is no vocabulary sequence here
    silence = torch.tensor([[0.9, 0.02, 0.02, 0.02, 0.04]] * 4).log()  # blank everywhere: no words, not "c"
    assert prefix_beam_search(silence, lexicon=lexicon)[0][0] == ()


def test_word_score_ranks_vocabulary_sequences_by_probability_and_word_count():
    # the lexicon {"a", "b", "ab"} (1 space, 2 a, 3 b): "a b" and "ab" spell the same letters as one word or two.
    # With a wide beam the best hypothesis maximises log p + beta * words over the vocabulary sequences
    torch.manual_seed(3)
    lp = torch.randn(6, 4).mul(2).log_softmax(-1)
    lexicon = Lexicon([[2], [3], [2, 3]], separator=1)
    vocabulary = {(2,), (3,), (2, 3)}
    legal = {k: v for k, v in _every_sequence(lp).items()
             if not k or all(tuple(w) in vocabulary for w in _split(k, 1))}
    found = {}
    for beta in (-6.0, 0.0, 6.0):
        def score(k):
            return math.log(legal[k]) + beta * len([w for w in _split(k, 1) if w])
        (found[beta], logp), = prefix_beam_search(lp, beam=500, prune=1e-12, lexicon=lexicon, word_score=beta)
        assert found[beta] == max(legal, key=score)
        assert math.isclose(math.exp(logp), legal[found[beta]], rel_tol=1e-5)  # the score is log p alone
    words = {beta: len([w for w in _split(k, 1) if w]) for beta, k in found.items()}
    assert words[-6.0] < words[0.0] < words[6.0]  # the term moves the answer both ways here
    with pytest.raises(ValueError, match="needs a lexicon"):
        prefix_beam_search(lp, word_score=-1.0)


def _split(symbols, separator):
    words, cur = [], []
    for s in symbols:
        if s == separator:
            words.append(cur)
            cur = []
        else:
            cur.append(s)
    return words + [cur]


def test_the_ctc_task_decodes_into_its_words_and_refuses_bad_ones():
    # frames spell "ac" clearly but for one uncertain frame; the lexicon {"ab"} turns the c into b
    task = get_task("ctc", decode="beam", words=["ab"])
    p = torch.full((3, 29), 1e-4)
    p[0, 3], p[1, 0], p[2, 5], p[2, 4] = 1.0, 1.0, 0.6, 0.4  # a, blank, c (0.6) or b (0.4)
    logits = p.log()[None]
    assert get_task("ctc").hypotheses(logits, None) == ["ac"]
    assert task.hypotheses(logits, None) == ["ab"]
    with pytest.raises(TaskError, match="decode='beam'"):
        get_task("ctc", words=["ab"])
    with pytest.raises(TaskError, match="single non-empty words"):
        get_task("ctc", decode="beam", words=["two words"])
    with pytest.raises(TaskError, match="give words"):
        get_task("ctc", decode="beam", word_score=-1.0)
    with pytest.raises(TaskError, match="word_score is a number"):
        get_task("ctc", decode="beam", words=["ab"], word_score="-1")
    with pytest.raises(TaskError, match="outside the CTC alphabet"):
        get_task("ctc", decode="beam", words=["naïve"])


# ------------------------------------------------------------------------------------------------ losses
def test_frame_kd_is_zero_when_teacher_equals_student():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).bool()
    assert float(ctc_frame_kd(logits, logits, mask=mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(ctc_frame_kd(torch.randn(3, 6, 5), logits, mask=mask)) > 0.1


def test_frame_kd_shift_lines_up_a_delayed_student():
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 5)
    student = torch.cat([torch.randn(2, 2, 5), teacher[:, :-2]], dim=1)  # the teacher's spikes, two frames late
    assert float(ctc_frame_kd(student, teacher, shift=2)) == pytest.approx(0.0, abs=1e-6)
    assert float(ctc_frame_kd(student, teacher, shift=0)) > 0.1
    # padding frames never count: garbage after each utterance's end changes nothing
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3]).bool()
    noisy = student.clone()
    noisy[1, 5:] = 100.0
    assert float(ctc_frame_kd(noisy, teacher, shift=2, mask=mask)) == pytest.approx(0.0, abs=1e-6)
    # a batch no longer than the delay has nothing to match: zero, and still a graph to step through
    short = student.clone().requires_grad_()
    loss = ctc_frame_kd(short, teacher, shift=8)
    loss.backward()
    assert loss.item() == 0.0 and short.grad is not None
    with pytest.raises(ValueError, match="shift is a number of frames"):
        ctc_frame_kd(student, teacher, shift=-1)


def test_sequence_kd_with_a_sure_teacher_is_ctc_on_its_hypothesis():
    torch.manual_seed(0)
    teacher = torch.full((1, 6, 4), -10.0)
    for t, s in enumerate([0, 2, 2, 0, 3, 0]):  # the teacher is sure of "2 3"
        teacher[0, t, s] = 10.0
    student = torch.randn(1, 6, 4)
    expected = ctc_loss(student, torch.tensor([[2, 3]]))
    assert float(ctc_sequence_kd(student, teacher, n_best=3)) == pytest.approx(float(expected), rel=1e-4)


def test_ctc_loss_checks_its_labels():
    logits = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="0 is the blank"):
        ctc_loss(logits, torch.tensor([[0, 1], [1, -100]]))
    with pytest.raises(ValueError, match="frame mask"):
        ctc_loss(logits, torch.tensor([[1, 2], [1, -100]]), mask=torch.ones(2, 4, dtype=torch.bool))
    padded = ctc_loss(logits, torch.tensor([[1, 2], [3, -100]]), mask=torch.tensor([[1] * 5, [1] * 3 + [0] * 2]).bool())
    alone = ctc_loss(logits[1:, :3], torch.tensor([[3]]))
    first = ctc_loss(logits[:1], torch.tensor([[1, 2]]))
    assert float(padded) == pytest.approx((float(alone) + float(first)) / 2, rel=1e-5)


def test_methods_by_name():
    assert [t.name for t in METHODS["ctc"]()] == ["ctc"]
    terms = METHODS["ctc_frame_kd"](alpha=0.3, shift=2)
    assert [(t.name, t.params.get("shift")) for t in terms] == [("ctc", None), ("ctc_frame_kd", 2)]
    assert [t.name for t in METHODS["ctc_sequence_kd"](alpha=1.0)] == ["ctc_sequence_kd"]
    with pytest.raises(ValueError, match="alpha"):
        METHODS["ctc_frame_kd"](alpha=1.5)


# ------------------------------------------------------------------------------------------------ the task
def test_ctc_task_pads_frames_and_labels_and_scores_cer_wer():
    task = get_task("ctc")
    items = [{"features": torch.randn(5, 3), "lengths": 5, "label": torch.tensor(task.encode("ab"))},
             {"features": torch.randn(3, 3), "lengths": 3, "label": torch.tensor(task.encode("a b c"))}]
    batch = task.collate(items)
    assert batch["input"]["features"].shape == (2, 5, 3)
    assert batch["mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch["label"][0].tolist() == [3, 4, -100, -100, -100]
    # a model that says "ab" for the first and "a b" for the second: 0 + 2 char errors of 2 + 5, 0 + 1 word of 1 + 3
    pred = torch.full((2, 5, 29), -5.0)
    for b, text in enumerate(["ab", "a b"]):
        symbols = task.encode(text)
        for t in range(5):
            pred[b, t, symbols[t] if t < len(symbols) else 0] = 5.0
    sums: dict = {}
    task.add_batch(sums, pred, batch, None)
    metrics = task.summarize(sums)
    assert metrics["cer"] == pytest.approx(100 * 2 / 7) and metrics["wer"] == pytest.approx(100 * 1 / 4)
    assert edit_distance("kitten", "sitting") == 3


def test_ctc_task_errors_name_the_problem():
    task = get_task("ctc")
    with pytest.raises(TaskError, match="outside the CTC alphabet"):
        task.encode("hello!")
    with pytest.raises(TaskError, match="'features'"):
        task.collate([{"pixels": [1, 2], "label": [1]}])  # neither features nor input_ids
    with pytest.raises(TaskError, match="the blank"):
        task.collate([{"features": torch.randn(4, 2), "lengths": 4, "label": torch.tensor([0, 1])}])
    with pytest.raises(TaskError, match="decode"):
        get_task("ctc", decode="viterbi")


# ------------------------------------------------------------------------------------------------ data
@needs_espeak
def test_generator_speaks_two_words_deterministically():
    one = speech.synthesize(["yes", "seven four"], ["en-us", "en+f2"], seed=3)
    two = speech.synthesize(["yes", "seven four"], ["en-us", "en+f2"], seed=3)
    assert len(one) == 2 and one.texts == ["yes", "seven four"]
    assert torch.equal(one.features, two.features)
    first, second = one[0], one[1]
    assert first["features"].shape[1] == speech.FEATURES and torch.isfinite(one.features).all()
    assert len(second["features"]) > len(first["features"])  # two words take longer than one
    assert first["label"].tolist() == speech.encode("yes") and first["lengths"] == len(first["features"])
    assert sorted(one.voices) == ["en+f2", "en-us"]
    assert 0.3 < one.seconds[0] < 2.0


@needs_espeak
def test_speech_set_round_trips_through_npz(tmp_path):
    data = speech.synthesize(["no"], ["en-us"], seed=0)
    data.save(tmp_path / "s.npz")
    back = speech.SpeechSet.load(tmp_path / "s.npz")
    assert torch.equal(back.features, data.features) and back.texts == ["no"] and back.voices == ["en-us"]


def test_speech_sets_concatenate_in_order_with_repeats():
    a = speech.SpeechSet.from_utterances([torch.ones(3, 2), 2 * torch.ones(1, 2)], ["a", "b c"], ["x", "x"], [0.1, 0.2])
    b = speech.SpeechSet.from_utterances([5 * torch.ones(2, 2)], ["d"], ["y"], [0.3])
    both = speech.SpeechSet.concat([a, b, a], "both")
    assert len(both) == 5 and both.texts == ["a", "b c", "d", "a", "b c"] and both.lengths == [3, 1, 2, 3, 1]
    for i, (src, j) in enumerate([(a, 0), (a, 1), (b, 0), (a, 0), (a, 1)]):
        assert torch.equal(both[i]["features"], src[j]["features"]) and torch.equal(both[i]["label"], src[j]["label"])
    assert both.voices[2] == "y" and both.seconds[2] == 0.3 and both.name == "both"


@needs_flite
def test_flite_voices_speak_at_the_speed_and_pitch_asked_and_a_telephone_copy_is_8_khz():
    slow, rate = speech.speak("seven", "flite:slt", speed=130, pitch=50)
    fast, _ = speech.speak("seven", "flite:slt", speed=200, pitch=50)
    assert rate == 16000 and len(slow) / len(fast) == pytest.approx(200 / 130, rel=0.15)
    data = speech.synthesize(["seven"], ["flite:kal16"], seed=0, telephone=True)
    assert data.voices == ["flite:kal16"] and data[0]["features"].shape[1] == speech.FEATURES
    with pytest.raises(speech.SpeechError, match="unknown flite voice"):
        speech.speak("seven", "flite:nobody")


def test_resampling_keeps_what_lies_below_the_new_nyquist_and_drops_the_rest():
    t = torch.arange(16000, dtype=torch.float64) / 16000  # one second: whole periods of both tones
    low, high = torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 6000 * t)
    out = speech.resample((low + high).float(), 16000, 8000)
    expected = torch.sin(2 * math.pi * 440 * torch.arange(8000, dtype=torch.float64) / 8000).float()
    assert len(out) == 8000 and torch.allclose(out, expected, atol=1e-5)


def test_voices_give_flite_as_many_utterances_as_espeak():
    found = speech.voices(["", "f1"], ["en-us", "en"], flite=["slt", "rms"])
    assert found[:4] == ["en-us", "en-us+f1", "en", "en+f1"]
    assert found[4:] == ["flite:slt", "flite:slt", "flite:rms", "flite:rms"]


@needs_asterisk
def test_asterisk_prompts_inside_the_vocabulary():
    vocab = speech.vocabulary()
    prompts = speech.asterisk_prompts(vocab)
    assert "seven" in vocab and 200 < len(prompts) < len(speech.asterisk_transcripts())
    assert all(set(text.split()) <= set(vocab) for _, text in prompts)
    assert ("digits/7", "seven") in prompts


@needs_asterisk
def test_adaptation_recordings_are_never_test_prompts():
    vocab = speech.vocabulary()
    train, val = speech.asterisk_adaptation(vocab)
    test = {text for _, text in speech.asterisk_prompts(vocab)}
    assert len(train) > 3 * len(val) > 100
    for split in (train, val):  # each has a word outside the vocabulary, so none is a test prompt
        assert all(not set(t.split()) <= set(vocab) for t in split.texts) and not set(split.texts) & test
        assert max(split.seconds) <= 20.0
    assert not set(train.texts) & set(val.texts)  # the same sentence recorded twice stays on one side


@needs_asterisk
def test_word_pieces_cut_each_recording_into_its_words_end_to_end():
    _, val = speech.adaptation_prompts(speech.vocabulary())
    prompts = [p for p in val if 2 <= len(p[1].split()) <= 6][:2]
    torch.manual_seed(0)
    model = speech.RecurrentCTC(hidden=16, layers=1, bidirectional=True)  # any aligner makes contiguous pieces
    pieces = speech.word_pieces(prompts, model)
    assert pieces.texts == [w for _, text in prompts for w in text.split()]
    audio = [speech.read_wav(speech.ASTERISK_WAV / f"{name}.wav") for name, _ in prompts]
    whole = sum(len(samples) / rate for samples, rate in audio)
    assert math.isclose(sum(pieces.seconds), whole, rel_tol=1e-6)
    assert all(len(pieces[i]["label"]) == len(w) for i, w in enumerate(pieces.texts))


def test_missing_data_names_the_install_command(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.DataMissing, match="apt-get install espeak-ng"):
        speech.speak("hello")


# ------------------------------------------------------------------------------------------------ training
def _toy_words(n: int, seed: int):
    """Two words as feature sequences: each letter a fixed pattern held 2-4 frames, noise on top."""
    gen = torch.Generator().manual_seed(seed)
    letters = {c: torch.randn(8, generator=torch.Generator().manual_seed(ord(c))) * 2 for c in "yesno"}
    feats, texts = [], []
    for i in range(n):
        word = ["yes", "no"][i % 2]
        rows = [letters[c].repeat(int(torch.randint(2, 5, (1,), generator=gen)), 1) for c in word]
        x = torch.cat([torch.zeros(2, 8), *rows, torch.zeros(2, 8)])
        feats.append(x + 0.3 * torch.randn(x.shape, generator=gen))
        texts.append(word)
    return speech.SpeechSet.from_utterances(feats, texts, ["toy"] * n, [0.1] * n)


def test_a_toy_model_learns_two_words_in_seconds():
    from distill.engine import TrainConfig
    from distill.evaluation import evaluate
    from distill.stages import as_stages, fit_stages

    torch.manual_seed(0)
    train, val = _toy_words(64, 0), _toy_words(16, 1)
    model = speech.RecurrentCTC(features=8, hidden=32, layers=1, dropout=0.0)
    cfg = TrainConfig(epochs=20, batch_size=16, lr=2e-2, seed=0, progress=False, schedule="constant", eval_every=20)
    start = time.perf_counter()
    fit_stages(model, None, as_stages(METHODS["ctc"]()), train, val, config=cfg, task=get_task("ctc"),
               say=lambda *_: None)
    assert time.perf_counter() - start < 60  # ~3 s on an idle core
    assert evaluate(model, val, 16, task="ctc")["wer"] == 0.0


def test_a_benchmark_row_killed_half_way_resumes_to_the_same_weights(tmp_path):
    from distill.engine import checkpoints_in
    from distill.speech_bench import _train

    train, val = _toy_words(64, 0), _toy_words(16, 1)
    settings = {"epochs": 4, "batch_size": 16, "lr": 2e-2, "schedule": "constant"}

    def model():
        torch.manual_seed(0)
        return speech.RecurrentCTC(features=8, hidden=16, layers=1, dropout=0.0)

    reference = model()
    _train(reference, None, METHODS["ctc"](), train, val, settings, seed=0)  # no run folder, as the rows before

    class Killed(type(train)):  # the process dies while reading the third epoch's batches
        reads = 0

        def __getitem__(self, i):
            Killed.reads += 1
            if Killed.reads > 2 * 64 + 20:
                raise KeyboardInterrupt
            return super().__getitem__(i)

    dying = _toy_words(64, 0)
    dying.__class__ = Killed
    with pytest.raises(KeyboardInterrupt):
        _train(model(), None, METHODS["ctc"](), dying, val, settings, seed=0, run_dir=tmp_path / "run")
    assert checkpoints_in(tmp_path / "run")
    resumed, again = model(), _toy_words(64, 0)  # a new process: fresh weights, the same run folder
    again.__class__ = Killed
    Killed.reads = -10**6  # (counts, never dies)
    _train(resumed, None, METHODS["ctc"](), again, val, settings, seed=0, run_dir=tmp_path / "run")
    assert Killed.reads + 10**6 < 3 * 64  # two epochs were not read again
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_distillation_through_the_engine_runs_on_padded_batches():
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages

    torch.manual_seed(0)
    train = _toy_words(16, 0)
    teacher = speech.RecurrentCTC(features=8, hidden=16, layers=1, bidirectional=True).eval()
    for method in (METHODS["ctc_frame_kd"](shift=1), METHODS["ctc_sequence_kd"](n_best=2, beam=2)):
        student = speech.RecurrentCTC(features=8, hidden=8, layers=1)
        cfg = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, cache_teacher=True)
        history = fit_stages(student, teacher, as_stages(method), train, train, config=cfg, task=get_task("ctc"),
                             say=lambda *_: None)["history"]
        assert math.isfinite(history[-1]["train/loss"]) and "val/cer" in history[-1]


def test_padding_does_not_change_a_bidirectional_models_output():
    torch.manual_seed(0)
    model = speech.RecurrentCTC(features=4, hidden=8, layers=2, bidirectional=True).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4)], dim=1)
    with torch.no_grad():
        alone, both = model(x, torch.tensor([5])), model(padded, torch.tensor([5]))
    assert torch.allclose(alone, both[:, :5], atol=1e-6)


def test_a_lower_frame_rate_model_keeps_one_output_per_frame_streams_and_ignores_padding():
    torch.manual_seed(0)
    model = speech.RecurrentCTC(features=4, hidden=8, layers=2, frames_per_step=2).eval()
    x = torch.randn(2, 7, 4)
    with torch.no_grad():
        out = model(x, torch.tensor([7, 5]))
        assert out.shape == (2, 7, len(speech.ALPHABET) + 1)
        # the second utterance alone gives its 5 frames whatever the batch padded it with
        assert torch.allclose(model(x[1:, :5], torch.tensor([5]))[0], out[1, :5], atol=1e-6)
        # streaming with one frame of look-ahead: frames 0-3 never read frames 4-6
        later = torch.cat([x[:, :4], torch.randn(2, 3, 4)], dim=1)
        assert torch.equal(model(later)[:, :4], model(x)[:, :4])
        assert not torch.allclose(model(later)[:, 4], model(x)[:, 4])
    with pytest.raises(speech.SpeechError, match="frames_per_step"):
        speech.RecurrentCTC(frames_per_step=0)


def test_a_row_convolution_looks_ahead_exactly_its_frames_and_starts_as_the_identity():
    torch.manual_seed(0)
    plain = speech.RecurrentCTC(features=4, hidden=8, layers=1).eval()
    ahead = speech.RecurrentCTC(features=4, hidden=8, layers=1, lookahead=2).eval()
    assert ahead.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["row_conv.weight"]
    x = torch.randn(2, 9, 4)
    with torch.no_grad():
        assert torch.allclose(ahead(x), plain(x), atol=1e-6)  # identity at initialisation
        torch.nn.init.normal_(ahead.row_conv.weight)
        out = ahead(x, torch.tensor([9, 6]))
        assert torch.allclose(ahead(x[1:, :6], torch.tensor([6]))[0], out[1, :6], atol=1e-6)
        later = torch.cat([x[:, :5], torch.randn(2, 4, 4)], dim=1)
        assert torch.equal(ahead(later)[:, :3], ahead(x)[:, :3])  # frame 2 reads frames 2, 3, 4 only
        assert not torch.allclose(ahead(later)[:, 3], ahead(x)[:, 3])
    with pytest.raises(speech.SpeechError, match="lookahead"):
        speech.RecurrentCTC(lookahead=-1)


def test_speech_benchmark_refuses_unknown_arms_and_flags(capsys):
    from distill.cli import main
    from distill.speech_bench import run_speech_benchmark

    with pytest.raises(ValueError, match="unknown arms"):
        run_speech_benchmark(only=["nope"])
    assert main(["bench", "speech", "--set", "train.lr=1"]) == 2
    assert "the speech benchmark takes" in capsys.readouterr().err


def test_the_speech_recipe_names_its_methods_and_needs_the_ctc_task():
    from distill.recipe import RecipeError, load_recipe

    recipe = load_recipe("speech")
    assert recipe.build_task().name == "ctc" and [m.name for m in recipe.methods] == [
        "ctc", "ctc_frame_kd", "ctc_sequence_kd"]
    with pytest.raises(RecipeError, match="needs 'task: ctc'"):
        load_recipe("speech", ["task=classification"])


def test_spike_delay_finds_how_far_a_student_lags():
    from distill.speech_bench import spike_delay

    torch.manual_seed(0)
    teacher = [torch.randn(12, 5) * 3 for _ in range(3)]
    late = [torch.cat([torch.randn(3, 5), t[:-3]]) for t in teacher]
    assert spike_delay(late, teacher) == 3 and spike_delay(teacher, teacher) == 0


def test_the_benchmark_table_gives_mean_and_spread_over_seeds():
    from distill.speech_bench import format_table

    def timed(rtf, speedup):
        return {"rtf": rtf, "speedup": {"rtf": speedup}, "speedup_range": {"rtf": [speedup - 0.5, speedup + 0.5]}}

    row = {"real_cer": 20.0, "real_wer": 40.0, "voices_cer": 10.0, "voices_wer": 20.0, "params": 1000,
           "real_wer_lexicon": 30.0, "real_wer_lexicon_scored": 25.0, "word_score": -2.0}
    summary = {"teacher": {**row, "params": 5000}, "real_prompts": 312, "real_total": 563, "vocab": 301,
               "settings": {"teacher": {"model": {"hidden": 160, "layers": 3, "bidirectional": True}}},
               "rtf": {"teacher": timed(0.01, 1.0), json.dumps({}, sort_keys=True): timed(0.002, 5.0),
                       json.dumps({"hidden": 128, "lookahead": 4}, sort_keys=True): timed(0.0025, 4.0)},
               "rows": [{**row, "arm": "ctc", "seed": s, "delay": 2, "real_wer": 40.0 + 2 * s,
                         "real_wer_lexicon_scored": 24.0 + s, "word_score": float(-s)} for s in range(3)]
               + [{k: v for k, v in row.items() if k not in ("real_wer_lexicon_scored", "word_score")}
                  | {"arm": "ctc-128-ahead", "seed": 0, "delay": 0}]}
    table = format_table(summary)
    assert ("| streaming GRU 2×96 | ctc | 1,000 | 20.0 ± 0.0 | 42.0 ± 2.0 | +5% | 30.0 ± 0.0 | "
            "25.0 ± 1.0 (0/-1/-2) | 10.0 ± 0.0 |") in table
    # a row from before the word score shows a dash there
    assert ("| streaming GRU 2×128, look-ahead 4 | ctc-128-ahead | 1,000 | 20.0 ± 0.0 | 40.0 ± 0.0 | +0% | "
            "30.0 ± 0.0 | - |") in table
    assert "| 0.0025 | 4.0× (3.5–4.5) |" in table
    assert "| 30.0 | 25.0 (-2) | 10.0 |" in table and "5.0× (4.5–5.5)" in table  # the teacher's lexicon WERs
    assert "312 of 563" in table and "| BiGRU 3×160 teacher |" in table


def test_a_cached_teacher_gives_the_live_teachers_frame_targets():
    from distill.engine import TrainConfig
    from distill.stages import as_stages, fit_stages

    train = _toy_words(24, 0)
    torch.manual_seed(0)
    teacher = speech.RecurrentCTC(features=8, hidden=16, layers=1, bidirectional=True).eval()
    losses = []
    for cache in (False, True):  # utterances of different lengths, batched by length: padding differs per batch
        torch.manual_seed(1)
        student = speech.RecurrentCTC(features=8, hidden=8, layers=1, dropout=0.0)
        cfg = TrainConfig(epochs=2, batch_size=8, seed=0, progress=False, cache_teacher=cache, group_by_length=True)
        history = fit_stages(student, teacher, as_stages(METHODS["ctc_frame_kd"](shift=1)), train, train, config=cfg,
                             task=get_task("ctc"), say=lambda *_: None)["history"]
        losses.append([r["train/ctc_frame_kd"] for r in history if r.get("event") == "epoch"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_real_time_factors_time_each_model_over_the_utterances_in_rounds():
    from distill.speech_bench import real_time_factors

    class Sleeper(torch.nn.Module):
        def __init__(self, seconds_per_frame):
            super().__init__()
            self.seconds_per_frame = seconds_per_frame

        def forward(self, features):
            time.sleep(self.seconds_per_frame * features.shape[1])
            return features

    class Split(list):
        seconds = [0.5, 1.0, 0.5, 1.0]  # 3 s of audio

    split = Split({"features": torch.zeros(frames, 4)} for frames in (5, 10, 5, 10))
    timed = real_time_factors({"teacher": Sleeper(0.004), "student": Sleeper(0.001)}, split, rounds=2)
    assert 0.04 <= timed["teacher"]["rtf"] < 0.08  # 30 frames x 4 ms over 3 s of audio, plus call overhead
    assert timed["teacher"]["speedup"] == {"rtf": 1.0}
    low, high = timed["student"]["speedup_range"]["rtf"]
    assert 2 < low <= timed["student"]["speedup"]["rtf"] <= high  # 4x asleep, less the call overhead
