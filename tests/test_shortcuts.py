from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkit as sk
from skipkit.shortcuts import CenterCrop, Resample, ZeroPad, plan_shortcut


def test_zero_pad_subsamples_and_appends_zero_channels() -> None:
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    y = ZeroPad(2, 4, stride=(2, 2))(x)
    assert y.shape == (2, 4, 3, 3)  # ceil(5 / 2) = 3, as a stride-2 conv gives
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 2:], torch.zeros(2, 2, 3, 3))


def test_zero_pad_features_last() -> None:
    x = torch.tensor([[[1.0, 2.0]]])
    assert torch.equal(ZeroPad(2, 3, dim=2)(x), torch.tensor([[[1.0, 2.0, 0.0]]]))


def test_zero_pad_cannot_shrink() -> None:
    with pytest.raises(ValueError, match="shrink"):
        ZeroPad(4, 2)


def test_center_crop_exact() -> None:
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(CenterCrop((4, 2))(x), x[:, :, 1:5, 2:4])


def test_resample_matches_interpolate() -> None:
    x = torch.randn(1, 3, 4, 5)
    assert torch.equal(Resample(size=(7, 9))(x), F.interpolate(x, size=(7, 9)))
    assert torch.equal(Resample(scale_factor=(2, 2))(x), F.interpolate(x, scale_factor=(2.0, 2.0)))
    with pytest.raises(ValueError, match="exactly one"):
        Resample()


def test_plan_identity_when_equal() -> None:
    assert isinstance(plan_shortcut((2, 8, 4, 4), (2, 8, 4, 4)), nn.Identity)
    assert isinstance(plan_shortcut((2, 10), (2, 10)), nn.Identity)


@pytest.mark.parametrize(
    ("size_in", "size_out", "stride"), [(32, 16, 2), (7, 4, 2), (9, 3, 3), (8, 2, 4), (5, 3, 2)]
)
def test_plan_strided_projection(size_in: int, size_out: int, stride: int) -> None:
    sc = plan_shortcut((1, 4, size_in, size_in), (1, 8, size_out, size_out))
    conv, bn = sc[0], sc[1]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv.stride == (stride, stride) and conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 8
    assert sc(torch.randn(1, 4, size_in, size_in)).shape == (1, 8, size_out, size_out)


def test_plan_projection_values_are_conv_then_bn() -> None:
    sc = plan_shortcut((2, 3, 7, 7), (2, 5, 4, 4)).eval()
    x = torch.randn(2, 3, 7, 7)
    conv, bn = sc[0], sc[1]
    expected = F.batch_norm(
        F.conv2d(x, conv.weight, stride=2), bn.running_mean, bn.running_var, bn.weight, bn.bias
    )
    assert torch.allclose(sc(x), expected)


@pytest.mark.parametrize("rank", [3, 5])
def test_plan_other_ranks(rank: int) -> None:
    spatial = (9,) * (rank - 2)
    out = (5,) * (rank - 2)
    sc = plan_shortcut((1, 2, *spatial), (1, 6, *out))
    assert sc(torch.randn(1, 2, *spatial)).shape == (1, 6, *out)


def test_plan_crop_for_valid_convolution() -> None:
    # 10 -> 8: a 3x3 conv without padding; no stride gives 8, the centre is aligned.
    sc = plan_shortcut((1, 4, 10, 10), (1, 4, 8, 8))
    assert isinstance(sc, CenterCrop)
    sc2 = plan_shortcut((1, 4, 10, 10), (1, 6, 8, 8))
    assert isinstance(sc2[0], CenterCrop) and isinstance(sc2[1], nn.Conv2d)


def test_plan_upsampling_uses_resample() -> None:
    sc = plan_shortcut((1, 8, 5, 5), (1, 4, 10, 10))
    assert isinstance(sc[0], Resample) and sc[0].scale_factor == (2.0, 2.0)
    assert sc(torch.randn(1, 8, 5, 5)).shape == (1, 4, 10, 10)
    odd = plan_shortcut((1, 4, 5, 5), (1, 4, 7, 11))
    assert isinstance(odd, Resample) and odd.size == (7, 11)


def test_plan_features_last_uses_linear() -> None:
    sc = plan_shortcut((2, 10), (2, 64))
    assert isinstance(sc, nn.Linear) and (sc.in_features, sc.out_features) == (10, 64)
    seq = plan_shortcut((2, 7, 10), (2, 7, 20), layout="NLC")
    assert isinstance(seq, nn.Linear)


def test_plan_pad_option_a() -> None:
    sc = plan_shortcut((1, 16, 32, 32), (1, 32, 16, 16), kind="pad")
    assert isinstance(sc, ZeroPad) and sum(p.numel() for p in sc.parameters()) == 0
    with pytest.raises(sk.ShapeMismatchError, match="shrink"):
        plan_shortcut((1, 16, 8, 8), (1, 8, 8, 8), kind="pad")
    with pytest.raises(sk.ShapeMismatchError, match="resampling"):
        plan_shortcut((1, 16, 8, 8), (1, 16, 16, 16), kind="pad")


def test_plan_avgdown_is_pool_conv_bn() -> None:
    sc = plan_shortcut((1, 4, 7, 7), (1, 8, 4, 4), kind="avgdown").eval()
    pool, conv, bn = sc
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode
    x = torch.randn(1, 4, 7, 7)
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    assert torch.allclose(sc(x), bn(conv(pooled)))
    assert sc(x).shape == (1, 8, 4, 4)


def test_plan_concat_only_fits_space() -> None:
    sc = plan_shortcut((1, 4, 8, 8), (1, 16, 4, 4), match_channels=False)
    assert isinstance(sc, nn.AvgPool2d)
    assert sc(torch.randn(1, 4, 8, 8)).shape == (1, 4, 4, 4)
    assert isinstance(plan_shortcut((1, 4, 8, 8), (1, 16, 8, 8), match_channels=False), nn.Identity)


@pytest.mark.parametrize(
    ("a", "b", "kind", "message"),
    [
        ((2, 3, 4, 4), (2, 48), "auto", "rank"),
        ((2, 3, 4, 4), (4, 3, 4, 4), "auto", "batch size"),
        ((2, 5, 10), (2, 7, 10), "auto", "sequence"),
        ((2, 3, 4, 4), (2, 6, 4, 4), "identity", "identity"),
        ((1, 4, 4, 4), (1, 8, 8, 8), "project", "upsample"),
        ((2, 10), (2, 12), "avgdown", "conv maps"),
    ],
)
def test_plan_errors_name_shapes_and_fix(
    a: tuple[int, ...], b: tuple[int, ...], kind: str, message: str
) -> None:
    layout = "NLC" if len(a) == 3 else None
    with pytest.raises(sk.ShapeMismatchError, match=message) as info:
        plan_shortcut(a, b, kind=kind, layout=layout, path="net.block3")
    err = info.value
    assert isinstance(err, ValueError)
    text = str(err)
    assert text.startswith("net.block3: ")
    assert "Fix:" in text and str(a).replace(" ", "") in text.replace(" ", "")
    assert err.skip_shape == a and err.branch_shape == b and err.fixes


def test_plan_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown shortcut"):
        plan_shortcut((1, 2), (1, 3), kind="magic")
