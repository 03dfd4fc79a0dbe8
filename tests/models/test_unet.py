"""U-Net: long skips, every align mode on sizes that are not multiples of 2**depth (2D and
3D), concat vs add, the plain twin, error messages and torch.compile without graph breaks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkit as sk
from skipkit.models import create
from skipkit.models.unet import LongSkip, UNet, unet

TINY: dict[str, Any] = {"depth": 3, "base_channels": 4}


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_configuration_parameter_count() -> None:
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k + c_out

    w = [64, 128, 256, 512, 1024]
    expected = conv(1, 64, 9) + conv(64, 64, 9)  # level 0
    expected += sum(conv(w[i - 1], w[i], 9) + conv(w[i], w[i], 9) for i in range(1, 5))
    for i in range(4):  # 2x2 up-conv halving channels, then two 3x3 convs on the concat
        expected += conv(w[i + 1], w[i], 4) + conv(2 * w[i], w[i], 9) + conv(w[i], w[i], 9)
    expected += conv(64, 2, 1)
    assert _n(unet(1, 2, norm=None)) == expected == 31_030_658


@pytest.mark.parametrize(
    ("align", "out_size"),
    [("pad", (37, 45)), ("interpolate", (37, 45)), ("crop", (32, 40))],
)
def test_odd_2d_sizes_under_each_align(align: str, out_size: tuple[int, int]) -> None:
    model = unet(3, 5, align=align, **TINY).train()
    x = torch.randn(2, 3, 37, 45, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 5, *out_size)  # crop: floor(S / 8) * 8
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("align", ["pad", "crop", "interpolate"])
def test_odd_3d_sizes(align: str) -> None:
    model = unet(1, 2, depth=2, base_channels=2, dims=3, align=align).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 9, 10, 11))
    assert y.shape == ((1, 2, 8, 8, 8) if align == "crop" else (1, 2, 9, 10, 11))


def test_1d_and_interpolating_upsampler() -> None:
    model = unet(2, 3, depth=2, base_channels=4, dims=1, up="interpolate").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 23)).shape == (2, 3, 23)


def test_divisible_sizes_agree_across_aligns() -> None:
    ref = unet(1, 2, align="error", **TINY).eval()
    x = torch.randn(1, 1, 24, 32)
    with torch.no_grad():
        expected = ref(x)
        for align in ("pad", "crop", "interpolate"):
            model = unet(1, 2, align=align, **TINY).eval()
            model.load_state_dict(ref.state_dict())
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_pad_fills_zeros_after_the_decoder_map() -> None:
    skip = LongSkip("concat", "pad")
    enc, dec = torch.randn(1, 2, 5, 8), torch.randn(1, 3, 4, 6)
    fitted_dec = skip.branch(enc, dec)
    assert fitted_dec.shape == (1, 3, 5, 8)
    torch.testing.assert_close(fitted_dec[:, :, 0:4, 1:7], dec)  # odd pixel at the end
    assert not fitted_dec[:, :, 4].any() and not fitted_dec[..., 0].any()
    assert not fitted_dec[..., 7].any()
    out = skip(enc, dec)
    torch.testing.assert_close(out, torch.cat([fitted_dec, enc], 1))  # decoder channels first


def test_crop_takes_the_centre_of_the_encoder_feature() -> None:
    enc, dec = torch.arange(48.0).view(1, 1, 6, 8), torch.randn(1, 1, 4, 5)
    skip = LongSkip("add", "crop")
    assert skip.branch(enc, dec) is dec  # the merge crops the encoder feature
    torch.testing.assert_close(skip(enc, dec), enc[:, :, 1:5, 1:6] + dec, rtol=0, atol=0)
    with sk.skips_disabled(skip):
        assert torch.equal(skip(enc, dec), dec)


def test_interpolate_resizes_the_decoder_map() -> None:
    enc, dec = torch.randn(1, 2, 9, 7), torch.randn(1, 2, 8, 6)
    fitted = LongSkip("add", "interpolate").branch(enc, dec)
    expected = F.interpolate(dec, size=(9, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fitted, expected)


def test_error_names_the_sizes_and_the_nearest_valid_ones() -> None:
    model = unet(1, 2, align="error", depth=4, base_channels=2)
    with pytest.raises(sk.ShapeMismatchError) as info:
        model(torch.randn(1, 1, 37, 45))
    message = str(info.value)
    assert "(37, 45)" in message and "2**depth = 16" in message
    assert "(32, 32) and (48, 48)" in message
    assert all(f"align='{a}'" in message for a in ("pad", "crop", "interpolate"))
    assert isinstance(info.value, ValueError) and len(info.value.fixes) == 4


def test_long_skip_error_mode_names_both_shapes_and_its_path() -> None:
    skip = LongSkip("concat", "error")
    skip.path = "decoder.1.skip"
    with pytest.raises(sk.ShapeMismatchError, match=r"decoder\.1\.skip.*\(4, 6\).*\(5, 7\)") as e:
        skip(torch.randn(1, 2, 5, 7), torch.randn(1, 2, 4, 6))
    assert e.value.skip_shape == (1, 2, 5, 7) and e.value.branch_shape == (1, 2, 4, 6)
    assert any("align='pad'" in f for f in e.value.fixes)


def test_too_small_and_wrong_rank_inputs_are_explained() -> None:
    model = unet(1, 2, **TINY)
    with pytest.raises(sk.ShapeMismatchError, match=r"smaller than 2\*\*depth = 8.*depth <= 2"):
        model(torch.randn(1, 1, 7, 30))
    with pytest.raises(sk.ShapeMismatchError, match=r"dims=2.*dims=3"):
        model(torch.randn(1, 1, 8, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"align": "reflect"}, "align='reflect'"),
        ({"merge": "mul"}, "merge='mul'"),
        ({"up": "pixelshuffle"}, "up='pixelshuffle'"),
        ({"norm": "layer"}, "norm='layer'"),
        ({"dims": 4}, "dims=4"),
        ({"depth": 0}, "depth"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unet(1, 2, **kwargs)


def test_merge_add_and_concat() -> None:
    cat, add = unet(1, 2, merge="concat", **TINY), unet(1, 2, merge="add", **TINY)
    assert cat.decoder[0].block.conv1.in_channels == 8  # 4 up + 4 skip
    assert add.decoder[0].block.conv1.in_channels == 4
    assert isinstance(cat.decoder[0].skip.merge, sk.Concat)
    assert isinstance(add.decoder[0].skip.merge, sk.Add)
    assert _n(add) < _n(cat)
    seen: list[torch.Tensor] = []
    add.decoder[0].skip.register_forward_hook(lambda m, args, out: seen.append(out - args[1]))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        enc0 = add.eval().encoder[0](x)
        add(x)
    torch.testing.assert_close(seen[0], enc0)  # add: merged - decoder map = encoder feature


@pytest.mark.parametrize("merge", ["concat", "add"])
def test_plain_twin_equals_skips_disabled(merge: str) -> None:
    model = unet(2, 3, merge=merge, **TINY).eval()
    plain = unet(2, 3, merge=merge, skip=False, **TINY).eval()
    assert list(plain.state_dict()) == list(model.state_dict())  # the same weights fit
    assert not any(s.skip_enabled for s in plain.long_skips())
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 2, 21, 19)
    with torch.no_grad():
        ref = model(x)
        with sk.skips_disabled(model):
            off = model(x)
        torch.testing.assert_close(off, plain(x), rtol=0, atol=0)
    assert not torch.equal(off, ref)
    assert all(s.skip_enabled for s in model.long_skips())


def test_plain_twin_decoder_gets_no_encoder_feature() -> None:
    plain = unet(1, 2, skip=False, **TINY).eval()
    seen: list[torch.Tensor] = []
    plain.decoder[0].block.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        plain(torch.randn(1, 1, 16, 16))
    assert seen[0].shape == (1, 8, 16, 16)
    assert not seen[0][:, 4:].any() and seen[0][:, :4].any()  # [decoder map, zeros]


def test_norm_choices_and_skip_description() -> None:
    inst = unet(1, 2, norm="instance", **TINY)
    assert isinstance(inst.encoder[0].norm1, nn.InstanceNorm2d)
    group = unet(1, 2, norm=lambda c: nn.GroupNorm(2, c), **TINY)
    assert isinstance(group.bottleneck.norm2, nn.GroupNorm)
    bare = unet(1, 2, norm=None, **TINY)
    assert not hasattr(bare.encoder[0], "norm1") and bare.encoder[0].conv1.bias is not None
    info = bare.decoder[2].skip.describe()
    assert info == sk.SkipInfo(
        path="decoder.2.skip",
        kind="LongSkip",
        tap="encoder.2",
        dst="decoder.2.skip",
        shortcut="align=pad",
        merge="concat",
        formula="cat([b, s], C)",
        parameters=0,
        enabled=True,
        added=False,
    )


def test_registry_and_weights_roundtrip(tmp_path: Any) -> None:
    model = create("unet", in_channels=1, out_channels=2, **TINY).eval()
    assert isinstance(model, UNet)
    torch.save(model.state_dict(), tmp_path / "u.pt")
    again = unet(1, 2, weights=tmp_path / "u.pt", **TINY).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("align", ["pad", "crop", "interpolate"])
def test_traces_as_one_graph(align: str) -> None:
    torch._dynamo.reset()
    model = unet(1, 2, depth=2, base_channels=4, align=align).eval()
    x = torch.randn(1, 1, 18, 22)  # not a multiple of 4: the align code is traced too
    # fullgraph=True raises on any graph break; the eager backend skips code generation.
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor() -> None:
    torch._dynamo.reset()
    model = unet(1, 2, depth=1, base_channels=2).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(1, 1, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
