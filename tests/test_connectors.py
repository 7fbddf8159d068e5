import pytest
import torch
from torch import nn

from distill.connectors import ConnectorError, build_connector


@pytest.mark.parametrize(
    "s, t, kind",
    [
        ((8, 16), (8, 32), "auto"),
        ((8, 5, 16), (8, 5, 32), "linear"),
        ((8, 4, 14, 14), (8, 16, 7, 7), "auto"),
        ((8, 4, 7, 7), (8, 16, 7, 7), "conv3x3"),
        ((8, 4, 14, 14), (8, 16, 7, 7), "conv1x1_nobn"),
        ((8, 16), (8, 16), "auto"),
    ],
)
def test_connector_maps_to_teacher_shape(s, t, kind):
    connector = build_connector(s, t, kind)
    out = connector(torch.randn(*s))
    assert out.shape == t


def test_identity_when_shapes_agree():
    assert isinstance(build_connector((2, 3), (2, 3)), nn.Identity)


def test_impossible_connectors_are_refused():
    with pytest.raises(ConnectorError, match="no connector"):
        build_connector((8, 16), (8, 4, 2, 2))
    with pytest.raises(ConnectorError, match="unknown connector"):
        build_connector((8, 16), (8, 4), "mlp9")
    with pytest.raises(ConnectorError, match="last dimension"):
        build_connector((8, 5, 16), (8, 6, 32), "linear")


def test_the_plain_1x1_connector_keeps_the_students_scale():
    # batch norm rescales the student's features to unit variance; the plain connector is a linear map of them
    torch.manual_seed(0)
    plain, normed = (build_connector((8, 4, 5, 5), (8, 6, 5, 5), kind) for kind in ("conv1x1_nobn", "conv1x1"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(8, 4, 5, 5)
    with torch.no_grad():
        bias = plain.conv.bias[:, None, None]
        assert torch.allclose(plain(0.5 * x) - bias, 0.5 * (plain(x) - bias), atol=1e-6)
        assert torch.allclose(normed(0.5 * x), normed(x), atol=1e-3)  # (training mode: batch statistics)
