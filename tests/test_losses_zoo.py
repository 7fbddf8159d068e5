"""Each loss against a second, straightforward (loop) formulation, at zero on agreement, and its gradients."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import at_loss, cc_loss, dist_loss, dkd_loss, kd_loss, pkt_loss, rkd_loss, sp_loss

torch.manual_seed(0)
S, T = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)


def test_dkd_decomposes_kd():
    # KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD, per sample (Zhao et al. 2022, eq. 2-5)
    for i in range(4):
        s, t = torch.randn(1, 10), torch.randn(1, 10)
        y = torch.tensor([i])
        p_t_y = torch.softmax(t / 3.0, -1)[0, i].item()
        decoupled = dkd_loss(s, t, y, alpha=1.0, beta=1 - p_t_y, temperature=3.0)
        assert decoupled.item() == pytest.approx(kd_loss(s, t, 3.0).item(), rel=1e-4)


def test_dkd_parts_by_hand():
    s = torch.tensor([[2.0, 1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 2.0]])
    y = torch.tensor([0])
    ps, pt = torch.softmax(s, -1)[0], torch.softmax(t, -1)[0]
    tckd = pt[0] * math.log(pt[0] / ps[0]) + (1 - pt[0]) * math.log((1 - pt[0]) / (1 - ps[0]))
    qs, qt = torch.softmax(s[0, 1:], -1), torch.softmax(t[0, 1:], -1)
    nckd = (qt * (qt / qs).log()).sum()
    assert dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=1.0).item() == pytest.approx(float(tckd), rel=1e-5)
    assert dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=1.0).item() == pytest.approx(float(nckd), rel=1e-5)


def test_attention_transfer_by_hand():
    s = torch.randn(2, 3, 2, 2)
    t = torch.randn(2, 5, 2, 2)
    total = 0.0
    for n in range(2):
        qs = (s[n] ** 2).mean(0).flatten()
        qt = (t[n] ** 2).mean(0).flatten()
        total += ((qs / qs.norm() - qt / qt.norm()) ** 2).sum()
    assert at_loss(s, t).item() == pytest.approx(float(total) / (2 * 4), rel=1e-5)
    with pytest.raises(ValueError, match="spatial"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))


def test_similarity_preserving_by_loops():
    n = len(S)
    def gram(f):
        g = [[float(f[i] @ f[j]) for j in range(n)] for i in range(n)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]
    gs, gt = gram(S), gram(T)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2
    assert sp_loss(S, T).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_by_loops():
    n = len(S)
    def distances(f):
        d = {(i, j): float((f[i] - f[j]).norm()) for i in range(n) for j in range(n) if i != j}
        mean = sum(d.values()) / len(d)
        return {k: v / mean for k, v in d.items()}
    def angles(f):
        out = []
        for j, i, k in itertools.product(range(n), repeat=3):
            a, b = f[i] - f[j], f[k] - f[j]
            na, nb = a.norm(), b.norm()
            out.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0)
        return torch.tensor(out)
    ds, dt = distances(S), distances(T)
    d_loss = F.smooth_l1_loss(torch.tensor([ds[k] for k in ds]), torch.tensor([dt[k] for k in ds]))
    a_loss = F.smooth_l1_loss(angles(S), angles(T))
    expected = 25 * d_loss + 50 * a_loss
    assert rkd_loss(S, T).item() == pytest.approx(float(expected), rel=1e-5)


def test_pkt_by_loops():
    n = len(S)
    def cond(f):
        f = f / f.norm(dim=1, keepdim=True)
        k = [[(float(f[i] @ f[j]) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[v / sum(row) for v in row] for row in k]
    ps, pt = cond(S), cond(T)
    eps = 1e-7
    expected = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)) / n
    assert pkt_loss(S, T).item() == pytest.approx(expected, rel=1e-6)


def test_cc_by_loops():
    n, gamma = len(S), 0.4
    def corr(f):
        f = f / f.norm(dim=1, keepdim=True)
        return [[math.exp(-gamma * float(((f[i] - f[j]) ** 2).sum())) for j in range(n)] for i in range(n)]
    cs, ct = corr(S), corr(T)
    expected = sum((cs[i][j] - ct[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2
    assert cc_loss(S, T).item() == pytest.approx(expected, rel=1e-6)


def test_dist_against_numpy_corrcoef():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    ys, yt = torch.softmax(s, -1).numpy(), torch.softmax(t, -1).numpy()
    inter = np.mean([1 - np.corrcoef(ys[i], yt[i])[0, 1] for i in range(6)])
    intra = np.mean([1 - np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(4)])
    assert dist_loss(s, t, beta=2.0, gamma=0.5).item() == pytest.approx(2 * inter + 0.5 * intra, rel=1e-4)


FEATURE_LOSSES = [sp_loss, rkd_loss, pkt_loss, cc_loss]


@pytest.mark.parametrize("loss", FEATURE_LOSSES + [dist_loss, kd_loss])
def test_zero_when_student_equals_teacher(loss):
    x = torch.randn(6, 8)
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_zero_when_equal_dkd_and_at():
    x = torch.randn(4, 10)
    assert dkd_loss(x, x.clone(), torch.tensor([0, 1, 2, 3])).item() == pytest.approx(0.0, abs=1e-5)
    f = torch.randn(2, 3, 4, 4)
    assert at_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-7)  # attention is scale-free


@pytest.mark.parametrize("loss", FEATURE_LOSSES + [dist_loss])
def test_gradients_reach_the_student_only(loss):
    s = torch.randn(6, 10, requires_grad=True)
    t = torch.randn(6, 10, requires_grad=True)
    loss(s, t.detach()).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_relational_losses_accept_different_widths_and_refuse_bad_batches():
    for loss in FEATURE_LOSSES:
        assert torch.isfinite(loss(torch.randn(4, 3, 2, 2), torch.randn(4, 7)))
        with pytest.raises(ValueError):
            loss(torch.randn(4, 3), torch.randn(5, 3))


def test_nst_by_loops():
    from distill.losses import nst_loss

    s, t = torch.randn(2, 3, 2, 2, dtype=torch.float64), torch.randn(2, 4, 2, 2, dtype=torch.float64)
    total = 0.0
    for n in range(2):
        fs = [v / v.norm() for v in s[n].flatten(1)]
        ft = [v / v.norm() for v in t[n].flatten(1)]
        k = lambda a, b: float(a @ b) ** 2
        mmd = (sum(k(a, b) for a in ft for b in ft) / 16 + sum(k(a, b) for a in fs for b in fs) / 9
               - 2 * sum(k(a, b) for a in fs for b in ft) / 12)
        total += mmd
    assert nst_loss(s, t).item() == pytest.approx(total / 2, rel=1e-6)
    f = torch.randn(2, 3, 4, 4)
    assert nst_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="spatial"):
        nst_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))


# --- reference-code scalings: the factor between each loss here and its authors' code, on a hand-made batch

def test_pkt_is_n_times_the_reference_mean_over_all_pairs():
    s, t = torch.randn(6, 5), torch.randn(6, 4)

    def conditional(x):
        x = F.normalize(x, dim=1)
        similarity = (x @ x.T + 1) / 2
        return similarity / similarity.sum(1, keepdim=True)

    p_s, p_t = conditional(s), conditional(t)
    reference = (p_t * torch.log((p_t + 1e-7) / (p_s + 1e-7))).mean()  # the mean over all N^2 entries
    assert pkt_loss(s, t).item() == pytest.approx(6 * reference.item(), rel=1e-5)


def test_rkd_distance_is_n_over_n_minus_1_times_the_reference_mean_with_the_diagonal():
    s, t = torch.randn(5, 3), torch.randn(5, 4)

    def normalised_distances(x):
        d = torch.cdist(x, x)
        return d / d[d > 0].mean()

    reference = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))  # over all N^2, diagonal too
    ours = rkd_loss(s, t, distance_weight=1.0, angle_weight=0.0)
    assert ours.item() == pytest.approx(5 / 4 * reference.item(), rel=1e-5)


def test_ca_mkd_confidence_weighting_has_m_times_the_reference_gradient():
    from distill.losses import multi_teacher_kd_loss, teacher_mixture_weights

    torch.manual_seed(4)
    m, temperature = 3, 2.0
    student = torch.randn(4, 5, requires_grad=True)
    teachers, labels = [torch.randn(4, 5) for _ in range(m)], torch.tensor([0, 1, 2, 3])
    ours = multi_teacher_kd_loss(student, teachers, labels, temperature=temperature, weighting="confidence")
    (grad_ours,) = torch.autograd.grad(ours, student)
    # the reference: per-sample, per-teacher KL weighted by the confidence weights, summed, / (N * M)
    w = teacher_mixture_weights(teachers, labels, "confidence")
    log_q = F.log_softmax(student / temperature, 1)
    kl = torch.stack([F.kl_div(log_q, torch.softmax(z / temperature, 1), reduction="none").sum(1)
                      for z in teachers], 1) * temperature**2
    reference = (w * kl).sum() / (4 * m)
    (grad_reference,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(grad_ours, m * grad_reference, rtol=1e-4, atol=1e-6)
