"""list_skips covers core and added skips; remove_skip restores the original exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.surgery import SkipInfo, add_skip, list_skips, remove_skip


def core_model() -> nn.Sequential:
    """``(N, 4, 8, 8) -> (N, 3)`` with a Residual and a DenseBlock (skipkit's own skips)."""
    return nn.Sequential(
        sk.Residual(nn.Conv2d(4, 8, 3, padding=1), in_shape=(1, 4, 8, 8)),
        sk.DenseBlock(None, 2, 4, in_channels=8),
        nn.Conv2d(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def test_core_and_added_skips_are_listed() -> None:
    model = core_model().eval()
    x = torch.randn(2, 4, 8, 8)
    net = add_skip(model, "0", "2", example=x)
    net = add_skip(net, "1", "", merge="rezero_skip", example=x)
    infos = list_skips(net)
    assert [(i.path, i.kind, i.added) for i in infos] == [
        ("model.0", "Residual", False),
        ("model.1", "DenseBlock", False),
        ("skips.0", "AddedSkip", True),
        ("skips.1", "AddedSkip", True),
    ]
    assert infos[2] == SkipInfo(
        path="skips.0",
        kind="AddedSkip",
        tap="0",
        dst="2",
        shortcut="Conv2d+BatchNorm2d",
        merge="add",
        formula="s + b",
        parameters=8 * 16 + 2 * 16,
        enabled=True,
        added=True,
    )
    assert (infos[3].tap, infos[3].dst) == ("1", "")
    # the scalar α is the merge's, on the added skip: the model's own output stays whole
    assert (infos[3].shortcut, infos[3].merge, infos[3].formula) == (
        "AdaptiveAvgPool2d+Flatten+Linear",
        "rezero_skip",
        "b + α*s",
    )
    assert infos[0].tap == "input" and infos[0].shortcut == "Conv2d+BatchNorm2d"
    assert json.loads(json.dumps(infos[0].to_dict()))["kind"] == "Residual"
    with sk.skips_disabled(net):
        assert not any(i.enabled for i in list_skips(net))


def test_remove_skip_restores_the_original_exactly(cnn: nn.Sequential) -> None:
    x = torch.randn(2, 3, 16, 16)
    cnn.eval()
    net = add_skip(cnn, "0", "4", example=x, zero_init=False)
    net = add_skip(net, "1", "3", merge="concat", example=x, zero_init=False)
    net = add_skip(net, "2", "4", example=x, zero_init=False).eval()
    only_second = add_skip(cnn, "1", "3", merge="concat", example=x, zero_init=False).eval()
    only_second.load_state_dict(
        {
            k.replace("skips.1.", "skips.0."): v
            for k, v in net.state_dict().items()
            if not k.startswith(("skips.0.", "skips.2."))
        }
    )
    with pytest.raises(ValueError, match=r"2 added skips go into '4'.*pass the index or the path"):
        remove_skip(net, "4")
    assert remove_skip(net, 0) is net
    assert remove_skip(net, "skips.1") is net  # the former third skip
    assert [(s.src, s.dst) for s in net.skips] == [("1", "3")]
    torch.testing.assert_close(net(x), only_second(x), atol=0, rtol=0)
    assert not any(k.startswith("skips.1") for k in net.state_dict())
    remove_skip(net, "3")
    torch.testing.assert_close(net(x), cnn(x), atol=0, rtol=0)
    assert not any(m._forward_hooks for m in net.modules())
    assert list_skips(net) == []


def test_remove_skip_errors() -> None:
    model = core_model().eval()
    x = torch.randn(1, 4, 8, 8)
    net = add_skip(model, "0", "2", example=x)
    with pytest.raises(ValueError, match=r"skip 'model.0' \(Residual\) is built into the model"):
        remove_skip(net, 0)
    with pytest.raises(ValueError, match=r"no added skip at '3'\. .*Added skips: \['skips.0 "):
        remove_skip(net, "3")
    with pytest.raises(ValueError, match=r"skip index 7 out of range: the model has 3 skips"):
        remove_skip(net, 7)
    with pytest.raises(TypeError, match="which must be an index or a path"):
        remove_skip(net, 1.0)  # type: ignore[arg-type]


def test_nested_wrapper_inside_a_bigger_model(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    inner = add_skip(mlp, "1", "5", example=x, zero_init=False)
    outer = nn.Sequential(inner, nn.Linear(3, 1))
    assert [i.path for i in list_skips(outer)] == ["0.skips.0"]
    remove_skip(outer, "0.skips.0")
    torch.testing.assert_close(outer(x), outer[1](mlp(x)), atol=0, rtol=0)
