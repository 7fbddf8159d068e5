"""Online distillation: peers of a cohort teach each other."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill import Distiller, build_model, evaluate, seed_everything
from distill.engine import DistillError
from distill.losses import dml_loss, kdcl_loss
from distill.methods import dml, kdcl


def test_dml_by_hand_for_two_peers():
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    y = torch.tensor([0])
    p1, p2 = torch.softmax(z1[0], 0), torch.softmax(z2[0], 0)

    def kl(p, q):
        return float((p * (p / q).log()).sum())

    expected = (F.cross_entropy(z1, y) + F.cross_entropy(z2, y)).item() + kl(p2, p1) + kl(p1, p2)
    assert dml_loss([z1, z2], y).item() == pytest.approx(expected, rel=1e-5)


def test_each_peer_gets_only_its_own_gradient():
    # peer 1's gradient must not depend on how peer 2 would change (its prediction is a target)
    torch.manual_seed(0)
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    dml_loss([z1, z2], y).backward()
    own = z1.detach().clone().requires_grad_(True)
    (F.cross_entropy(own, y) + F.kl_div(F.log_softmax(own, 1), F.log_softmax(z2.detach(), 1),
                                        reduction="batchmean", log_target=True)).backward()
    assert torch.allclose(z1.grad, own.grad, atol=1e-6)


def test_kdcl_min_logit_ensemble_by_hand():
    # two peers, 3 classes, label 0: z - z_y then the per-class minimum
    z1, z2 = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 2.0, -3.0]])
    y = torch.tensor([0])
    teacher = torch.tensor([[0.0, -1.0, -4.0]])  # min(2-2, 1-1)=0; min(1-2, 2-1)=-1; min(0-2, -3-1)=-4
    t = 3.0

    def kl(z):
        p, q = torch.softmax(teacher[0] / t, 0), torch.softmax(z[0] / t, 0)
        return float((p * (p / q).log()).sum()) * t * t

    expected = (F.cross_entropy(z1, y) + F.cross_entropy(z2, y)).item() + kl(z1) + kl(z2)
    assert kdcl_loss([z1, z2], y, temperature=t).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="ensemble"):
        kdcl_loss([z1, z2], y, ensemble="best")
    with pytest.raises(ValueError, match="at least 2 peers"):
        kdcl_loss([z1], y)


@pytest.mark.parametrize("method", [dml, kdcl])
def test_a_cohort_learns_and_every_peer_is_updated(digits, method):
    seed_everything(0)
    cohort = build_model("cohort", digits.input_shape, peer="mlp", peers=3, options={"hidden": [32]})
    before = [[p.detach().clone() for p in peer.parameters()] for peer in cohort.peers]
    d = Distiller(cohort, None, method(peers=3), epochs=3, lr=1e-2, batch_size=64, progress=False)
    d.fit(digits.train, digits.val)
    for peer, old in zip(cohort.peers, before):
        assert any(not torch.equal(p, q) for p, q in zip(peer.parameters(), old))
        assert evaluate(peer, digits.val)["accuracy"] > 80  # each peer is a working classifier
    assert d.history[-1]["val/accuracy"] > 85
    assert math.isfinite(d.history[-1]["train/loss"])


def test_a_cohort_trains_from_a_recipe(tmp_path, cache_dir):
    from distill.experiment import run_recipe
    from distill.recipe import parse_recipe

    cohort = {"model": "cohort", "options": {"peer": "mlp", "peers": 2, "options": {"hidden": [32]}}}
    recipe = parse_recipe({
        "name": "mutual", "data": {"dataset": "digits", "val_size": 100},
        "student": {"model": "mlp", "options": {"hidden": [32]}},
        "methods": [{"method": "scratch"}, {"method": "dml", "peers": 2, "student": cohort},
                    {"method": "kdcl", "peers": 2, "student": cohort}],
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "progress": False},
        "evaluation": {"latency_batch_size": 8, "latency_repeats": 1},
    })
    summary = run_recipe(recipe, tmp_path / "run")
    scratch, dml_row, kdcl_row = summary["rows"]
    assert [r["label"] for r in summary["rows"]] == ["scratch", "dml", "kdcl"]
    assert all(r["test_accuracy"] > 80 for r in summary["rows"])
    # a cohort's row is its first peer, the network one deploys (the size of the scratch student) ...
    assert dml_row["params"] == kdcl_row["params"] == scratch["params"]
    # ... and its peers' ensemble is reported beside it
    assert all(0 < r["ensemble_test_accuracy"] <= 100 for r in (dml_row, kdcl_row))
    again = run_recipe(recipe, tmp_path / "run", resume=True)
    assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in summary["rows"]]


def test_one_loss_by_hand():
    from distill.losses import one_loss

    z1, z2, ze = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    y = torch.tensor([0])
    t = 3.0
    pe = torch.softmax(ze[0] / t, 0)

    def kl(z):
        q = torch.softmax(z[0] / t, 0)
        return float((pe * (pe / q).log()).sum()) * t * t

    ce = sum(F.cross_entropy(z, y).item() for z in (z1, z2, ze))
    assert one_loss([z1, z2, ze], y, temperature=t).item() == pytest.approx(ce + kl(z1) + kl(z2), rel=1e-5)


def test_one_model_gates_its_branches_and_every_branch_learns(digits):
    from distill.methods import one

    seed_everything(0)
    model = build_model("one", digits.input_shape, depth=8, widths=[8, 8, 16], branches=3)
    x = digits.val.inputs[:5]
    model.eval()
    gate = model.gate(model.trunk(x))
    assert torch.allclose(gate.sum(1), torch.ones(5), atol=1e-6)
    branch_logits = torch.stack([b(model.trunk(x)) for b in model.branches], 1)
    assert torch.allclose(model(x), (gate.unsqueeze(2) * branch_logits).sum(1), atol=1e-5)
    before = [[p.detach().clone() for p in b.parameters()] for b in model.branches]
    model.train()
    d = Distiller(model, None, one(branches=3), epochs=3, lr=1e-2, batch_size=64, progress=False)
    d.fit(digits.train, digits.val)
    for k, old in enumerate(before):
        assert any(not torch.equal(p, q) for p, q in zip(model.branches[k].parameters(), old))
        assert evaluate(model.branch(k), digits.val)["accuracy"] > 70
    assert d.history[-1]["val/accuracy"] > 80


def test_dml_alternates_each_peer_sees_the_updated_peers_before_it(digits):
    # Algorithm 1 of Zhang et al. 2018 by hand on one batch: peer 0 steps on its loss against peer 1's
    # prediction, then peer 1 steps against peer 0's *updated* prediction.
    x, y = digits.train.inputs[:32], digits.train.labels[:32]
    seed_everything(0)
    cohort = build_model("cohort", digits.input_shape, peer="mlp", peers=2, options={"hidden": [16]})
    manual = [copy.deepcopy(peer) for peer in cohort.peers]
    lr = 0.5
    for k in range(2):
        logits = [peer(x) for peer in manual]
        loss = dml_loss(logits, y, peer=k)
        grads = torch.autograd.grad(loss, list(manual[k].parameters()))
        with torch.no_grad():
            for p, g in zip(manual[k].parameters(), grads):
                p -= lr * g
    d = Distiller(cohort, None, dml(peers=2), epochs=1, lr=lr, batch_size=32, optimizer="sgd", momentum=0.0,
                  schedule="constant", progress=False)
    d.fit(torch.utils.data.TensorDataset(x, y), None)
    for peer, expected in zip(cohort.peers, manual):
        for p, q in zip(peer.parameters(), expected.parameters()):
            assert torch.allclose(p, q, atol=1e-6)
    # the one-pass variant differs: peer 1 then learns from peer 0's prediction before its update
    seed_everything(0)
    together = build_model("cohort", digits.input_shape, peer="mlp", peers=2, options={"hidden": [16]})
    Distiller(together, None, dml(peers=2, alternate=False), epochs=1, lr=lr, batch_size=32, optimizer="sgd",
              momentum=0.0, schedule="constant", progress=False).fit(torch.utils.data.TensorDataset(x, y), None)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(together.peers[0].parameters(),
                                                                manual[0].parameters()))
    assert not all(torch.allclose(p, q, atol=1e-6) for p, q in zip(together.peers[1].parameters(),
                                                                 manual[1].parameters()))


def test_alternating_groups_refuse_gradient_accumulation(digits):
    cohort = build_model("cohort", digits.input_shape, peer="mlp", peers=2, options={"hidden": [8]})
    with pytest.raises(DistillError, match="grad_accum 1"):
        Distiller(cohort, None, dml(peers=2), epochs=1, grad_accum=2, progress=False).fit(digits.train, None)
