from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import skipkit as sk


def _basic_body(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
    )


def _copy_torchvision_block(block: sk.Residual, tv: BasicBlock) -> None:
    """Load a torchvision BasicBlock's weights into Residual(body, shortcut=auto)."""
    b = block.body
    mapping = {b[0]: tv.conv1, b[1]: tv.bn1, b[3]: tv.conv2, b[4]: tv.bn2}
    if tv.downsample is not None:
        assert isinstance(block.shortcut, nn.Sequential)
        mapping.update({block.shortcut[0]: tv.downsample[0], block.shortcut[1]: tv.downsample[1]})
    for ours, theirs in mapping.items():
        ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize(("c_in", "c_out", "stride", "size"), [(8, 8, 1, 8), (8, 16, 2, 9)])
def test_residual_equals_torchvision_basic_block(
    c_in: int, c_out: int, stride: int, size: int
) -> None:
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
        )
    tv = BasicBlock(c_in, c_out, stride, downsample)
    ours = sk.Residual(
        _basic_body(c_in, c_out, stride), post="relu", in_shape=(1, c_in, size, size)
    )
    _copy_torchvision_block(ours, tv)
    x = torch.randn(2, c_in, size, size)
    for mode in ("train", "eval"):
        getattr(tv, mode)()
        getattr(ours, mode)()
        assert torch.equal(ours(x), tv(x)), mode


def test_in_shape_plans_on_meta_without_touching_state() -> None:
    body = _basic_body(4, 8, 2)
    before = copy.deepcopy(body.state_dict())
    block = sk.Residual(body, in_shape=(1, 4, 16, 16))
    assert block.ready
    for k, v in body.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats and counters untouched
    assert all(p.device.type == "cpu" for p in block.parameters())


def test_in_shape_batch_of_one_through_batchnorm1d() -> None:
    body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
    block = sk.Residual(body, in_shape=(1, 8)).train()
    assert block.ready and block.training and body[1].training
    assert block(torch.randn(4, 8)).shape == (4, 16)


def test_lazy_build_and_materialize() -> None:
    model = nn.Sequential(sk.Residual(nn.Linear(10, 32)), nn.ReLU(), sk.Residual(nn.Linear(32, 4)))
    assert not model[0].ready
    n_before = sum(p.numel() for p in model.parameters())
    model.train()
    sk.materialize(model, torch.randn(3, 10))
    assert model[0].ready and model[2].ready and model.training
    assert sum(p.numel() for p in model.parameters()) == n_before + 10 * 32 + 32 + 32 * 4 + 4
    assert model[0].path == "0" and model[2].path == "2"


def test_materialize_keeps_batchnorm_statistics() -> None:
    model = nn.Sequential(sk.Residual(_basic_body(3, 6, 1)))
    bn = model[0].body[1]
    sk.materialize(model, torch.randn(4, 3, 8, 8) * 5)
    assert torch.equal(bn.running_mean, torch.zeros(6)) and int(bn.num_batches_tracked) == 0
    assert model[0].shortcut[1].num_batches_tracked == 0


def test_load_state_dict_before_materialize_is_a_clear_error() -> None:
    src = sk.Residual(nn.Linear(4, 6), in_shape=(1, 4))
    dst = sk.Residual(nn.Linear(4, 6))
    with pytest.raises(ValueError, match="materialize"):
        dst.load_state_dict(src.state_dict())
    sk.materialize(dst, torch.randn(1, 4))
    dst.load_state_dict(src.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(dst(x), src(x))


def test_shape_error_names_the_path_after_materialize() -> None:
    model = nn.Sequential(nn.Identity(), nn.Sequential(sk.Residual(nn.Flatten())))
    with pytest.raises(sk.ShapeMismatchError) as info:
        sk.materialize(model, torch.randn(2, 3, 4, 4))
    assert str(info.value).startswith("1.0: the body changes the tensor rank")
    assert "(2, 3, 4, 4)" in str(info.value) and "(2, 48)" in str(info.value)


def test_in_shape_that_the_body_cannot_take() -> None:
    with pytest.raises(sk.ShapeMismatchError, match=r"cannot take in_shape \(1, 5, 8, 8\)"):
        sk.Residual(nn.Conv2d(3, 8, 3), in_shape=(1, 5, 8, 8))


def test_constructor_validation() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        sk.Residual(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown shortcut"):
        sk.Residual(nn.Identity(), shortcut="conv")
    with pytest.raises(ValueError, match="unknown activation"):
        sk.Residual(nn.Identity(), post="swish2")
    with pytest.raises(ValueError, match=r"drop_path\)=1.0 must be in"):
        sk.Residual(nn.Identity(), drop_path=1.0)
    with pytest.raises(ValueError, match="unknown layout"):
        sk.Residual(nn.Identity(), layout="HWC")


def test_identity_shortcut_never_broadcasts_silently() -> None:
    block = sk.Residual(nn.Linear(4, 1), shortcut="identity")
    with pytest.raises(sk.ShapeMismatchError, match="identity"):
        block(torch.randn(2, 4))


def test_custom_shortcut_module() -> None:
    proj = nn.Linear(3, 5, bias=False)
    block = sk.Residual(nn.Linear(3, 5), shortcut=proj)
    x = torch.randn(2, 3)
    assert torch.equal(block(x), block.body(x) + proj(x))
    with pytest.raises(sk.ShapeMismatchError, match=r"equal shapes \(skip \(1, 4\)"):
        sk.Residual(nn.Linear(3, 5), shortcut=nn.Linear(3, 4), in_shape=(1, 3))
    lazy = sk.Residual(nn.Linear(3, 5), shortcut=nn.Linear(3, 4))
    with pytest.raises(sk.ShapeMismatchError, match=r"equal shapes \(skip \(2, 4\)"):
        lazy(x)


def test_seed_fc_projection_equals_hand_written() -> None:
    block = sk.Residual(nn.Linear(10, 64), post="relu")
    x = torch.randn(5, 10)
    y = block(x)
    assert isinstance(block.shortcut, nn.Linear)
    assert torch.equal(y, torch.relu(block.body(x) + block.shortcut(x)))


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU, nn.RNN])
def test_residual_rnn_returns_state_and_stacks(rnn: type[nn.RNNBase]) -> None:
    stack = nn.Sequential(
        sk.Residual(rnn(6, 12, batch_first=True)), sk.Residual(rnn(12, 12, batch_first=True))
    )
    x = torch.randn(2, 9, 6)
    y, state = stack(x)
    assert y.shape == (2, 9, 12)
    first = stack[0]
    out1, _ = first.body(x)
    h1 = out1 + first.shortcut(x)
    out2, state2 = stack[1].body(h1)
    assert torch.allclose(y, out2 + h1)
    h_expected = state2[0] if isinstance(state2, tuple) else state2
    h_got = state[0] if isinstance(state, tuple) else state
    assert torch.equal(h_got, h_expected)


def test_residual_lstm_in_shape_on_meta() -> None:
    block = sk.Residual(nn.LSTM(10, 64, batch_first=True), in_shape=(1, 5, 10))
    assert block.ready and isinstance(block.shortcut, nn.Linear)


def test_drop_path_per_sample() -> None:
    dp = sk.DropPath(0.5)
    x = torch.ones(1000, 3)
    y = dp.train()(x)
    kept = y[:, 0] != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0))  # rescaled by 1 / keep
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    assert (y == y[:, :1]).all()  # whole sample kept or dropped
    assert 400 < int(kept.sum()) < 600
    assert torch.equal(dp.eval()(x), x)


def test_residual_drop_path_drops_the_branch_only() -> None:
    block = sk.Residual(nn.Linear(4, 4), drop_path=0.999).train()
    torch.manual_seed(3)
    x = torch.randn(8, 4)
    assert torch.equal(block(x), x)


def test_skips_disabled_gives_plain_twin_and_restores() -> None:
    block = sk.Residual(nn.Linear(4, 6), post="relu", in_shape=(1, 4))
    x = torch.randn(3, 4)
    with sk.skips_disabled(block):
        assert torch.equal(block(x), torch.relu(block.body(x)))
    assert block.skip_enabled
    with pytest.raises(RuntimeError), sk.skips_disabled(block):
        raise RuntimeError("boom")
    assert block.skip_enabled


def test_highway_formula() -> None:
    hw = sk.Highway(nn.Linear(5, 5), gate_bias=-3.0, in_shape=(1, 5))
    assert isinstance(hw.merge, sk.Gate) and hw.merge.transform is not None
    assert torch.equal(hw.merge.transform.bias, torch.full((5,), -3.0))
    x = torch.randn(4, 5)
    t = torch.sigmoid(hw.merge.transform(x))
    assert torch.allclose(hw(x), hw.body(x) * t + x * (1 - t))


def test_dense_block_concatenates_every_layer() -> None:
    def make(c: int, k: int) -> nn.Module:
        return nn.Conv2d(c, k, 3, padding=1)

    block = sk.DenseBlock(make, 3, 4, in_channels=5)
    names = [n for n, _ in block.named_children()]
    assert names == ["shortcut", "merge", "denselayer1", "denselayer2", "denselayer3"]
    assert isinstance(block.shortcut, nn.Identity) and block.describe().merge == "DenseMerge"
    x = torch.randn(2, 5, 6, 6)
    f1 = block.denselayer1(x)
    f2 = block.denselayer2(torch.cat([x, f1], 1))
    f3 = block.denselayer3(torch.cat([x, f1, f2], 1))
    assert torch.equal(block(x), torch.cat([x, f1, f2, f3], 1))
    with sk.skips_disabled(block):
        g1 = block.denselayer1(x)
        g2 = block.denselayer2(torch.cat([torch.zeros_like(x), g1], 1))
        g3 = block.denselayer3(torch.cat([torch.zeros_like(x), torch.zeros_like(g1), g2], 1))
        zeros = torch.zeros(2, 13, 6, 6)
        assert torch.equal(block(x), torch.cat([zeros, g3], 1))


def test_dense_block_lazy_and_features_last() -> None:
    block = sk.DenseBlock(lambda c, k: nn.Linear(c, k), 2, 3, layout="NLC")
    assert block(torch.randn(2, 7, 4)).shape == (2, 7, 10)


def test_dense_block_memory_efficient_same_outputs_grads_and_stats() -> None:
    torch.manual_seed(1)
    plain = sk.DenseBlock(None, 3, 4, in_channels=6)
    efficient = copy.deepcopy(plain)
    efficient.memory_efficient = True
    x = torch.randn(2, 6, 5, 5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), efficient(xb)
    assert torch.allclose(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)
    for (name, pa), pb in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), name
    for (name, ba), bb in zip(plain.named_buffers(), efficient.buffers(), strict=True):
        assert torch.equal(ba, bb), name  # running stats updated once, not twice


def test_dense_block_validation() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        sk.DenseBlock(None, 0, 4)
    with pytest.raises(TypeError, match="make_layer"):
        sk.DenseBlock(lambda c, k: "conv", 1, 4, in_channels=3)  # type: ignore[arg-type,return-value]


MERGE_KINDS = ["add", "concat", "mul", "gate", "rezero", "skipinit", "layerscale", "weighted"]


def _materialized(merge: str) -> sk.Residual:
    body = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
    return sk.Residual(body, merge=merge, post="relu", drop_path=0.1, in_shape=(1, 4, 8, 8))


@pytest.mark.parametrize("merge", MERGE_KINDS)
def test_state_dict_deepcopy_pickle_round_trip(merge: str) -> None:
    block = _materialized(merge).eval()
    x = torch.randn(2, 4, 8, 8)
    y = block(x)
    other = _materialized(merge).eval()
    buf = io.BytesIO()
    torch.save(block.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other(x), y)
    assert torch.equal(copy.deepcopy(block)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(block))(x), y)


@pytest.mark.slow
@pytest.mark.parametrize("merge", MERGE_KINDS)
def test_compile_fullgraph(merge: str) -> None:
    torch._dynamo.reset()
    block = _materialized(merge).eval()
    x = torch.randn(2, 4, 8, 8)
    # Inductor for the default merge; aot_eager (same graph capture, no C++ build) for the rest.
    backend = "inductor" if merge == "add" else "aot_eager"
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    assert torch.allclose(compiled(x), block(x), atol=1e-5)


def test_shape_mismatch_error_pickles() -> None:
    err = sk.ShapeMismatchError(
        "boom", path="a.b", skip_shape=(1, 2), branch_shape=(1, 3), fixes=["x"]
    )
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == "a.b" and back.fixes == ["x"]
