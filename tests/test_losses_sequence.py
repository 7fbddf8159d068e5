"""Per-position logit losses on (batch, ..., classes): masks, ignore_index, num_items, GKD's generalized JSD."""
import math

import pytest
import torch

from distill.losses import cross_entropy, dist_loss, dkd_loss, generalized_jsd_loss, kd_loss

LN = math.log


def hand_pair():
    """Three positions of two classes: student [ln 3, 0] (p = 3/4, 1/4) against a uniform teacher; a
    position of junk; a position where both agree."""
    student = torch.tensor([[[LN(3.0), 0.0], [50.0, -50.0], [1.0, 2.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [-50.0, 50.0], [1.0, 2.0]]])
    return student, teacher


KL_T_S = 0.5 * LN(0.5 / 0.75) + 0.5 * LN(0.5 / 0.25)  # KL(uniform || [3/4, 1/4])
KL_S_T = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)  # KL([3/4, 1/4] || uniform)


def test_kd_mask_by_hand():
    student, teacher = hand_pair()
    keep = torch.tensor([[True, False, True]])
    assert kd_loss(student, teacher, 1.0, mask=keep).item() == pytest.approx(KL_T_S / 2, rel=1e-6)
    assert kd_loss(student, teacher, 1.0, mask=keep, num_items=4).item() == pytest.approx(KL_T_S / 4, rel=1e-6)
    # T^2 stays: at T = 2 the first position is KL(uniform || softmax([ln 3, 0] / 2)), times 4
    p = torch.softmax(torch.tensor([LN(3.0), 0.0]) / 2, 0)
    at_2 = 4 * float(0.5 * (0.5 / p).log().sum())
    assert kd_loss(student, teacher, 2.0, mask=keep).item() == pytest.approx(at_2 / 2, rel=1e-5)


def test_mask_from_labels_with_ignore_index():
    student, teacher = hand_pair()
    labels = torch.tensor([[1, -100, 0]])
    assert kd_loss(student, teacher, 1.0, mask=labels).item() == pytest.approx(KL_T_S / 2, rel=1e-6)
    assert kd_loss(student, teacher, 1.0, mask=torch.tensor([[1, 7, 0]]), ignore_index=7).item() == \
        pytest.approx(KL_T_S / 2, rel=1e-6)
    assert generalized_jsd_loss(student, teacher, beta=0.0, mask=labels).item() == pytest.approx(KL_T_S / 2, rel=1e-6)


def test_cross_entropy_ignores_labels_and_takes_num_items():
    logits = torch.tensor([[[LN(3.0), 0.0], [9.0, -9.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, -100, 1]])
    expected = (LN(4 / 3) + LN(2.0)) / 2  # -log(3/4), -log(1/2)
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert cross_entropy(logits, labels, num_items=5).item() == pytest.approx(2 * expected / 5, rel=1e-6)
    keep_first = torch.tensor([[True, True, False]])  # a mask and the labels' -100 both drop positions
    assert cross_entropy(logits, labels, mask=keep_first).item() == pytest.approx(LN(4 / 3), rel=1e-6)
    with pytest.raises(ValueError, match="labels of shape"):
        cross_entropy(logits, labels.reshape(-1))


def test_dkd_skips_ignored_labels():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[0, -100, 4], [-100, 2, 1]])
    keep = labels != -100
    expected = dkd_loss(s[keep], t[keep], labels[keep])
    assert dkd_loss(s, t, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert dkd_loss(s, t, labels, num_items=8).item() == pytest.approx(expected.item() * 4 / 8, rel=1e-6)
    only_first_row = torch.tensor([[True, True, True], [False, False, False]])
    assert dkd_loss(s, t, labels, mask=only_first_row).item() == pytest.approx(
        dkd_loss(s[0][[0, 2]], t[0][[0, 2]], labels[0][[0, 2]]).item(), rel=1e-6)


def random_tokens(seed=0, shape=(3, 4, 6)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, ) * 2
    t = torch.randn(*shape, generator=g, ) * 2
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    keep = torch.rand(shape[:-1], generator=g) > 0.4
    keep[0, 0] = True
    return s, t, labels.masked_fill(~keep, -100), keep


LOSSES_WITH_TEACHER = {
    "kd": lambda s, t, y, **kw: kd_loss(s, t, 2.0, **kw),
    "generalized_jsd": lambda s, t, y, **kw: generalized_jsd_loss(s, t, beta=0.3, temperature=1.5, **kw),
    "dkd": lambda s, t, y, **kw: dkd_loss(s, t, y, **kw),
    "ce": lambda s, t, y, **kw: cross_entropy(s, y, **kw),
    "dist": lambda s, t, y, **kw: dist_loss(s, t, **kw),
}


@pytest.mark.parametrize("name", sorted(LOSSES_WITH_TEACHER))
def test_masked_sequence_equals_the_kept_rows(name):
    loss = LOSSES_WITH_TEACHER[name]
    s, t, labels, keep = random_tokens()
    masked = loss(s, t, labels, mask=keep)
    rows = loss(s[keep], t[keep], labels[keep])
    assert masked.item() == pytest.approx(rows.item(), rel=1e-5)
    # an all-True mask is the same as no mask, and (N, C) without a mask is the per-sample mean
    flat_s, flat_t, flat_y = s.reshape(-1, 6), t.reshape(-1, 6), labels.reshape(-1).clamp_min(0)
    assert loss(flat_s, flat_t, flat_y, mask=torch.ones(12, dtype=torch.bool)).item() == pytest.approx(
        loss(flat_s, flat_t, flat_y).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["kd", "generalized_jsd", "dkd", "ce"])
def test_micro_batches_with_num_items_add_up_to_the_whole_batch(name):
    loss = LOSSES_WITH_TEACHER[name]
    s, t, labels, keep = random_tokens(seed=3)
    whole_s = s.clone().requires_grad_()
    whole = loss(whole_s, t, labels, mask=keep)
    (whole_grad,) = torch.autograd.grad(whole, whole_s)

    total = int(keep.sum())
    parts_s = s.clone().requires_grad_()
    summed = sum(loss(parts_s[part], t[part], labels[part], mask=keep[part], num_items=total)
                 for part in (slice(0, 1), slice(1, 3)))
    (parts_grad,) = torch.autograd.grad(summed, parts_s)
    assert summed.item() == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close(parts_grad, whole_grad, rtol=1e-5, atol=1e-7)
    # num_items may come as a tensor (Hugging Face's num_items_in_batch)
    as_tensor = loss(s[:1], t[:1], labels[:1], mask=keep[:1], num_items=torch.tensor(total))
    assert as_tensor.item() == pytest.approx(loss(s[:1], t[:1], labels[:1], mask=keep[:1], num_items=total).item())


def test_nothing_counted_gives_zero_not_nan():
    s, t, labels, _ = random_tokens()
    none = torch.zeros(3, 4, dtype=torch.bool)
    for loss in LOSSES_WITH_TEACHER.values():
        assert loss(s, t, labels, mask=none).item() == 0.0


def test_generalized_jsd_end_points_are_forward_and_reverse_kl():
    student, teacher = hand_pair()
    first = (student[:, :1], teacher[:, :1])
    assert generalized_jsd_loss(*first, beta=0.0).item() == pytest.approx(KL_T_S, rel=1e-6)
    assert generalized_jsd_loss(*first, beta=1.0).item() == pytest.approx(KL_S_T, rel=1e-6)
    # the interior by hand: m = 0.5 * [1/2, 1/2] + 0.5 * [3/4, 1/4] = [5/8, 3/8]
    half = 0.5 * (0.5 * LN(0.5 / 0.625) + 0.5 * LN(0.5 / 0.375)) + 0.5 * (0.75 * LN(0.75 / 0.625)
                                                                          + 0.25 * LN(0.25 / 0.375))
    assert generalized_jsd_loss(*first, beta=0.5).item() == pytest.approx(half, rel=1e-6)
    # beta = 0 is kd_loss without its T^2
    s, t, _, _ = random_tokens()
    assert generalized_jsd_loss(s, t, beta=0.0, temperature=3.0).item() == pytest.approx(
        kd_loss(s, t, 3.0).item() / 9, rel=1e-5)


def test_generalized_jsd_interior_against_the_direct_formula():
    s, t, _, keep = random_tokens(seed=5)
    beta, temperature = 0.3, 1.5
    p_s, p_t = torch.softmax(s / temperature, -1), torch.softmax(t / temperature, -1)
    m = beta * p_t + (1 - beta) * p_s
    jsd = beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)
    assert generalized_jsd_loss(s, t, beta, temperature).item() == pytest.approx(jsd.mean().item(), rel=1e-5)
    assert generalized_jsd_loss(s, t, beta, temperature, mask=keep).item() == pytest.approx(
        jsd[keep].mean().item(), rel=1e-5)
    assert generalized_jsd_loss(t, t, beta).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd_loss(s, t, beta=1.5)


def test_dist_counts_every_position_of_a_sequence_as_a_sample():
    # one prediction repeated along the sequence axis: identical student and teacher give 0 (it gave 1.0
    # when the rows of a 3-D input were compared along the sequence axis)
    t = torch.randn(4, 1, 10).expand(4, 6, 10)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(4, 6, 10)
    assert dist_loss(s, t).item() == pytest.approx(dist_loss(s.reshape(-1, 10), t.reshape(-1, 10)).item(), rel=1e-6)


def test_dist_num_items_scales_both_parts_by_the_share_of_positions():
    s, t, _, keep = random_tokens(seed=2)
    count = int(keep.sum())
    assert dist_loss(s, t, mask=keep, num_items=3 * count).item() == pytest.approx(
        dist_loss(s, t, mask=keep).item() / 3, rel=1e-5)


def test_bad_inputs_are_refused_with_one_line():
    s, t, labels, keep = random_tokens()
    cases = [
        (lambda: kd_loss(s, t[:, :3]), "same shape"),
        (lambda: kd_loss(s, t, mask=keep[:, :3]), "mask of shape"),
        (lambda: kd_loss(s, t, mask=keep.double()), "bool"),
        (lambda: kd_loss(s, t, num_items=0), "positive"),
        (lambda: generalized_jsd_loss(s, t, num_items=-2), "positive"),
        (lambda: dist_loss(s, t, num_items=torch.tensor(0)), "positive"),
        (lambda: dkd_loss(s, t, labels, num_items=0.0), "positive"),
        (lambda: cross_entropy(s, labels, num_items=0), "positive"),
        (lambda: dkd_loss(s, t, labels[:, :2]), "labels of shape"),
        (lambda: dist_loss(s, t, mask=keep.reshape(-1)), "mask of shape"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
