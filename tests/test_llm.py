"""Language-model distillation (issue 18): sampling, on-policy batches, the MiniLLM loss, the top-k teacher on
disk, each method's loop on a toy language, resuming generation bit for bit, and the errors."""
import math

import pytest
import torch
from safetensors.torch import load_file

from distill.cache import CachedTeacher, TeacherOutputs
from distill.engine import TrainConfig, seed_everything
from distill.errors import DistillError
from distill.evaluation import evaluate
from distill.generation import OnPolicy, TeacherSequences, continuation_batch, sample, sequence_nll
from distill.losses import generalized_jsd_loss, minillm_loss, truncate_teacher
from distill.losses.minillm import future_mean, future_rewards
from distill.methods import METHODS
from distill.stages import as_stages, fit_stages
from distill.tasks import get_task
from distill.teacher import LiveTeacher
from distill.zoo.gpt import TokenBlocks, gpt_lm, kjv_split, pack

VOCAB = 16
TASK = get_task("tokens", pad_token_id=1)


@pytest.fixture(autouse=True)
def _threads():  # one thread: these tests run beside other jobs
    torch.set_num_threads(1)
    yield


def markov(n: int, seed: int = 0) -> TokenBlocks:
    """``n`` sequences of 12-24 tokens from a fixed random Markov chain over 16 tokens, each opening with 0."""
    g = torch.Generator().manual_seed(seed)
    table = torch.softmax(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(123)) * 3, -1)
    seqs = []
    for _ in range(n):
        s = [0]
        for _ in range(int(torch.randint(12, 25, (), generator=g)) - 1):
            s.append(int(torch.multinomial(table[s[-1]], 1, generator=g)))
        seqs.append(torch.tensor(s))
    return TokenBlocks(seqs)


def tiny(seed: int = 1, hidden: int = 16, layers: int = 1, dropout: float = 0.0):
    return gpt_lm(VOCAB, layers=layers, hidden=hidden, heads=1, context=32, dropout=dropout, seed=seed)


def train_run(student, teacher, method, train, val=None, run_dir=None, resume=False, **settings):
    cfg = TrainConfig(**{"epochs": 3, "lr": 1e-2, "batch_size": 32, "progress": False, "seed": 0, **settings})
    stages = as_stages(method)
    seed_everything(cfg.seed)  # the global RNG (dropout) from the seed, as a CLI run starts
    return fit_stages(student, teacher, stages, train, val, config=cfg, task=TASK, run_dir=run_dir, resume=resume,
                      say=lambda *_: None)


@pytest.fixture(scope="module")
def data():
    return markov(256), markov(64, seed=1)


@pytest.fixture(scope="module")
def teacher(data):
    model = gpt_lm(VOCAB, layers=1, hidden=32, heads=2, context=32, seed=0)
    train_run(model, None, METHODS["scratch"](), data[0], epochs=8)
    return model.eval().requires_grad_(False)


def perplexity(model, dataset) -> float:
    return evaluate(model, dataset, 64, task=TASK)["perplexity"]


# ------------------------------------------------------------------------------------------------ sampling

class FixedLM(torch.nn.Module):
    """Next-token logits that depend on nothing: for checking the sampler's distribution."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float))

    def forward(self, input_ids, attention_mask=None, use_cache=None, cache=None, past_key_values=None):
        out = self.logits.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": out, "cache": None})()


def test_sampling_draws_from_the_softmax_at_the_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    model = FixedLM(logits)
    prompts = torch.zeros(4000, 1, dtype=torch.long)
    for t in (1.0, 2.0):
        seqs, alive = sample(model, prompts, 1, seeds=range(4000), temperature=t)
        freq = torch.bincount(seqs[:, 1], minlength=4).float() / 4000
        assert torch.allclose(freq, torch.softmax(logits / t, -1), atol=0.025)
        assert alive.all()
    greedy, _ = sample(model, prompts[:3], 2, seeds=[0, 1, 2], temperature=0)
    assert (greedy[:, 1:] == 0).all()


def test_cached_generation_equals_recomputing_the_whole_prefix(teacher):
    prompts = torch.tensor([[0, 3, 5], [0, 7, 2]])
    seqs, _ = sample(teacher, prompts, 6, seeds=[0, 0], temperature=0)
    ids = prompts
    for _ in range(6):  # greedy without a key/value cache
        ids = torch.cat([ids, teacher(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(seqs, ids)


def test_another_model_kind_brings_its_own_decoding_step():
    calls = []

    def step(model, ids, cache, seen):  # e.g. a seq2seq decoder over its encoder's output
        calls.append((ids.shape[1], cache, seen))
        return torch.tensor([[0.0, 9.0, -9.0]]).expand(len(ids), 3), (cache or 0) + 1

    prompts = torch.zeros(2, 3, dtype=torch.long)
    seqs, _ = sample(torch.nn.Identity(), prompts, 2, seeds=[0, 1], temperature=0, step=step)
    assert calls == [(3, None, 3), (1, 1, 4)] and (seqs[:, 3:] == 1).all()


def test_a_rows_sample_depends_on_its_seed_alone(teacher):
    prompts = torch.tensor([[0, 3], [0, 4], [0, 5]])
    together, _ = sample(teacher, prompts, 8, seeds=[11, 12, 13])
    alone, _ = sample(teacher, prompts[1:2], 8, seeds=[12])
    assert torch.equal(together[1], alone[0])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    sample(teacher, prompts, 4, seeds=[1, 2, 3])
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is not touched


def test_end_token_stops_the_targets():
    model = FixedLM([0.0, 9.0, -9.0])  # token 1 almost surely
    seqs, alive = sample(model, torch.zeros(2, 2, dtype=torch.long), 3, seeds=[0, 1], eos_token_id=1)
    assert alive.tolist() == [[True, False, False]] * 2
    batch = continuation_batch(list(seqs), [2, 2], list(alive), pad_token_id=0)
    # position 1 predicts the first generated token (the end token, counted); nothing after it counts
    assert batch["label"].tolist() == [[-100, 1, -100, -100, -100]] * 2


def test_teacher_nll_of_samples_is_lower_for_the_teachers_own(teacher, data):
    prompts = torch.stack([s[:3] for s in data[1].sequences[:32]])
    own = continuation_batch(list(sample(teacher, prompts, 10, seeds=range(32), temperature=0.7)[0]), [3] * 32,
                             None, 1)
    noise = continuation_batch([torch.cat([p, torch.randint(0, VOCAB, (10,))]) for p in prompts], [3] * 32, None, 1)
    nll_own, n_own = sequence_nll(teacher, own)
    nll_noise, n_noise = sequence_nll(teacher, noise)
    assert n_own == n_noise == 320 and nll_own / n_own < nll_noise / n_noise


# -------------------------------------------------------------------------------------------------- losses

def test_minillm_future_reward_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    counted = torch.tensor([[True, True, False, True]])
    # later counted rewards: pos 0 -> (2 + 4) / 2, pos 1 -> 4, pos 2 -> 4, pos 3 -> none
    assert future_mean(r, counted).tolist() == [[3.0, 4.0, 4.0, 0.0]]


def test_minillm_loss_gradient_is_the_policy_gradient():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 7, requires_grad=True)
    t = torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, :2] = -100
    loss = minillm_loss(s, t, y, teacher_mix=0.2)
    loss.backward()
    # the same gradient written out: w_t * [grad KL(q_t || p_t) - R_{t+1} grad log q_t(y_t)], mean over counted
    s2 = s.detach().clone().requires_grad_(True)
    log_q, log_p = s2.log_softmax(-1), t.log_softmax(-1)
    counted = y != -100
    yy = y.clamp_min(0)
    lq, lp = log_q.gather(-1, yy[..., None])[..., 0], log_p.gather(-1, yy[..., None])[..., 0]
    r = (lp - lq).detach()
    future = torch.zeros_like(r)
    for b in range(2):
        for i in range(5):
            later = [r[b, j] for j in range(i + 1, 5) if counted[b, j]]
            future[b, i] = sum(later) / len(later) if later else 0.0
    q_y, p_y = lq.exp().detach(), lp.exp()
    w = q_y / (0.2 * p_y + 0.8 * q_y)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    ((w * (kl - future * lq))[counted].sum() / counted.sum()).backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-6)
    # a student equal to its teacher: no reverse KL, no reward, no gradient
    same = torch.randn(1, 4, 7, requires_grad=True)
    value = minillm_loss(same, same.detach(), torch.randint(0, 7, (1, 4)))
    value.backward()
    assert abs(float(value.detach())) < 1e-6 and same.grad.abs().max() < 1e-6


def test_top_k_teacher_live_equals_the_top_k_cache_on_ragged_sequences(teacher, data, tmp_path):
    """The teacher's top-k logits over ragged sequences stored on disk (memory-mapped) and read back give the
    loss terms exactly the teacher a live ``teacher_top_k`` gives."""
    train = data[0].subset(40)
    assert len(set(train.lengths)) > 3  # ragged
    outputs = TeacherOutputs(tmp_path / "cache", top_k=4, temperatures=(1.0, 2.0))
    cached = CachedTeacher(LiveTeacher(teacher, ["logits"]), train, batch_size=16, outputs=outputs,
                           collate_fn=TASK.collate, temperatures={"logits": 2.0})
    meta = outputs.meta["taps"]["logits"]
    assert "offsets" in meta  # stored per token, not padded
    rows = sum(train.lengths)
    assert outputs.values["logits"]["ragged"]["values"].shape == (rows, 4)
    batch = TASK.collate([train[i] for i in (3, 17, 5)])
    batch["index"] = torch.tensor([3, 17, 5])
    stored = cached(batch)["logits"]
    live = teacher(**batch["input"]).logits
    real = batch["input"]["attention_mask"].bool()
    expected = truncate_teacher(live, 4, 2.0)
    assert torch.allclose(stored[real], expected[real], atol=1e-5)
    s = torch.randn_like(live)
    for beta in (0.0, 0.5, 1.0):
        a = generalized_jsd_loss(s, stored, beta, 2.0, mask=batch["mask"])
        b = generalized_jsd_loss(s, live, beta, 2.0, mask=batch["mask"], teacher_top_k=4)
        assert float(a) == pytest.approx(float(b), rel=1e-5)
    # k = V is the full distribution
    assert torch.equal(truncate_teacher(live, VOCAB), live)


# ------------------------------------------------------------------------------------------------- methods

@pytest.mark.parametrize("name, options", [
    ("token_kd", {}),  # forward KL
    ("token_kd", {"beta": 1.0}),  # reverse KL
    ("token_kd", {"beta": 0.5, "top_k": 4, "alpha": 0.5}),
    ("gkd", {"lam": 0.5, "prompt_tokens": 4, "new_tokens": 8}),
    ("minillm", {"prompt_tokens": 4, "new_tokens": 8}),
    ("seqkd", {"prompt_tokens": 4, "new_tokens": 8, "word_kd": 0.5}),
])
def test_each_method_lowers_a_toy_models_perplexity(name, options, teacher, data):
    train, val = data
    student = tiny()
    before = perplexity(student, val)
    train_run(student, teacher, METHODS[name](**options), train, val)
    after = perplexity(student, val)
    assert after < 0.6 * before, (before, after)


def test_on_policy_batches_are_student_samples_scored_on_the_continuation(teacher, data):
    sampler = OnPolicy(lam=1.0, prompt_tokens=4, new_tokens=6, temperature=1.0)
    sampler.attach(teacher)
    batch = TASK.collate([data[0][i] for i in range(5)])
    out = sampler(batch, torch.Generator().manual_seed(0))
    assert out["input"]["input_ids"].shape == (5, 10)
    assert torch.equal(out["input"]["input_ids"][:, :4], batch["input"]["input_ids"][:, :4])
    assert out["mask"].sum(1).tolist() == [6] * 5 and not out["mask"][:, :3].any()
    never = OnPolicy(lam=0.0)
    assert never(batch, torch.Generator().manual_seed(0)) is batch


def test_on_policy_training_resumes_bit_for_bit_after_an_interruption(teacher, data, tmp_path):
    train = data[0]

    def run(run_dir, stop_after=None, resume=False):
        student = tiny(dropout=0.1)
        stages = METHODS["gkd"](lam=0.5, prompt_tokens=4, new_tokens=6)
        sampler = stages[0].augment
        if stop_after is not None:
            calls = {"n": 0}
            inner = sampler.__call__

            class Stop(OnPolicy):
                def __call__(self, batch, generator):
                    calls["n"] += 1
                    if calls["n"] > stop_after:
                        raise KeyboardInterrupt  # a kill between two checkpoints
                    return inner(batch, generator)

            sampler.__class__ = Stop
        train_run(student, teacher, stages, train, run_dir=run_dir, resume=resume, epochs=2, checkpoint_every=2)
        return sampler

    reference = run(tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", stop_after=11)  # epoch 2, batch 3: its last checkpoint was at batch 2
    resumed = run(tmp_path / "killed", resume=True)
    assert reference.on_policy_batches > 2 and resumed.on_policy_batches > 0
    a = load_file(tmp_path / "reference" / "student.safetensors")
    b = load_file(tmp_path / "killed" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sequence_level_transfer_set_is_per_sample_and_round_trips(teacher, data, tmp_path):
    train = data[0].subset(20)
    one = TeacherSequences(prompt_tokens=4, new_tokens=5, temperature=1.0, seed=3, teacher=teacher)
    one.fill(train, TASK.collate, batch_size=7)
    other = TeacherSequences(prompt_tokens=4, new_tokens=5, temperature=1.0, seed=3, teacher=teacher)
    batch = TASK.collate([train[i] for i in (9, 2)])
    batch["index"] = torch.tensor([9, 2])
    made = other(batch)  # generated in another batch: the same sequences
    assert torch.equal(made["input"]["input_ids"][0], one.store[9][0])
    one.save(tmp_path / "transfer.npz")
    back = TeacherSequences(prompt_tokens=4, new_tokens=5).load(tmp_path / "transfer.npz")
    assert all(torch.equal(back.store[i][0], one.store[i][0]) and back.store[i][1] == one.store[i][1]
               and torch.equal(back.store[i][2], one.store[i][2]) for i in one.store)


# ----------------------------------------------------------------------------------------- zoo and errors

def test_gpt_and_tokenizer_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from distill.zoo.gpt import load_gpt, lm_tokenizer

    model = tiny(hidden=32)
    model.save_pretrained(tmp_path / "m")
    back = load_gpt(tmp_path / "m")
    ids = torch.tensor([[0, 5, 7, 2]])
    assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)
    texts = {"train": [["In the beginning God created the heaven and the earth."] * 20,
                       ["It is a truth universally acknowledged."] * 20]}
    tok = lm_tokenizer(300, texts, tmp_path / "tok")
    assert isinstance(tok, PreTrainedTokenizerFast) and tok.eos_token_id == 0 and tok.pad_token_id == 1
    again = lm_tokenizer(300, folder=tmp_path / "tok")  # loaded, not trained
    sentence = " It is a truth."
    assert again.decode(again(sentence)["input_ids"]) == sentence


def test_books_split_and_packing():
    splits = [kjv_split(i) for i in range(66)]
    assert splits.count("val") == 6 and splits.count("test") == 6
    blocks = pack([[5, 6, 7], [8, 9], [10] * 20, [11]], block_size=6, bos=0)
    assert [b.tolist() for b in blocks] == [[0, 5, 6, 7, 8, 9], [0, 10, 10, 10, 10, 10], [0, 11]]


@pytest.mark.parametrize("call, match", [
    (lambda: METHODS["token_kd"](beta=1.5), "beta"),
    (lambda: METHODS["gkd"](lam=2.0), "lam"),
    (lambda: METHODS["gkd"](lam=0.5, prompt_tokens=0), "prompt_tokens"),
    (lambda: METHODS["gkd"](sample_temperature=-1.0), "temperature"),
    (lambda: METHODS["minillm"](teacher_mix=1.0), "teacher_mix"),
    (lambda: METHODS["minillm"](warmup=1.0), "warmup"),
    (lambda: METHODS["seqkd"](new_tokens=0), "new_tokens"),
    (lambda: generalized_jsd_loss(torch.zeros(2, 5), torch.zeros(2, 5), teacher_top_k=6), "teacher_top_k"),
    (lambda: generalized_jsd_loss(torch.zeros(2, 5), torch.zeros(2, 5), beta="x"), "beta"),
    (lambda: minillm_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), torch.zeros(1, 3).long()), "labels"),
    (lambda: sample(FixedLM([0.0, 1.0]), torch.zeros(2, 1).long(), 2, seeds=[0]), "one seed per prompt"),
])
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises((ValueError, DistillError), match=match):
        call()


def test_top_k_larger_than_the_vocabulary_fails_in_training(teacher, data):
    with pytest.raises(DistillError, match="teacher_top_k"):
        train_run(tiny(), teacher, METHODS["token_kd"](top_k=VOCAB + 1), data[0], epochs=1)


def test_teacher_sequences_without_a_teacher_say_so(data):
    batch = TASK.collate([data[0][0]])
    with pytest.raises(DistillError, match="live teacher"):
        TeacherSequences()(batch)
    assert math.isnan(TeacherSequences().tokens_per_second())


def test_the_llm_recipe_names_each_method():
    from distill.recipe import load_recipe

    recipe = load_recipe("llm", ["data.train_size=64"])
    assert recipe.task["name"] == "tokens" and recipe.student.model == "gpt"
    built = {m.name: m.build() for m in recipe.methods}
    assert set(built) == {"scratch", "fkl", "rkl", "gkd", "minillm", "seqkd"}
    assert isinstance(built["gkd"][0].augment, OnPolicy) and isinstance(built["seqkd"][0].augment, TeacherSequences)
    assert [s.name for s in built["minillm"]] == ["warm-up", "minillm"]


def test_minillm_whitened_rewards_are_standardised_over_counted_positions():
    torch.manual_seed(1)
    log_p, log_q = torch.randn(3, 6), torch.randn(3, 6)
    counted = torch.rand(3, 6) > 0.3
    plain = future_rewards(log_p, log_q, counted)
    assert torch.allclose(plain, future_mean(log_p - log_q, counted))
    white = future_rewards(log_p, log_q, counted, whiten=True)[counted]
    assert abs(float(white.mean())) < 1e-5 and float(white.std()) == pytest.approx(1.0, abs=1e-4)


def test_missing_bible_stops_with_the_install_command(cache_dir, monkeypatch, tmp_path):
    from distill.zoo import corpora, sword
    from distill.zoo.datasets import DataMissing
    from distill.zoo.gpt import lm_corpus

    monkeypatch.setattr(sword, "SWORD_ROOTS", [tmp_path / "nowhere"])
    corpora.kjv_sentences_by_book.cache_clear()
    try:
        with pytest.raises(DataMissing, match="apt-get install sword-text-kjv"):
            lm_corpus(block_size=32, vocab_size=300)
    finally:
        corpora.kjv_sentences_by_book.cache_clear()


def test_a_benchmark_artifact_is_built_once(tmp_path):
    from distill.llm_bench import once
    from distill.lock import RunLock

    marker, built = tmp_path / "made.json", []
    once(marker, tmp_path / ".lock", lambda: (built.append(1), marker.write_text("{}")))
    once(marker, tmp_path / ".lock", lambda: built.append(2))  # there already: not built again
    assert built == [1]
    held = RunLock(tmp_path / ".other").acquire()  # a lock left released by a builder before is taken again
    held.release()
    once(tmp_path / "b.json", tmp_path / ".other", lambda: (tmp_path / "b.json").write_text("{}"))
    assert (tmp_path / "b.json").is_file()
