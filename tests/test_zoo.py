"""The CIFAR-style models of the KD literature (distill.zoo.cifar)."""
import pytest
import torch

import distill
from distill.evaluation import count_parameters

NAMES = ["resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflenetv2"]
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(name):
    return count_parameters(distill.build_model(name, (1, 28, 28), 10))


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_reach_every_parameter(name):
    torch.manual_seed(0)
    for shape in SHAPES:
        model = distill.build_model(name, shape, 10)
        model.train()
        logits = model(torch.randn(2, *shape))
        assert logits.shape == (2, 10), (name, shape)
        assert torch.isfinite(logits).all()
        logits.logsumexp(1).sum().backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"{name} {shape}: parameters without gradient: {unused}"
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_importing_cifar_module_first_works():
    import importlib

    mod = importlib.import_module("distill.zoo.cifar")
    assert mod.resnet8x4 is distill.zoo.models.MODELS["resnet8x4"]


@pytest.mark.parametrize("small,big", [("resnet8x4", "resnet32x4"), ("wrn_16_2", "wrn_40_2"), ("vgg8", "vgg13")])
def test_parameter_counts_ordered(small, big):
    assert _params(big) > _params(small)


def test_parameter_counts_match_the_literature_roughly():
    # CRD reports (CIFAR-100 heads) 1.2M / 7.4M / 0.70M / 2.2M / 3.9M / 9.4M; 10-class heads are a bit smaller.
    expected = {"resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "wrn_16_2": 0.69e6, "wrn_40_2": 2.24e6,
                "vgg8": 3.92e6, "vgg13": 9.41e6}
    for name, n in expected.items():
        assert abs(_params(name) - n) / n < 0.05, name


def test_tap_paths_exist():
    paths = {
        "resnet8x4": ["layer1", "layer2", "layer3"],
        "wrn_16_2": ["block1", "block2", "block3", "bn1"],
        "vgg8": [f"features.{i}" for i in range(5)],
        "mobilenetv2": ["conv1", "conv2"] + [f"blocks.{i}" for i in range(7)],
        "shufflenetv2": ["conv1", "layer1", "layer2", "layer3", "conv2"],
    }
    for name, names in paths.items():
        modules = dict(distill.build_model(name, (1, 28, 28), 10).named_modules())
        for p in names:
            assert p in modules, (name, p)


def test_options():
    wide = distill.build_model("mobilenetv2", (1, 28, 28), 10, width_mult=1.0)
    assert count_parameters(wide) > _params("mobilenetv2")
    small = distill.build_model("shufflenetv2", (1, 28, 28), 10, net_size=0.5)
    assert count_parameters(small) < _params("shufflenetv2")
    dropped = distill.build_model("wrn_16_2", (1, 28, 28), 10, dropout=0.3)
    assert count_parameters(dropped) == _params("wrn_16_2")
    with pytest.raises(ValueError):
        distill.build_model("wrn", (1, 28, 28), 10, depth=15)
    with pytest.raises(ValueError):
        distill.build_model("shufflenetv2", (1, 28, 28), 10, net_size=0.7)


@pytest.mark.parametrize("name", ["resnet32x4", "resnet8", "resnet"])
def test_zero_init_residual_blocks_start_as_the_identity(name):
    torch.manual_seed(0)
    model = distill.build_model(name, (1, 28, 28), 10, zero_init_residual=True).eval()
    x = torch.relu(torch.randn(2, model.layer1[0].conv1.in_channels, 7, 7))  # a block's input is post-ReLU
    for block in model.layer1:
        assert torch.equal(block(x), x)  # identity shortcut: relu(0 + x) = x
    plain = distill.build_model(name, (1, 28, 28), 10).eval()
    assert not torch.equal(plain.layer1[0](x), x)


def test_cli_lists_the_models(capsys):
    from distill.cli import main

    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
