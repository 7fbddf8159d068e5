import pytest
import torch
from torch import nn

from distill.taps import TapError, TapRecorder


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(Block(), Block())
        self.layers[1].conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.layers(x).flatten(1))


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x):
        h1 = self.a(x)
        return {"logits": self.b(h1), "hidden_states": (x, h1)}


def test_module_tap_on_nested_path_captures_output_and_input():
    net = Net()
    captured = {}
    net.layers[1].bn.register_forward_hook(lambda m, i, o: captured.update(out=o, inp=i[0]))
    rec = TapRecorder(net, ["layers.1.bn", "layers.1.bn:input", "logits"])
    x = torch.randn(2, 1, 8, 8)
    out = net(x)
    values = rec.collect(out)
    assert torch.equal(values["layers.1.bn"], captured["out"])
    assert torch.equal(values["layers.1.bn:input"], captured["inp"])
    assert values["layers.1.bn"].shape == (2, 4, 8, 8)
    assert values["logits"] is out


def test_model_is_not_modified_and_hooks_can_be_removed():
    net = Net()
    before = [name for name, _ in net.named_modules()]
    rec = TapRecorder(net, ["layers.0.conv"])
    assert [name for name, _ in net.named_modules()] == before
    rec.remove()
    assert not net.layers[0].conv._forward_hooks


def test_output_field_taps_with_indices():
    net = DictNet()
    rec = TapRecorder(net, ["logits", "hidden_states[1]", "output.hidden_states[-2]"])
    x = torch.randn(4, 3)
    values = rec.collect(net(x))
    assert values["logits"].shape == (4, 2)
    assert torch.equal(values["hidden_states[1]"], net.a(x))
    assert torch.equal(values["output.hidden_states[-2]"], x)


def test_bad_path_lists_nearest_names():
    net = Net()
    rec = TapRecorder(net, ["layers.1.bm"])
    with pytest.raises(TapError, match=r"layers\.1\.bn"):
        rec.collect(net(torch.randn(1, 1, 8, 8)))


def test_bad_output_field_lists_fields():
    net = DictNet()
    rec = TapRecorder(net, ["hiden_states[0]"])
    with pytest.raises(TapError, match="hidden_states"):
        rec.collect(net(torch.randn(1, 3)))


def test_logits_from_tuple_output():
    class TupleNet(nn.Module):
        def forward(self, x):
            return x * 2, x

    rec = TapRecorder(TupleNet(), ["logits"])
    x = torch.ones(1, 2)
    assert torch.equal(rec.collect(TupleNet()(x))["logits"], x * 2)
