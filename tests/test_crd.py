import copy
import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.crd import CRD, crd_nce_loss


@pytest.fixture(autouse=True)
def _threads():  # overrides conftest's: these tests are tiny, one thread is enough
    torch.set_num_threads(1)
    yield


def unit(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def loop_losses(anchor, positive, negatives, tau, num_data=None, log_z=None):
    """float64 per-sample reference: (InfoNCE, NCE) with plain Python arithmetic."""
    n, k = negatives.shape[:2]
    score = lambda a, b: sum(float(x) * float(y) for x, y in zip(a, b)) / tau  # noqa: E731
    pos = [score(anchor[i], positive[i]) for i in range(n)]
    neg = [[score(anchor[i], negatives[i, j]) for j in range(k)] for i in range(n)]
    infonce = sum(-pos[i] + math.log(math.exp(pos[i]) + sum(math.exp(v) for v in neg[i])) for i in range(n)) / n
    m = num_data if num_data is not None else k
    if log_z is None:  # the batch estimate: M times the mean of exp over all negatives
        log_z = math.log(m * sum(math.exp(v) for row in neg for v in row) / (n * k))
    z = math.exp(log_z)
    h = lambda s: (math.exp(s) / z) / (math.exp(s) / z + k / m)  # noqa: E731
    nce = -sum(math.log(h(pos[i])) + sum(math.log(1 - h(v)) for v in neg[i]) for i in range(n)) / n
    return infonce, nce


def test_infonce_and_nce_match_a_float64_loop():
    torch.manual_seed(0)
    a, p, neg = unit(5, 8), unit(5, 8), unit(5, 7, 8)
    tau = 0.2
    infonce, nce = loop_losses(a, p, neg, tau)
    assert crd_nce_loss(a, p, neg, tau, objective="infonce").item() == pytest.approx(infonce, rel=1e-10)
    assert crd_nce_loss(a, p, neg, tau, objective="nce").item() == pytest.approx(nce, rel=1e-10)
    # with the batch estimate of Z, M cancels out of the critic
    assert crd_nce_loss(a, p, neg, tau, num_data=1000, objective="nce").item() == pytest.approx(nce, rel=1e-10)
    # a fixed normaliser: the paper's h = e^s/Z / (e^s/Z + K/M)
    _, nce_fixed = loop_losses(a, p, neg, tau, num_data=50, log_z=9.0)
    got = crd_nce_loss(a, p, neg, tau, num_data=50, objective="nce", log_normalizer=9.0)
    assert got.item() == pytest.approx(nce_fixed, rel=1e-10)
    # float32 inputs agree with the float64 loop to float32 precision
    assert crd_nce_loss(a.float(), p.float(), neg.float(), tau, objective="nce").item() == pytest.approx(nce, rel=1e-5)


def test_shared_negatives_equal_per_anchor_copies():
    torch.manual_seed(1)
    a, p, queue = unit(4, 6), unit(4, 6), unit(9, 6)
    for objective in ("infonce", "nce"):
        shared = crd_nce_loss(a, p, queue, objective=objective)
        expanded = crd_nce_loss(a, p, queue.expand(4, 9, 6), objective=objective)
        assert shared.item() == pytest.approx(expanded.item(), rel=1e-12)


def test_function_rejects_bad_arguments():
    a, neg = unit(3, 4), unit(3, 5, 4)
    with pytest.raises(ValueError, match="objective"):
        crd_nce_loss(a, a, neg, objective="ntxent")
    with pytest.raises(ValueError, match="negatives"):
        crd_nce_loss(a, a, unit(2, 5, 4))
    with pytest.raises(ValueError, match="num_data"):
        crd_nce_loss(a, a, neg, objective="nce", log_normalizer=1.0)


def test_loss_is_lower_when_the_anchor_matches_the_positive():
    torch.manual_seed(2)
    p, neg = unit(6, 5), unit(6, 10, 5)
    for objective in ("infonce", "nce"):
        matched = crd_nce_loss(p, p, neg, objective=objective)
        unmatched = crd_nce_loss(unit(6, 5), p, neg, objective=objective)
        assert matched.item() < unmatched.item()


@pytest.mark.parametrize("kwargs", [dict(num_data=20, num_negatives=10), dict(queue_size=12)])
def test_loss_is_lower_when_the_student_matches_the_teacher(kwargs):
    torch.manual_seed(2)
    crd = CRD(6, 6, feat_dim=5, momentum=0.0, key_momentum=0.0, **kwargs)
    crd.embed_student.load_state_dict(crd.embed_teacher.state_dict())
    teacher, index = torch.randn(8, 6), torch.arange(8)
    crd(teacher.clone(), teacher, index=index)  # training: the memory now holds these embeddings
    crd.eval()  # the memory stays fixed from here on
    for objective in ("infonce", "nce"):
        crd.objective = objective
        torch.manual_seed(3)
        matched = crd(teacher.clone(), teacher, index=index)
        torch.manual_seed(3)  # the same negatives
        unmatched = crd(torch.randn(8, 6), teacher, index=index)
        assert matched.item() < unmatched.item()


@pytest.mark.parametrize("queue_size", [None, 16])
def test_gradients_reach_student_features_and_both_heads_not_the_teacher(queue_size):
    torch.manual_seed(4)
    crd = CRD(12, 6, feat_dim=8, num_data=30, num_negatives=5, queue_size=queue_size)
    s = torch.randn(4, 3, 4, requires_grad=True)  # (N, ...) is flattened
    t = torch.randn(4, 6, requires_grad=True)
    crd(s, t, index=torch.tensor([0, 5, 9, 29])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    for head in (crd.embed_student, crd.embed_teacher):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in crd.buffers())


def test_memory_bank_updates_only_the_batch_rows_and_only_in_training():
    torch.manual_seed(5)
    crd = CRD(4, 3, feat_dim=6, num_data=10, num_negatives=4, momentum=0.5)
    before = {k: v.clone() for k, v in crd.state_dict().items() if k.startswith("memory")}
    index = torch.tensor([1, 4, 7])
    s, t = torch.randn(3, 4), torch.randn(3, 3)
    crd.eval()
    crd(s, t, index=index)
    assert all(torch.equal(crd.state_dict()[k], v) for k, v in before.items())
    crd.train()
    crd(s, t, index=index)
    others = torch.tensor([i for i in range(10) if i not in index.tolist()])
    with torch.no_grad():
        embedded = {"memory_student": F.normalize(crd.embed_student(s), dim=1),
                    "memory_teacher": F.normalize(crd.embed_teacher(t), dim=1)}
    for name, old in before.items():
        new = getattr(crd, name)
        assert not torch.equal(new[index], old[index])
        assert torch.equal(new[others], old[others])
        expected = F.normalize(0.5 * old[index] + 0.5 * embedded[name], dim=1)
        assert torch.allclose(new[index], expected, atol=1e-6)
        assert torch.allclose(new.norm(dim=1), torch.ones(10), atol=1e-6)


def test_queue_pointer_advances_and_wraps_and_the_size_is_fixed():
    torch.manual_seed(6)
    crd = CRD(4, 3, feat_dim=5, queue_size=8, key_momentum=0.9)
    assert crd.queue_student.shape == crd.queue_teacher.shape == (8, 5)
    assert not hasattr(crd, "memory_student")
    pointers = []
    for n in (3, 3, 3, 12):  # the last batch is larger than the queue
        s, t = torch.randn(n, 4), torch.randn(n, 3)
        key_before, live = crd.key_teacher_weight.clone(), crd.embed_teacher.weight.detach().clone()
        crd(s, t).backward()  # no index needed
        with torch.no_grad():
            crd.embed_teacher.weight.add_(crd.embed_teacher.weight.grad)  # the live head moves ...
            crd.embed_teacher.weight.grad = None
        assert torch.allclose(crd.key_teacher_weight, 0.9 * key_before + 0.1 * live)  # ... the key head follows
        pointers.append(int(crd.queue_ptr))
        assert crd.queue_student.shape == crd.queue_teacher.shape == (8, 5)
    assert pointers == [3, 6, 1, 5]
    with torch.no_grad():  # after the 12-sample batch the queue holds its newest 8 keys, in FIFO slots
        newest = F.normalize(F.linear(s, crd.key_student_weight, crd.key_student_bias), dim=1)[-8:]
    slots = (1 + 4 + torch.arange(8)) % 8
    assert torch.allclose(crd.queue_student[slots], newest, atol=1e-6)
    crd.eval()
    before = {k: v.clone() for k, v in crd.state_dict().items()}
    crd(torch.randn(2, 4), torch.randn(2, 3))
    assert all(torch.equal(v, crd.state_dict()[k]) for k, v in before.items())


def test_negatives_never_include_the_positive_index():
    torch.manual_seed(7)
    crd = CRD(2, 2, feat_dim=2, num_data=3, num_negatives=2000)
    index = torch.tensor([0, 1, 2, 2])
    drawn = crd._sample_negatives(index)
    assert drawn.shape == (4, 2000)
    assert not (drawn == index.unsqueeze(1)).any()
    for row, i in zip(drawn, index.tolist()):  # uniform over the other samples
        others = [j for j in range(3) if j != i]
        assert set(row.tolist()) == set(others)
        assert abs((row == others[0]).float().mean().item() - 0.5) < 0.05


def test_module_loss_equals_the_function_on_the_drawn_negatives_for_both_score_paths(monkeypatch):
    torch.manual_seed(8)
    crd = CRD(5, 4, feat_dim=3, num_data=12, num_negatives=6).eval()
    s, t, index = torch.randn(4, 5), torch.randn(4, 4), torch.tensor([3, 0, 11, 6])
    torch.manual_seed(9)
    drawn = crd._sample_negatives(index)
    with torch.no_grad():
        e_s, e_t = F.normalize(crd.embed_student(s), dim=1), F.normalize(crd.embed_teacher(t), dim=1)
    m_s, m_t = crd.memory_student, crd.memory_teacher  # positives: the other side's row of the same sample
    expected = crd_nce_loss(e_s, m_t[index], m_t[drawn]) + crd_nce_loss(e_t, m_s[index], m_s[drawn])
    torch.manual_seed(9)
    matmul_path = crd(s, t, index=index)  # 12 rows <= 6 * 3: the (N, M) score matrix
    monkeypatch.setattr(CRD, "_bank_scores", staticmethod(
        lambda anchor, memory, negatives: torch.bmm(memory[negatives], anchor.unsqueeze(2)).squeeze(2)))
    torch.manual_seed(9)
    gather_path = crd(s, t, index=index)
    assert matmul_path.item() == pytest.approx(expected.item(), rel=1e-5)
    assert gather_path.item() == pytest.approx(expected.item(), rel=1e-5)


def test_queue_loss_equals_the_function_with_key_positives():
    torch.manual_seed(12)
    crd = CRD(5, 4, feat_dim=3, queue_size=7).eval()
    s, t = torch.randn(4, 5), torch.randn(4, 4)
    with torch.no_grad():
        e_s, e_t = F.normalize(crd.embed_student(s), dim=1), F.normalize(crd.embed_teacher(t), dim=1)
        k_s = F.normalize(F.linear(s, crd.key_student_weight, crd.key_student_bias), dim=1)
        k_t = F.normalize(F.linear(t, crd.key_teacher_weight, crd.key_teacher_bias), dim=1)
    expected = crd_nce_loss(e_s, k_t, crd.queue_teacher) + crd_nce_loss(e_t, k_s, crd.queue_student)
    assert crd(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kwargs", [dict(num_data=15, num_negatives=5),
                                    dict(queue_size=6),
                                    dict(num_data=15, num_negatives=5, objective="nce", normalizer="fixed")])
def test_state_dict_round_trip_reproduces_the_next_loss(kwargs):
    torch.manual_seed(10)
    crd = CRD(4, 3, feat_dim=5, **kwargs)
    opt = torch.optim.SGD(crd.parameters(), lr=0.5)
    data_s, data_t = torch.randn(15, 4), torch.randn(15, 3)
    for step in range(3):
        index = torch.arange(step * 4, step * 4 + 4)
        loss = crd(data_s[index], data_t[index], index=index)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state, rng = copy.deepcopy(crd.state_dict()), torch.get_rng_state()
    index = torch.tensor([12, 13, 14, 0])
    expected = crd(data_s[index], data_t[index], index=index)
    torch.manual_seed(99)  # a differently initialised module ...
    restored = CRD(4, 3, feat_dim=5, **kwargs)
    restored.load_state_dict(state)  # ... given the state and the RNG state
    torch.set_rng_state(rng)
    assert torch.equal(restored(data_s[index], data_t[index], index=index), expected)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), crd.state_dict().values()))
    if kwargs.get("normalizer") == "fixed":
        assert bool(restored.log_normalizer_set) and restored.log_normalizer.abs().sum() > 0


def test_clear_errors():
    crd = CRD(4, 3, feat_dim=5, num_data=10, num_negatives=3)
    s, t = torch.randn(2, 4), torch.randn(2, 3)
    with pytest.raises(ValueError, match="needs index="):
        crd(s, t)
    with pytest.raises(ValueError, match=r"out of range.*num_data=10"):
        crd(s, t, index=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="out of range"):
        crd(s, t, index=torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="index has 3 entries for a batch of 2"):
        crd(s, t, index=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        crd(s, t, index=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="student batch 2 and teacher batch 3 differ"):
        crd(s, torch.randn(3, 3), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="student_dim=4"):
        crd(torch.randn(2, 5), t, index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_data"):
        CRD(4, 3)
    with pytest.raises(ValueError, match="objective"):
        CRD(4, 3, queue_size=4, objective="nt-xent")
    with pytest.raises(ValueError, match="fixed"):
        CRD(4, 3, queue_size=4, normalizer="fixed")


@pytest.mark.parametrize("kwargs", [dict(num_data=64, num_negatives=16), dict(queue_size=32)])
def test_a_linear_student_learns_to_align_with_the_teacher(kwargs):
    torch.manual_seed(11)
    inputs = torch.randn(64, 32)
    # a fixed random teacher feature per sample index, with a large shared component (as post-ReLU features have),
    # so the embeddings start nearly collapsed
    teacher = 3.0 + torch.randn(64, 16)
    student = torch.nn.Linear(32, 24)
    crd = CRD(24, 16, feat_dim=16, **kwargs)
    opt = torch.optim.Adam([*student.parameters(), *crd.parameters()], lr=1e-2)

    def retrieval():  # how often a sample's student embedding is closest to its own teacher embedding
        with torch.no_grad():
            e_s = F.normalize(crd.embed_student(student(inputs)), dim=1)
            e_t = F.normalize(crd.embed_teacher(teacher), dim=1)
            return ((e_s @ e_t.T).argmax(1) == torch.arange(64)).float().mean().item()

    before, losses = retrieval(), []
    for _ in range(200):
        index = torch.randperm(64)[:16]
        loss = crd(student(inputs[index]), teacher[index], index=index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # with the current embedding as positive against the stored negatives (not what CRD does) the bank run
    # stays near 0.3 and its loss falls by a quarter at most: both heads drift away from the memory together
    assert before < 0.1 and retrieval() > 0.5
    assert sum(losses[-10:]) < 0.3 * sum(losses[:10])
