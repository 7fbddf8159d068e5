"""MixKD's embedding mixup: both models mix their own embeddings of the same pairs; labels count the originals."""
import pytest
import torch

pytest.importorskip("transformers")

from distill import Distiller, TokenMixUp  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.methods import METHODS  # noqa: E402
from distill.stages import Stage, fit_stages  # noqa: E402
from distill.engine import TrainConfig  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.zoo.bert import bert_student  # noqa: E402


def tiny(layers, seed):
    return bert_student(layers, seed=seed, vocab_size=50, hidden_size=32, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)


def sentences(n=64, seed=0):
    """Label 1 when token 7 occurs: learnable by a tiny model in a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=gen))
        ids = torch.randint(8, 50, (length,), generator=gen)
        label = int(torch.rand(1, generator=gen) < 0.5)
        if label:
            ids[int(torch.randint(1, length - 1, (1,), generator=gen))] = 7
        items.append({"input_ids": torch.cat([torch.tensor([1]), ids, torch.tensor([2])]), "labels": label})
    return items


def test_token_mixup_mixes_each_models_own_embeddings_with_the_same_pairs():
    task = get_task("classification", pad_token_id=0)
    batch = task.prepare(task.collate(sentences(6)))
    mix = TokenMixUp(0.4)
    student, teacher = tiny(1, 0), tiny(2, 1)
    handles = mix.attach(student, teacher)
    seen = {}
    for name, model in (("s", student), ("t", teacher)):  # after the mixing hook: sees its output
        model.get_input_embeddings().register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.detach()))
    made = mix(batch, torch.Generator().manual_seed(0))
    ids, mask = made["input"]["input_ids"], made["input"]["attention_mask"]
    assert ids.shape[0] == 12 and torch.equal(made["label"][6:], torch.full((6,), -100))
    _, pairs, lam = mix._plan
    assert torch.equal(mask[6:], mask[:6].maximum(mask[:6][pairs[:, 1]]))
    for name, model in (("s", student), ("t", teacher)):
        model(**made["input"])
        plain = model.get_input_embeddings().weight[ids[:6]].detach()
        expect = lam.view(6, 1, 1) * plain + (1 - lam.view(6, 1, 1)) * plain[pairs[:, 1]]
        torch.testing.assert_close(seen[name][6:], expect)
        torch.testing.assert_close(seen[name][:6], plain)
    fresh = {k: v.clone() for k, v in made["input"].items()}  # another batch (evaluation): not mixed
    student(**fresh)
    torch.testing.assert_close(seen["s"], student.get_input_embeddings().weight[fresh["input_ids"]].detach())
    for handle in handles:
        handle.remove()


def test_token_mixup_refuses_what_it_cannot_mix():
    with pytest.raises(DistillError, match="positive number"):
        TokenMixUp(0)
    task = get_task("tokens", pad_token_id=0)
    batch = task.prepare(task.collate([{"input_ids": torch.tensor([1, 5, 6, 2])}] * 2))
    with pytest.raises(DistillError, match="per-position"):
        TokenMixUp()(batch)
    with pytest.raises(DistillError, match="get_input_embeddings"):
        TokenMixUp().attach(torch.nn.Linear(2, 2))


def test_mixkd_method_trains_a_student_that_learns():
    torch.manual_seed(0)
    task = get_task("classification", pad_token_id=0)
    train, val = sentences(96, 0), sentences(64, 1)
    teacher = tiny(2, 1)
    Distiller(teacher, epochs=12, lr=3e-3, batch_size=16, progress=False, task=task).fit(train, val)
    student = tiny(1, 2)
    stages = METHODS["mixkd"](alpha=0.5, temperature=2.0)
    out = fit_stages(student, teacher, stages, train, val, task=task, say=lambda *_: None,
                     config=TrainConfig(epochs=12, lr=3e-3, batch_size=16, progress=False))
    history = out["history"]
    assert history[-1]["train/kd"] < 0.5 * history[0]["train/kd"]
    assert max(h["val/accuracy"] for h in history) >= 90.0


class CountingMix(TokenMixUp):
    mixed = 0

    def _mix(self, module, inputs, output):
        out = super()._mix(module, inputs, output)
        self.mixed += out is not None
        return out


def test_the_engine_gives_teacher_and_student_the_mixed_batch():
    task = get_task("classification", pad_token_id=0)
    mix = CountingMix()
    stages = [Stage(METHODS["mixkd"]()[0].terms, augment=mix)]
    fit_stages(tiny(1, 2), tiny(2, 1), stages, sentences(32), sentences(16, 1), task=task, say=lambda *_: None,
               config=TrainConfig(epochs=1, batch_size=16, progress=False))
    assert mix.mixed == 2 * 2  # two steps, the student and the teacher each time; evaluation not mixed
