import math

import pytest
import torch

from distill.losses import cross_entropy, hint_loss, kd_loss


def test_kd_loss_matches_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[3.0, 2.0, 1.0]])
    T = 2.0
    ps = [math.exp(v / T) for v in (1, 2, 3)]
    pt = [math.exp(v / T) for v in (3, 2, 1)]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    expected = T**2 * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_a_batch_mean():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    one = kd_loss(s[:1], t[:1], 1.0)
    both = kd_loss(s, t, 1.0)  # the second sample agrees, so contributes zero
    assert both.item() == pytest.approx(one.item() / 2, rel=1e-6)


def test_kd_loss_zero_when_logits_agree_up_to_a_constant():
    s = torch.randn(5, 10)
    assert kd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, s + 3.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)


def test_kd_loss_positive_when_logits_differ():
    torch.manual_seed(0)
    assert kd_loss(torch.randn(4, 10), torch.randn(4, 10), 4.0).item() > 0


def test_kd_loss_large_temperature_tends_to_logit_matching():
    # Hinton et al. 2015, section 2.1: for large T, T^2 KL -> (1 / 2C) * ||centred logit difference||^2
    torch.manual_seed(0)
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    d = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
    limit = (d**2).sum(1).mean() / (2 * 10)
    # kd_loss computes in float32: at T = 100 the KL is small next to the log-probabilities, so rounding
    # (which varies with the number of threads) moves it by about 0.1%
    assert kd_loss(s, t, 100.0).item() == pytest.approx(limit.item(), rel=1e-2)
    assert abs(kd_loss(s, t, 100.0).item() - limit.item()) < abs(kd_loss(s, t, 3.0).item() - limit.item())


def test_kd_loss_gradient_reaches_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t.detach(), 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # the gradient w.r.t. student logits is T * (softmax(s/T) - softmax(t/T)) / N
    expected = 2.0 * (torch.softmax(s / 2, 1) - torch.softmax(t / 2, 1)) / 3
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


def test_kd_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0)


def test_kd_loss_low_precision_inputs_computed_in_float32():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    out = kd_loss(s.bfloat16(), t.bfloat16(), 4.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(kd_loss(s.bfloat16().float(), t.bfloat16().float(), 4.0).item(), rel=1e-6)


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_hint_loss_is_mean_squared_error():
    s = torch.zeros(2, 3, 4, 4)
    t = torch.full((2, 3, 4, 4), 2.0)
    assert hint_loss(s, t).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="connector"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 4))
