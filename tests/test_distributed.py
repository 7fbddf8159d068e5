"""Batch-relational terms under two processes (gloo on CPU) give the loss and gradients of one process
with the whole batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill.distributed import gather_batch, shutdown, world_size
from distill.terms import Term

RELATIONAL = ["sp", "rkd", "pkt", "cc", "dist", "crd"]
BATCH = 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 6, generator=g)
    teacher = torch.randn(BATCH, 5, generator=g)
    return x, teacher


def _term(name: str) -> Term:
    torch.manual_seed(1)  # CRD's heads and its negative sampling
    if name == "crd":
        return Term("crd", student="logits", teacher="logits", feat_dim=4, num_negatives=4, num_data=BATCH)
    return Term(name)


def _loss_and_grads(name: str, rows: slice):
    x, teacher = _inputs()
    torch.manual_seed(2)
    student = torch.nn.Linear(6, 5)
    term = _term(name)
    index = torch.arange(BATCH)[rows]
    out = student(x[rows])
    loss = term({"logits": out}, {"logits": teacher[rows]}, {"index": index})
    loss.backward()
    params = list(student.parameters()) + (list(term.fn.parameters()) if isinstance(term.fn, torch.nn.Module) else [])
    return loss.detach(), [p.grad.clone() for p in params]


def _worker(rank: int, init_file: str, out_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        results = {}
        for name in RELATIONAL:
            half = BATCH // 2
            loss, grads = _loss_and_grads(name, slice(rank * half, (rank + 1) * half))
            for g in grads:  # what DDP does: average the gradients over processes
                dist.all_reduce(g)
                g /= 2
            results[name] = (loss, grads)
        # uneven local batches are padded for the exchange and trimmed after
        local = torch.arange(3 if rank == 0 else 1, dtype=torch.float32) + 10 * rank
        results["uneven"] = gather_batch(local)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def test_relational_terms_gather_across_two_processes(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two = torch.load(out)
    assert world_size() == 1
    for name in RELATIONAL:
        loss, grads = _loss_and_grads(name, slice(0, BATCH))
        assert torch.allclose(two[name][0], loss, rtol=1e-5, atol=1e-7), name
        assert len(grads) == len(two[name][1])
        for a, b in zip(grads, two[name][1]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name
    assert two["uneven"].tolist() == [0.0, 1.0, 2.0, 10.0]


def test_per_sample_terms_are_not_gathered():
    assert not Term("kd").gather and not Term("ce").gather and not Term("hint").gather
    assert all(Term(name).gather for name in ["sp", "rkd", "pkt", "cc", "dist"])
    assert Term(lambda s, t: (s - t).pow(2).mean(), gather=True).gather


def test_gather_batch_is_identity_in_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_batch(x) is x


@pytest.mark.parametrize("name", ["sp", "rkd"])
def test_one_process_loss_on_half_batches_differs(name):
    # the reason to gather: relations between the halves are lost when each half is scored alone
    whole, _ = _loss_and_grads(name, slice(0, BATCH))
    halves = (_loss_and_grads(name, slice(0, 4))[0] + _loss_and_grads(name, slice(4, 8))[0]) / 2
    assert not torch.allclose(whole, halves)


def _train_engine(batch_size: int) -> dict:
    from distill import load_dataset
    from distill.engine import Distiller, seed_everything
    from distill.zoo import build_model

    data = load_dataset("digits", val_size=200, train_size=256)
    seed_everything(0)
    teacher = build_model("mlp", data.input_shape, hidden=[16])
    student = build_model("mlp", data.input_shape, hidden=[8])  # no batch norm: its statistics are per process
    d = Distiller(student, teacher, [Term("ce"), Term("rkd", 1.0)], epochs=1, batch_size=batch_size, lr=0.05,
                  optimizer="sgd", progress=False)
    d.fit(data.train)
    assert not isinstance(d.teacher.model, torch.nn.parallel.DistributedDataParallel)
    return {k: v.clone() for k, v in student.state_dict().items()} | {"loss": torch.tensor(d.history[-1]["train/loss"])}


def _engine_worker(rank: int, port: int, out_file: str):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        result = _train_engine(batch_size=16)
        if rank == 0:
            torch.save(result, out_file)
    finally:
        shutdown()  # without it a process could exit mid-teardown and abort (seen once in CI)


def test_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    # the 2-process run's step k sees, across both processes, the batch the 1-process run sees at step k
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.pt"
    mp.spawn(_engine_worker, args=(port, str(out)), nprocs=2, join=True)
    two = torch.load(out)
    one = _train_engine(batch_size=32)
    assert set(one) == set(two)
    for key in one:
        if key != "loss":
            assert torch.allclose(one[key], two[key], atol=1e-5), key
