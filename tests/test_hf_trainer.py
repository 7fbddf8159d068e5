"""DistillationTrainer: a transformers.Trainer with a teacher (distill.integrations.hf_trainer).

Tiny random BERT / GPT-2 models (hidden 32, 2 layers, vocabulary 100) on random token ids.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,  # noqa: E402
                          GPT2Config, GPT2LMHeadModel, TrainingArguments)

from distill import Term  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.integrations import DistillationTrainer, student_loss  # noqa: E402

VOCAB, LENGTH, CLASSES = 100, 8, 3


def bert(hidden=32, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=LENGTH, num_labels=CLASSES,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def gpt2(hidden=32, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=2, n_head=2, n_positions=LENGTH,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def classification_data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def lm_data(counted=(1, 3, 6, 8), seed=2):
    """Causal-LM items whose labels count very different numbers of tokens (the rest is -100, like a prompt)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for n in counted:
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels = ids.clone()
        labels[: LENGTH - n] = -100  # after the causal shift, n tokens count (7 of the 8th: none before the first)
        items.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels})
    return items


def batch_of(items):
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def arguments(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                    seed=0, dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_two_steps_train_the_student_only_and_log_each_term(tmp_path):
    student, teacher = bert(seed=0), bert(hidden=48, seed=1)
    student_before = copy.deepcopy(student.state_dict())
    teacher_before = copy.deepcopy(teacher.state_dict())
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path, save_strategy="steps",
                                                                                 save_steps=2),
                                  train_dataset=classification_data())
    trainer.train()

    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in student.parameters()}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:  # the default terms: 0.5 * the student's own loss + 0.5 * KD at T = 2
        assert entry["loss"] == pytest.approx(0.5 * entry["loss_student"] + 0.5 * entry["loss_kd"], rel=1e-5)

    checkpoint = tmp_path / "checkpoint-2"  # the student's weights and optimiser state, nothing of the teacher
    saved = load_file(checkpoint / "model.safetensors")
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in saved.items()}.items() <= shapes.items()
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert len(optimizer_state["state"]) == sum(1 for _ in student.parameters())
    assert not list(checkpoint.glob("*teacher*"))


def test_compute_loss_is_half_ce_plus_half_t2_kl_by_hand(tmp_path):
    student, teacher = bert(seed=0), bert(hidden=48, seed=1)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path),
                                  terms=[Term("ce", 0.5), Term("kd", 0.5, temperature=2)])
    batch = batch_of(classification_data(6))
    student.eval()
    loss, outputs = trainer.compute_loss(student, dict(batch), return_outputs=True)

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = student(**inputs).logits, teacher(**inputs).logits
    T = 2.0
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean()
    expected = 0.5 * F.cross_entropy(s, batch["labels"]) + 0.5 * T**2 * kl
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(outputs.logits, s, atol=1e-6)  # the outputs are the student's

    default = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path), alpha=0.5, temperature=2)
    assert default.compute_loss(student, dict(batch)).item() == pytest.approx(expected.item(), abs=1e-6)

    loss.backward()  # gradients reach the student only
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_causal_lm_gradient_accumulation_normalises_like_one_double_batch(tmp_path):
    """Micro-batches of 1+3 and 6+7 counted tokens (-100 elsewhere): the accumulated step equals one batch of 4."""
    teacher = gpt2(hidden=48, seed=1)
    items = lm_data()
    terms = [student_loss(0.3), Term("ce", 0.2), Term("kd", 0.3, temperature=2), Term("generalized_jsd", 0.2)]
    deltas, losses, term_logs = [], [], []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        student = gpt2(seed=0)
        before = copy.deepcopy(student.state_dict())
        args = arguments(tmp_path / f"ga{accumulation}", max_steps=1, per_device_train_batch_size=batch_size,
                         gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                         lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential")
        trainer = DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=items,
                                      terms=[copy.copy(t) for t in terms])
        trainer.train()
        # SGD at learning rate 1: the change of each weight is minus its accumulated gradient
        deltas.append({k: before[k] - v for k, v in student.state_dict().items()})
        log = next(entry for entry in trainer.state.log_history if "loss" in entry)
        losses.append(log["loss"])
        term_logs.append([log[f"loss_{name}"] for name in ("student", "ce", "kd", "generalized_jsd")])

    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert term_logs[0] == pytest.approx(term_logs[1], abs=1e-6)
    assert term_logs[0][0] == pytest.approx(term_logs[0][1], abs=1e-6)  # outputs.loss is the CE over those tokens
    for key, delta in deltas[0].items():
        assert torch.allclose(delta, deltas[1][key], atol=1e-6), key

    # the check is sensitive: a plain mean per micro-batch would weigh the 4 tokens of the first like the 13 after
    student = gpt2(seed=0)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path / "x"), terms=[Term("ce")])
    whole = trainer.compute_loss(student, batch_of(items))
    halves = [trainer.compute_loss(student, batch_of(items[i:i + 2])) for i in (0, 2)]
    assert abs((halves[0] + halves[1]).item() / 2 - whole.item()) > 1e-3
    counted = sum(int((item["labels"][1:] != -100).sum()) for item in items)
    shares = [trainer.compute_loss(student, batch_of(items[i:i + 2]), num_items_in_batch=torch.tensor(counted))
              for i in (0, 2)]
    assert (shares[0] + shares[1]).item() == pytest.approx(whole.item(), abs=1e-6)


def test_saved_student_reloads_with_plain_transformers(tmp_path):
    student, teacher = bert(seed=0), bert(hidden=48, seed=1)
    data = classification_data()
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path / "run", max_steps=1),
                                  train_dataset=data)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))

    files = sorted(p.name for p in (tmp_path / "student").iterdir())
    assert "model.safetensors" in files and not [f for f in files if "teacher" in f]
    assert set(load_file(tmp_path / "student" / "model.safetensors")) <= set(student.state_dict())
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    student.eval()
    inputs = {k: v for k, v in batch_of(data).items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, student(**inputs).logits, atol=1e-6)

    # evaluation with predictions returns the student's logits, as a plain Trainer does
    prediction = trainer.predict(data)
    with torch.no_grad():
        expected = student(**inputs).logits
    assert prediction.predictions.shape == (len(data), CLASSES)
    assert torch.allclose(torch.as_tensor(prediction.predictions), expected, atol=1e-5)
    assert "test_loss" in prediction.metrics


def test_hidden_state_taps_reach_both_models(tmp_path):
    student, teacher = bert(seed=0), bert(seed=1)
    hint = Term(lambda s, t: F.mse_loss(s, t), 1.0, student="hidden_states[-1]", teacher="hidden_states[-1]",
                name="hidden")
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path), terms=[hint])
    batch = batch_of(classification_data(4))
    loss = trainer.compute_loss(student.eval(), dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states[-1]
        t = teacher(**inputs, output_hidden_states=True).hidden_states[-1]
    assert loss.item() == pytest.approx(F.mse_loss(s, t).item(), abs=1e-6)


@pytest.mark.parametrize("kwargs, words", [
    (dict(terms=["kdd"]), "unknown loss 'kdd'; did you mean 'kd'"),
    (dict(terms=[Term("kd"), 3]), "terms must hold Term objects"),
    (dict(terms=[Term("hint", student="bert.encoder", teacher="bert.encoder", connector="linear")]), "connector"),
    (dict(terms=[Term("kd")], alpha=0.3), "not both"),
    (dict(alpha=1.5), "alpha"),
    (dict(teacher=None), "needs teacher="),
])
def test_a_wrong_setting_is_one_line(tmp_path, kwargs, words):
    student = bert(seed=0)
    kwargs = {"teacher": bert(seed=1), **kwargs}
    with pytest.raises(DistillError) as caught:
        DistillationTrainer(model=student, args=arguments(tmp_path), **kwargs)
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_the_student_is_refused_as_its_own_teacher(tmp_path):
    student = bert(seed=0)
    with pytest.raises(DistillError, match="same model"):
        DistillationTrainer(model=student, teacher=student, args=arguments(tmp_path))


def test_a_seq2seq_teacher_gets_the_decoder_inputs_of_the_labels(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    def t5(seed):
        torch.manual_seed(seed)
        return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                   num_heads=2, dropout_rate=0.0, decoder_start_token_id=0))

    student, teacher = t5(0), t5(1)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path),
                                  terms=[Term("kd", 1.0, temperature=1)])
    batch = batch_of(lm_data())  # a seq2seq decoder's labels are aligned already: not shifted
    loss = trainer.compute_loss(student.eval(), dict(batch))
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    counted = batch["labels"] != -100
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    assert loss.item() == pytest.approx(kl[counted].mean().item(), abs=1e-6)


@pytest.mark.parametrize("term", [Term("kd", temperature=2), Term("ce"), Term("generalized_jsd", beta=1.0),
                                  Term("dkd"), Term("dist"), Term("logit_l1")],
                         ids=lambda term: term.name)
def test_registered_logit_losses_on_a_causal_lm(tmp_path, term):
    student, teacher = gpt2(seed=0), gpt2(seed=1)
    trainer = DistillationTrainer(model=student, teacher=teacher, args=arguments(tmp_path), terms=[term])
    items = lm_data()
    whole = trainer.compute_loss(student, batch_of(items))
    assert torch.isfinite(whole)
    whole.backward()
    assert student.transformer.wte.weight.grad is not None
    if "num_items" in term.batch_keywords and term.name != "dist":  # per-position sums: halves add up to the whole
        counted = torch.tensor(sum(int((item["labels"][1:] != -100).sum()) for item in items))
        halves = [trainer.compute_loss(student, batch_of(items[i:i + 2]), num_items_in_batch=counted)
                  for i in (0, 2)]
        assert (halves[0] + halves[1]).item() == pytest.approx(whole.item(), abs=1e-5)


def test_importing_distill_does_not_import_transformers():
    code = "import sys, distill, distill.integrations; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
