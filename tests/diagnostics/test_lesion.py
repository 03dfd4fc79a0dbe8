"""Lesion study (Veit et al. 2016): skipkit.diagnostics.lesion, built on the skip protocol."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.diagnostics import Lesion, lesion, plot_lesion
from skipkit.models.resnet_cifar import cifar_resnet

WIDTH = 16


def _mlp(depth: int = 6, *, merge: str = "add", seed: int = 0) -> nn.Sequential:
    """``Linear(8, WIDTH)``, ``depth`` residual Linear-ReLU blocks, ``Linear(WIDTH, 4)``."""
    torch.manual_seed(seed)
    blocks = [
        sk.Residual(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()), merge=merge)
        for _ in range(depth)
    ]
    model = nn.Sequential(nn.Linear(8, WIDTH), *blocks, nn.Linear(WIDTH, 4))
    sk.materialize(model, torch.zeros(2, 8))
    return model


def _data(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, :4].argmax(1) + (x[:, 4] > 0).long()) % 4


def _reference(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    x, y = data
    with torch.no_grad():
        out = model.eval()(x)
    return float((out.argmax(1) != y).float().mean()), float(nn.functional.cross_entropy(out, y))


class _Formula(nn.Module):
    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def _train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int = 300) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_a_zeroed_branch_changes_nothing() -> None:
    model, data = _mlp(), _data()
    last = model[3].body[0]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    result = lesion(model, data)
    base = _reference(model, data)
    assert (result.error, result.loss) == pytest.approx(base, abs=0)
    by = {b.name: b for b in result.blocks}
    assert (by["3"].error, by["3"].loss) == (result.error, result.loss)
    assert by["1"].loss != result.loss
    assert [b.name for b in result.blocks] == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize(
    ("merge", "deleted"),
    [
        ("add", lambda blk, s: s),
        ("rezero", lambda blk, s: s),
        ("weighted", lambda blk, s: blk.merge.weights[0] * s),
        ("gate", lambda blk, s: (1 - torch.sigmoid(blk.merge.transform(s))) * s),
        ("mul", lambda blk, s: s),
        ("film", lambda blk, s: 1 + s),
        ("tanh_gate", lambda blk, s: torch.tanh(blk.merge.transform(s)) * s),
    ],
)
def test_deleting_a_block_leaves_its_shortcut_through_the_merge(merge, deleted) -> None:
    model, data = _mlp(3, merge=merge), _data()
    for p in model.parameters():  # rezero/weighted start at values that would hide the branch
        nn.init.normal_(p, std=0.5)
    blk = model[2]
    ref = copy.deepcopy(model)
    ref[2] = _Formula(lambda x: deleted(ref_blk, ref_blk.shortcut(x)))
    ref_blk = copy.deepcopy(blk)
    result = lesion(model, data, blocks=["2"])
    assert (result.blocks[0].error, result.blocks[0].loss) == pytest.approx(
        _reference(ref, data), rel=1e-6
    )
    assert result.blocks[0].loss != pytest.approx(result.loss)


def test_concat_deletion_sees_zeros_where_the_branch_was() -> None:
    torch.manual_seed(0)
    blk = sk.Residual(nn.Sequential(nn.Linear(8, 6), nn.ReLU()), merge="concat")
    model = nn.Sequential(blk, nn.Linear(14, 4))
    sk.materialize(model, torch.zeros(2, 8))
    data = _data()
    ref = nn.Sequential(_Formula(lambda x: torch.cat([x.new_zeros(len(x), 6), x], 1)), model[1])
    result = lesion(model, data)
    (row,) = result.blocks
    assert row.stage_change and row.in_shape == [8] and row.out_shape == [14]
    assert (row.error, row.loss) == pytest.approx(_reference(ref, data), rel=1e-6)


def test_cifar_resnet_block_becomes_relu_of_its_shortcut() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(8, dims=1, in_channels=1)
    x = torch.randn(64, 1, 40)
    data = (x, torch.arange(64) % 10)
    ref = copy.deepcopy(model)
    sc = ref.layer2[0].shortcut
    ref.layer2[0] = _Formula(lambda t: torch.relu(sc(t)))
    result = lesion(model, data)
    by = {b.name: b for b in result.blocks}
    assert list(by) == ["layer1.0", "layer2.0", "layer3.0"]
    assert by["layer2.0"].stage_change and not by["layer1.0"].stage_change
    assert by["layer2.0"].in_shape == [16, 40] and by["layer2.0"].out_shape == [32, 20]
    assert (by["layer2.0"].error, by["layer2.0"].loss) == pytest.approx(
        _reference(ref, data), rel=1e-6
    )


def test_plain_twin_blocks_become_the_identity_and_stage_changes_cannot_go() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(14, dims=1, in_channels=1)
    x = torch.randn(64, 1, 40)
    data = (x, torch.arange(64) % 10)
    with sk.skips_disabled(model):
        ref = copy.deepcopy(model)
        ref.layer1[1] = nn.ReLU()  # post(x): the block's input passes through its ReLU
        result = lesion(model, data)
        base = _reference(model, data)
        expected = _reference(ref, data)
    assert result.plain and (result.error, result.loss) == pytest.approx(base, rel=1e-6)
    by = {b.name: b for b in result.blocks}
    assert (by["layer1.1"].error, by["layer1.1"].loss) == pytest.approx(expected, rel=1e-6)
    for name in ("layer2.0", "layer3.0"):
        assert by[name].stage_change and by[name].error is None and by[name].loss is None
    assert result.summary()["not_deletable"] == ["layer2.0", "layer3.0"]
    assert all(m.skip_enabled for m in model.modules() if isinstance(m, sk.SkipModule))


def test_trained_residual_net_survives_lesions_better_than_its_plain_twin() -> None:
    data, test = _data(512, seed=1), _data(512, seed=2)
    res = _mlp(8, seed=3)
    plain = copy.deepcopy(res)  # the same initial weights
    _train(res, data)
    with sk.skips_disabled(plain):
        _train(plain, data)
        p = lesion(plain, test, k=(1, 3), sets=5)
    r = lesion(res, test, k=(1, 3), sets=5)
    assert r.error < 0.2 and p.error < 0.2  # both learned the task
    rise_r = r.summary()["within_stage"]["mean_increase"]
    rise_p = p.summary()["within_stage"]["mean_increase"]
    assert rise_r < rise_p
    assert r.by_k()[3]["mean"] < p.by_k()[3]["mean"]


def test_blocks_selection_order_and_unknown_names() -> None:
    model, data = _mlp(), _data()
    result = lesion(model, data, blocks=["5", "2"])
    assert [b.name for b in result.blocks] == ["5", "2"]
    assert [b.index for b in result.blocks] == [0, 1]
    with pytest.raises(ValueError, match=r"\['9'\] are not skips of the model; its skips are: 1"):
        lesion(model, data, blocks=["9"])
    with pytest.raises(TypeError, match="list of module paths"):
        lesion(model, data, blocks="1")  # type: ignore[arg-type]


def test_k_sets_are_seeded_distinct_and_exhaustive_when_few() -> None:
    model, data = _mlp(), _data()
    a = lesion(model, data, k=(2, 3), sets=4, seed=5)
    b = lesion(model, data, k=(2, 3), sets=4, seed=5)
    c = lesion(model, data, k=(2, 3), sets=4, seed=6)
    assert a.to_dict() == b.to_dict()
    assert [s.blocks for s in a.sets] != [s.blocks for s in c.sets]
    assert [s.k for s in a.sets] == [2] * 4 + [3] * 4
    assert len({tuple(s.blocks) for s in a.sets}) == 8
    assert all(len(set(s.blocks)) == s.k for s in a.sets)
    every = lesion(model, data, k=5, sets=10)
    assert len(every.sets) == math.comb(6, 5) == 6
    assert every.by_k()[5]["n"] == 6


def test_sets_leave_stage_changes_out() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(14, dims=1, in_channels=1)
    data = (torch.randn(32, 1, 40), torch.arange(32) % 10)
    result = lesion(model, data, k=2, sets=50)
    assert len(result.sets) == math.comb(4, 2)
    assert not any(b.startswith(("layer2.0", "layer3.0")) for s in result.sets for b in s.blocks)
    with pytest.raises(ValueError, match="k=5 but only 4 selected blocks keep the shape"):
        lesion(model, data, k=5)


def test_model_is_left_as_it_was() -> None:
    model, data = _mlp(), _data()
    model.train()
    before = _reference(copy.deepcopy(model), data)
    lesion(model, data, k=2, sets=2)
    assert model.training
    assert _reference(model, data) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"k": 0}, ValueError, "k must be a positive int"),
        ({"k": [1, True]}, ValueError, "k must be a positive int"),
        ({"sets": 0}, ValueError, "sets must be >= 1"),
        ({"data": (torch.randn(4, 8), torch.zeros(3).long())}, ValueError, "same first dim"),
        ({"data": 3}, TypeError, "data must be"),
    ],
)
def test_bad_arguments(kw, exc, match) -> None:
    args = {"data": _data(), **kw}
    with pytest.raises(exc, match=match):
        lesion(_mlp(), **args)


def test_a_model_without_skips() -> None:
    with pytest.raises(ValueError, match=r"has no skipkit\.SkipModule"):
        lesion(nn.Sequential(nn.Linear(8, 4)), _data())


def test_dataset_and_loader_give_the_same_result(tmp_path) -> None:
    model, (x, y) = _mlp(), _data()
    ds = torch.utils.data.TensorDataset(x, y)
    a = lesion(model, (x, y), batch_size=64)
    b = lesion(model, ds, batch_size=64)
    c = lesion(model, torch.utils.data.DataLoader(ds, batch_size=100))
    assert a.to_dict() == b.to_dict()
    assert [r.error for r in c.blocks] == [r.error for r in a.blocks]
    d = json.loads(json.dumps(a.to_dict()))
    assert d["examples"] == 256 and len(d["blocks"]) == 6 and d["by_k"]["0"]["mean"] == a.error
    assert isinstance(a, Lesion)
    fig = plot_lesion([a, b], tmp_path / "lesion.png", labels=["ResNet", "plain"])
    assert (tmp_path / "lesion.png").stat().st_size > 1000
    assert len(fig.axes) == 2
