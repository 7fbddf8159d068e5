"""VID, FSP, AB and FT: each against loops or a hand case, zero on agreement where it applies, gradients, bad input."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.ab import ab_loss
from distill.losses.fsp import fsp_loss, fsp_matrix
from distill.losses.ft import (FactorTransferLoss, Paraphraser, ParaphraserLoss, Translator, ft_loss)
from distill.losses.vid import VID, vid_loss

D = torch.float64


def softplus(x):
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------ VID
def test_vid_loss_by_loops_4d_2d_and_tokens():
    torch.manual_seed(0)
    mu, t, alpha = torch.randn(2, 3, 2, 2, dtype=D), torch.randn(2, 3, 2, 2, dtype=D), torch.randn(3, dtype=D)
    eps = 1e-6
    total = 0.0
    for n in range(2):
        for h in range(2):
            for w in range(2):
                for c in range(3):
                    var = softplus(float(alpha[c])) + eps
                    total += 0.5 * (math.log(var) + float(t[n, c, h, w] - mu[n, c, h, w]) ** 2 / var)
    assert vid_loss(mu, t, alpha, eps).item() == pytest.approx(total / (2 * 2 * 2 * 3), rel=1e-6)  # mean per element

    mu2, t2 = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    var = [softplus(float(a)) + eps for a in alpha]
    expected = sum(0.5 * (math.log(var[c]) + float(t2[n, c] - mu2[n, c]) ** 2 / var[c])
                   for n in range(4) for c in range(3)) / (4 * 3)
    assert vid_loss(mu2, t2, alpha, eps).item() == pytest.approx(expected, rel=1e-6)
    # (N, L, C): channels last, every token a row
    assert vid_loss(mu2.reshape(2, 2, 3), t2.reshape(2, 2, 3), alpha, eps).item() == pytest.approx(expected, rel=1e-6)


def test_vid_loss_refuses_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        vid_loss(torch.randn(2, 3), torch.randn(2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="per channel"):
        vid_loss(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(4))


def test_vid_module_is_regressor_plus_function_and_starts_at_init_variance():
    torch.manual_seed(0)
    vid = VID(3, 5, hidden=4, init_variance=2.0)
    assert torch.allclose(F.softplus(vid.alpha) + vid.eps, torch.full((5,), 2.0))
    convs = [m for m in vid.regressor if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 4, (1, 1)), (4, 4, (1, 1)),
                                                                               (4, 5, (1, 1))]
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    assert vid(s, t).item() == pytest.approx(vid_loss(vid.regressor(s), t, vid.alpha).item(), rel=1e-6)
    # (N, C): the 1x1 convolutions act as linear layers per sample
    s2, t2 = torch.randn(6, 3), torch.randn(6, 5)
    mu = vid.regressor(s2[:, :, None, None])[:, :, 0, 0]
    assert vid(s2, t2).item() == pytest.approx(vid_loss(mu, t2, vid.alpha).item(), rel=1e-6)
    # a larger student map is average-pooled to the teacher's size
    big = torch.randn(2, 3, 8, 8)
    assert vid(big, t).item() == pytest.approx(vid(F.avg_pool2d(big, 2), t).item(), rel=1e-6)


def test_vid_gradients_reach_student_regressor_and_variance_not_teacher():
    vid = VID(3, 4, batch_norm=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 4, 4, 4)
    vid(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert vid.alpha.grad is not None and vid.alpha.grad.abs().sum() > 0
    assert all(p.grad is not None for p in vid.regressor.parameters())
    assert t.grad is None


def test_vid_training_lowers_the_nll():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3, 2, 2), torch.randn(8, 4, 2, 2)
    t = t + s[:, :1]  # partly predictable from the student
    vid = VID(3, 4)
    opt = torch.optim.Adam(vid.parameters(), lr=0.05)
    first = vid(s, t).item()
    for _ in range(30):
        opt.zero_grad()
        loss = vid(s, t)
        loss.backward()
        opt.step()
    assert vid(s, t).item() < first - 0.5 / 4  # the per-element NLL of 4 channels


def test_vid_builds_lazily_and_survives_state_dict_round_trips():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 2, 2), torch.randn(4, 6, 2, 2)
    lazy = VID()
    assert not lazy.built and list(lazy.parameters()) == []
    snapshot = copy.deepcopy(lazy.state_dict())  # what the engine's probe saves
    with torch.no_grad():
        value = lazy(s, t)
    assert lazy.built and lazy.dims.tolist() == [3, 6, 6]
    weights = copy.deepcopy(lazy.state_dict())
    lazy.load_state_dict(snapshot)  # an unbuilt snapshot keeps the built layers
    assert all(torch.equal(weights[k], v) for k, v in lazy.state_dict().items())
    # a built state loads into a fresh VID() and gives the same loss
    fresh = VID()
    fresh.load_state_dict(weights)
    assert fresh(s, t).item() == pytest.approx(value.item(), rel=1e-6)
    # inside a parent module too (the engine's term_modules)
    parent, other = torch.nn.ModuleDict({"vid": VID()}), torch.nn.ModuleDict({"vid": lazy})
    parent.load_state_dict(other.state_dict())
    assert parent["vid"](s, t).item() == pytest.approx(value.item(), rel=1e-6)
    with pytest.raises(RuntimeError):
        VID(5, 6).load_state_dict(weights)


def test_vid_refuses_bad_input():
    vid = VID(3, 4)
    with pytest.raises(ValueError, match="batch"):
        vid(torch.randn(2, 3, 2, 2), torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="built for 3 student and 4 teacher"):
        vid(torch.randn(2, 5, 2, 2), torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="rank"):
        vid(torch.randn(2, 3, 2, 2), torch.randn(2, 4))
    with pytest.raises(ValueError, match="both"):
        VID(3)


# ------------------------------------------------------------------------ FSP
def _fsp_by_loops(a, b):
    n, c1, h, w = a.shape
    c2 = b.shape[1]
    g = torch.zeros(n, c1, c2, dtype=D)
    for k in range(n):
        for i in range(c1):
            for j in range(c2):
                g[k, i, j] = sum(float(a[k, i, y, x] * b[k, j, y, x]) for y in range(h) for x in range(w)) / (h * w)
    return g


def test_fsp_matrix_by_loops_and_pooling():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 2, 3, dtype=D), torch.randn(2, 4, 2, 3, dtype=D)
    assert torch.allclose(fsp_matrix(a, b).double(), _fsp_by_loops(a, b), atol=1e-6)
    big = torch.randn(2, 3, 4, 6, dtype=D)
    # 2x2 block means by hand
    pooled = torch.stack([torch.stack([big[:, :, 2 * y:2 * y + 2, 2 * x:2 * x + 2].mean((2, 3)) for x in range(3)], -1)
                          for y in range(2)], -2)
    assert torch.allclose(fsp_matrix(big, b).double(), _fsp_by_loops(pooled, b), atol=1e-6)
    assert fsp_matrix(b, big).shape == (2, 4, 3)


def test_fsp_loss_by_loops():
    torch.manual_seed(1)
    shapes = [(2, 3, 4, 4), (2, 2, 4, 4), (2, 5, 2, 2)]
    s = [torch.randn(*sh, dtype=D) for sh in shapes]
    t = [torch.randn(sh[0], sh[1], 2 * sh[2], 2 * sh[3], dtype=D) for sh in shapes]  # teacher maps larger
    # pair 0 has equal sizes; in pair 1 the first map is twice the second's size, so it is pooled by 2
    gs = [_fsp_by_loops(s[0], s[1]), _fsp_by_loops(F.avg_pool2d(s[1], 2), s[2])]
    gt = [_fsp_by_loops(t[0], t[1]), _fsp_by_loops(F.avg_pool2d(t[1], 2), t[2])]
    pairs = []
    for a, b in zip(gs, gt):
        c1, c2 = a.shape[1:]
        pairs.append(sum(float(((a[n] - b[n]) ** 2).sum()) for n in range(2)) / 2 / (c1 * c2))
    assert fsp_loss(s, t).item() == pytest.approx(sum(pairs) / 2, rel=1e-6)


def test_fsp_zero_on_agreement_gradients_and_errors():
    maps = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]
    assert fsp_loss([m.clone() for m in maps], maps).item() == pytest.approx(0.0, abs=1e-10)
    s = [torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 4, 4, 4, requires_grad=True)]
    fsp_loss(s, maps).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(m.grad is None for m in maps)
    with pytest.raises(ValueError, match="as many"):
        fsp_loss(maps, maps + [torch.randn(2, 4, 4, 4)])
    with pytest.raises(ValueError, match="equal student and teacher channels"):
        fsp_loss(maps, [torch.randn(2, 5, 4, 4), maps[1]])
    with pytest.raises(ValueError, match="at least two"):
        fsp_loss(maps[:1], maps[:1])
    with pytest.raises(ValueError, match="single tensor"):
        fsp_loss(maps[0], maps[0])
    with pytest.raises(ValueError, match="batch"):
        fsp_loss(maps, [torch.randn(3, 3, 4, 4), torch.randn(3, 4, 4, 4)])


# ------------------------------------------------------------------------- AB
def test_ab_by_loops_with_scalar_and_per_channel_margin():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 2, 2, dtype=D), torch.randn(2, 3, 2, 2, dtype=D)
    for margin in (1.0, torch.tensor([0.5, 1.0, 2.0], dtype=D)):
        total = 0.0
        for n in range(2):
            for c in range(3):
                m = float(margin[c]) if isinstance(margin, torch.Tensor) else margin
                for y in range(2):
                    for x in range(2):
                        sv, tv = float(s[n, c, y, x]), float(t[n, c, y, x])
                        if tv > 0:
                            total += (m - sv) ** 2 if sv < m else 0.0
                        else:
                            total += (m + sv) ** 2 if sv > -m else 0.0
        assert ab_loss(s, t, margin).item() == pytest.approx(total / 2, rel=1e-6)
        assert ab_loss(s, t, margin, "mean").item() == pytest.approx(total / 2 / s[0].numel(), rel=1e-6)


def test_ab_hinge_behaviour_and_gradients():
    t = torch.tensor([[3.0, -0.2, 0.1, -4.0]])
    # past the margin on the teacher's side: nothing to pay
    assert ab_loss(torch.tensor([[1.5, -1.0, 1.0, -2.0]]), t).item() == 0.0
    # equal to the teacher is not enough inside the margin: (1-0.1)^2 + (1-0.2)^2
    assert ab_loss(t.clone(), t).item() == pytest.approx(0.81 + 0.64, rel=1e-6)
    s = torch.zeros(1, 4, requires_grad=True)
    ab_loss(s, t).backward()
    assert (s.grad[0, [0, 2]] < 0).all() and (s.grad[0, [1, 3]] > 0).all()  # descent pushes s toward t's sign
    assert t.grad is None
    with pytest.raises(ValueError, match="connector"):
        ab_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="per-channel margin"):
        ab_loss(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), torch.ones(4))


# ------------------------------------------------------------------------- FT
def test_ft_loss_by_hand_and_loops():
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    # s/|s| = (0.6, 0.8): L1 distance |0.6 - 1| + 0.8 = 1.2, per entry 0.6
    assert ft_loss(s, t, reduction="norm").item() == pytest.approx(1.2, rel=1e-6)
    assert ft_loss(s, t).item() == pytest.approx(0.6, rel=1e-6)
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 2, 2, dtype=D), torch.randn(3, 8, dtype=D)
    for p in (1, 2):
        total, entries = 0.0, 0.0
        for n in range(3):
            a = [float(v) for v in s[n].flatten()]
            b = [float(v) for v in t[n]]
            na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
            total += sum(abs(x / na - y / nb) ** p for x, y in zip(a, b)) ** (1 / p)
            entries += sum(abs(x / na - y / nb) ** p for x, y in zip(a, b))
        assert ft_loss(s, t, p=p, reduction="norm").item() == pytest.approx(total / 3, rel=1e-6)
        assert ft_loss(s, t, p=p).item() == pytest.approx(entries / 24, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        ft_loss(s, t, reduction="sum")


def test_ft_loss_zero_on_agreement_gradients_and_errors():
    t = torch.randn(2, 4, 2, 2)
    assert ft_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    s = torch.randn(2, 4, 2, 2, requires_grad=True)
    ft_loss(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match="batch"):
        ft_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="equal size"):
        ft_loss(torch.randn(2, 4), torch.randn(2, 5))


def test_paraphraser_and_translator_shapes():
    para, trans = Paraphraser(6, rate=0.5), Translator(4, 3)
    x = torch.randn(2, 6, 4, 4)
    assert para.factor_channels == 3
    assert para.encode(x).shape == (2, 3, 4, 4) and para(x).shape == x.shape
    assert trans(torch.randn(2, 4, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="Paraphraser expects"):
        para(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="factor channels"):
        FactorTransferLoss(para, Translator(4, 2))


def test_paraphraser_loss_trains_the_paraphraser_only():
    torch.manual_seed(0)
    para = Paraphraser(4)
    loss_fn = ParaphraserLoss(para)
    t = torch.randn(8, 4, 4, 4)
    student = torch.randn(8, 3, requires_grad=True)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.01)
    first = loss_fn(student, t).item()
    assert first == pytest.approx(F.mse_loss(para(t), t).item(), rel=1e-6)
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(student, t)
        loss.backward()
        opt.step()
    assert student.grad is None
    assert loss_fn(student, t).item() < 0.7 * first


def test_factor_transfer_loss_freezes_the_paraphraser():
    torch.manual_seed(0)
    para = Paraphraser(6)
    ParaphraserLoss(para)(None, torch.randn(4, 6, 4, 4))  # a train-mode pass: running stats move off their start
    trans = Translator(3, para.factor_channels)
    loss_fn = FactorTransferLoss(para, trans).train()
    stats = copy.deepcopy(para.state_dict())
    s = torch.randn(4, 3, 8, 8, requires_grad=True)  # larger than the teacher map: pooled
    t = torch.randn(4, 6, 4, 4)
    value = loss_fn(s, t)
    value.backward()
    assert para.training  # mode restored
    assert all(torch.equal(stats[k], v) for k, v in para.state_dict().items())  # eval mode: stats untouched
    assert all(p.grad is None for p in para.parameters())
    assert all(p.grad is not None for p in trans.parameters())
    assert s.grad is not None and s.grad.abs().sum() > 0
    with torch.no_grad():
        expected = ft_loss(trans(F.avg_pool2d(s, 2)), para.eval().encode(t))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
