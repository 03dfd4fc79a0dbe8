"""advise/apply: ResNet-56's skips recovered from its plain twin, healthy nets left alone,
vanishing gradients in a deep MLP, U-Net skips in an encoder-decoder, and (slow) training:
the advised plain net trains like the hand-built ResNet-56 while the plain net does not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skipkit.models as models
from skipkit.diagnostics import Suggestion, advise, apply, gradient_flow
from skipkit.train import TrainConfig, Trainer, seed_everything

CE = nn.CrossEntropyLoss()


def batch(n: int = 64, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, classes, (n,), generator=g)


def cifar56(skip: bool) -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet56", dims=1, in_channels=1, num_classes=10, skip=skip)


def test_plain56_gets_resnet56_skips() -> None:
    tips = advise(cifar56(skip=False), batch(), CE)
    assert len(tips) == 27  # one per basic block, as in He et al.'s ResNet-56
    pairs = [(t.src, t.dst) for t in tips]
    assert pairs[0] == ("relu", "layer1.0.bn2")  # from the stem's output
    assert pairs[1] == ("layer1.0", "layer1.1.bn2")
    assert ("layer1", "layer2.0.bn2") in pairs and ("layer2", "layer3.0.bn2") in pairs
    assert pairs[-1] == ("layer3.7", "layer3.8.bn2")
    assert [t.layers for t in tips[:2]] == [(2, 3), (4, 5)]
    assert all(t.merge == "add" and t.shortcut == "auto" and t.score >= 0 for t in tips)
    assert "exploding" in tips[0].reason and "decades per layer" in tips[0].reason
    down = tips[pairs.index(("layer1", "layer2.0.bn2"))]
    assert "(16, 40) to (32, 20)" in down.reason and "strided" in down.reason
    assert set(tips[0].to_dict()) == {
        "src",
        "dst",
        "merge",
        "shortcut",
        "reason",
        "score",
        "layers",
    }


@pytest.mark.parametrize(("name", "skip"), [("resnet56", True), ("resnet20", False)])
def test_healthy_models_need_nothing(name: str, skip: bool) -> None:
    torch.manual_seed(0)
    net = models.create(name, dims=1, in_channels=1, num_classes=10, skip=skip)
    assert advise(net, batch(), CE) == []


def test_apply_adds_the_skips_and_heals_the_flow() -> None:
    plain = cifar56(skip=False)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    x, y = batch()
    tips = advise(plain, (x, y), CE)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in state.items())
    net = apply(plain, tips, x[:2])
    assert len(net.skips) == 27  # type: ignore[arg-type]
    assert net(x).shape == (64, 10)
    assert all(not m._forward_hooks for m in plain.modules())  # the input model is not touched
    # the gradient signal across the trunk: a few decades before, about one after
    before = gradient_flow(plain, (x, y), CE)
    after = gradient_flow(net, (x, y), CE)

    def spread(flow: object) -> float:
        sig = [
            math.log10(layer.weight_grad_norm * layer.weight_norm)
            for layer in flow.layers[1:-1]  # type: ignore[attr-defined]
        ]
        return max(sig) - min(sig)

    assert spread(before) > 2.5 and spread(after) < 1.5
    assert advise(net, (x, y), CE) == []
    assert apply(plain, [], x[:2]) is plain


def test_vanishing_gradients_in_a_deep_mlp() -> None:
    torch.manual_seed(0)
    body: list[nn.Module] = []
    for _ in range(24):
        body += [nn.Linear(32, 32), nn.Tanh()]
    mlp = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), *body, nn.Linear(32, 3))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    tips = advise(mlp, (x, y), CE)
    assert [t.layers for t in tips] == [(k, k + 1) for k in range(2, 26, 2)]
    assert (tips[0].src, tips[0].dst) == ("1", "4")  # Tanh output -> the next-but-one Linear
    assert "vanishing" in tips[0].reason
    assert len(advise(mlp, (x, y), CE, max_suggestions=3)) == 3
    net = apply(mlp, tips, x[:2])
    assert net(x).shape == (64, 3)


def test_unet_skips_for_an_encoder_decoder() -> None:
    torch.manual_seed(0)

    def unit(conv: nn.Module, c: int) -> list[nn.Module]:
        return [conv, nn.BatchNorm1d(c), nn.ReLU()]

    net = nn.Sequential(
        *unit(nn.Conv1d(1, 8, 3, padding=1), 8),
        *unit(nn.Conv1d(8, 16, 3, stride=2, padding=1), 16),  # 32 -> 16
        *unit(nn.Conv1d(16, 16, 3, stride=2, padding=1), 16),  # 16 -> 8
        *unit(nn.ConvTranspose1d(16, 16, 2, stride=2), 16),  # 8 -> 16
        *unit(nn.ConvTranspose1d(16, 8, 2, stride=2), 8),  # 16 -> 32
        nn.Conv1d(8, 1, 3, padding=1),
    )
    x = torch.randn(16, 1, 32)
    tips = advise(net, (x, x), nn.MSELoss())
    assert [(t.src, t.dst, t.merge) for t in tips] == [("5", "10", "concat"), ("2", "13", "concat")]
    assert "U-Net" in tips[1].reason and tips[1].score == 2.0
    assert apply(net, tips, x[:2])(x).shape == x.shape


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="block"):
        advise(cifar56(False), batch(), CE, block=0)
    with pytest.raises(ValueError, match="rank_drop"):
        advise(cifar56(False), batch(), CE, rank_drop=2.0)
    with pytest.raises(ValueError, match="not a submodule"):
        apply(cifar56(False), [Suggestion(src="nope", dst="fc")], batch()[0][:2])


@pytest.mark.slow
def test_advice_trains_like_resnet56() -> None:
    """The issue's validation on MNIST-1D, with a small fixed budget (512 training examples,
    20 epochs of AdamW): the advised plain-56 reaches the training error of the hand-built
    ResNet-56 within 2 points; the plain net stays far above."""
    from skipkit.data import mnist1d

    train, _ = mnist1d()
    x, y = train.tensors
    data = TensorDataset(x[:512], y[:512])
    cfg = TrainConfig(
        epochs=20,
        batch_size=64,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.0,
        device="cpu",
        quiet=True,
    )

    def train_error(net: nn.Module) -> float:
        seed_everything(0)
        trainer = Trainer(net, data, None, cfg)
        trainer.fit()
        return trainer.evaluate(data)["error"]

    plain = cifar56(skip=False)
    tips = advise(plain, (x[:128], y[:128]), CE)
    advised = apply(plain, tips, x[:2])
    errors = {
        "advised": train_error(advised),
        "resnet56": train_error(cifar56(skip=True)),
        "plain": train_error(plain),
    }
    assert len(tips) == 27
    assert abs(errors["advised"] - errors["resnet56"]) <= 0.02, errors
    assert errors["plain"] >= errors["resnet56"] + 0.3, errors
