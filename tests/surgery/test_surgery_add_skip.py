"""add_skip: function preserved at step 0, adapters learn, shapes, and every error."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import skipkit as sk
from skipkit.merges import resolve_merge
from skipkit.surgery import AddedSkip, Grafted, add_skip, list_skips

# the merges that can start as dst's output (zero_init=True), and those that cannot
MERGES = ["add", "concat", "film", "tanh_gate", "rezero_skip", "layerscale_skip", "weighted"]
NO_ZERO_START = ["mul", "gate", "rezero", "skipinit", "layerscale"]


def added(net: nn.Module) -> list[AddedSkip]:
    """The added skips of ``net``, typed."""
    return [m for m in net.modules() if isinstance(m, AddedSkip)]


def adapter_params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith("skips.")}


def sgd_steps(net: nn.Module, x: torch.Tensor, steps: int = 3, params: Any = None) -> None:
    opt = torch.optim.SGD(net.parameters() if params is None else params, lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("merge", MERGES)
def test_mlp_every_merge_starts_as_the_original_and_learns(mlp: nn.Sequential, merge: str) -> None:
    x = torch.randn(4, 8)
    net = add_skip(mlp, "1", "9", merge=merge, example=x)
    assert isinstance(net, Grafted)
    torch.testing.assert_close(net(x), mlp(x), atol=1e-6, rtol=0)
    # Gradients reach the parts that start at zero (dL/dW = g·xᵀ is not zero).
    net(x).square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if n.startswith("skips.")}
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads.values())
    before = adapter_params(net)
    sgd_steps(net, x)
    after = adapter_params(net)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert not torch.allclose(net(x), mlp(x), atol=1e-6)


@pytest.mark.parametrize("merge", MERGES)
def test_cnn_every_merge_long_skip_with_projection(cnn: nn.Sequential, merge: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    cnn.eval()
    net = add_skip(cnn, "0", "4", merge=merge, example=x).eval()  # (2,8,16,16) -> (2,32,4,4)
    torch.testing.assert_close(net(x), cnn(x), atol=1e-6, rtol=0)
    net.train()
    sgd_steps(net, x, steps=2)
    assert not torch.allclose(net.eval()(x), cnn(x), atol=1e-6)


@pytest.mark.parametrize("merge", MERGES + NO_ZERO_START)
def test_zero_init_false_uses_live_adapters(cnn: nn.Sequential, merge: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    cnn.eval()
    net = add_skip(cnn, "1", "3", merge=merge, example=x, zero_init=False).eval()
    out = net(x)
    assert out.shape == (2, 4)
    # these start closed by their own definition (tanh(0) = 0, α = 0, γ = 1e-5)
    if merge not in ("tanh_gate", "rezero_skip", "layerscale_skip"):
        assert not torch.allclose(out, cnn(x), atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.skips.parameters())


def test_merge_instances(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    add = sk.Add()
    net = add_skip(mlp, "1", "3", merge=add, example=x)
    assert added(net)[0].merge is not add  # copied: never shared between skips
    torch.testing.assert_close(net(x), mlp(x), atol=0, rtol=0)
    net = add_skip(mlp, "1", "3", merge=sk.Concat(out_channels=16), example=x)
    torch.testing.assert_close(net(x), mlp(x), atol=1e-6, rtol=0)
    with pytest.raises(
        sk.ShapeMismatchError,
        match=r"1 -> 3: merge Concat changes dst's output "
        r"shape.*\(skip \(2, 32\), branch \(2, 16\)\).*Concat\(out_channels",
    ):
        add_skip(mlp, "1", "3", merge=sk.Concat(), example=x)
    with pytest.raises(ValueError, match=r"merge 'gate' .* cannot: .*Fix: merge='tanh_gate'"):
        add_skip(mlp, "1", "3", merge=sk.Gate(), example=x)


def test_zero_init_projection_gets_a_gradient() -> None:
    """A zero Linear at the end of the adapter still learns: dL/dW = g·xᵀ."""
    x = torch.randn(4, 8)
    plain_linear = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 3))
    net = add_skip(plain_linear, "0", "1", example=x)
    lin = added(net)[0].adapter
    assert isinstance(lin, nn.Linear) and lin.weight.abs().sum() == 0
    out = net(x)
    torch.testing.assert_close(out, plain_linear(x), atol=0, rtol=0)
    out.sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    expected = torch.ones(4, 3).t() @ plain_linear[0](x)  # g·xᵀ with g = 1
    torch.testing.assert_close(lin.weight.grad, expected.detach())


def test_input_model_is_not_modified(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    state = copy.deepcopy(mlp.state_dict())
    net = add_skip(mlp, "1", "7", example=x)
    gain = added(net)[0].adapter  # identity shortcut (16 -> 16): a zero gain alone
    assert isinstance(gain, sk.surgery.ZeroGain)
    with torch.no_grad():
        gain.gain.fill_(1.0)
    assert not any(m._forward_hooks for m in mlp.modules())
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in state.items())
    assert net.model is not mlp and not torch.allclose(net(x), mlp(x))
    assert set(net.model.state_dict()) == set(mlp.state_dict())


def test_several_skips_short_and_long_compose(mlp: nn.Sequential) -> None:
    x = torch.randn(3, 8)
    net = add_skip(mlp, "1", "3", example=x)
    net = add_skip(net, "1", "13", merge="concat", example=x)
    net = add_skip(net, "3", "13", merge="tanh_gate", example=x)
    net = add_skip(net, "0", "", example=x)  # into the model's output: (3, 16) -> (3, 3)
    assert [s.dst for s in net.skips] == ["3", "13", "13", ""]
    torch.testing.assert_close(net(x), mlp(x), atol=1e-6, rtol=0)
    sgd_steps(net, x)
    assert all(p.grad is not None for n, p in net.named_parameters() if n.startswith("skips."))


def test_chained_skip_taps_the_merged_output(mlp: nn.Sequential) -> None:
    """A skip from a module that is itself a dst carries the merged output."""
    x = torch.randn(2, 8)
    net = add_skip(mlp, "1", "5", example=x, zero_init=False)
    net = add_skip(net, "5", "9", example=x, zero_init=False)
    _, feats = sk.surgery.taps(net, ["5", "9"], x)
    with torch.no_grad():
        h1 = mlp[:2](x)
        h5 = mlp[2:6](h1) + added(net)[0].adapter(h1)
        expected_9 = mlp[6:10](h5) + added(net)[1].adapter(h5)
    torch.testing.assert_close(feats["5"], h5)
    torch.testing.assert_close(feats["9"], expected_9)


def test_branchy_module_with_non_sequential_control_flow(branchy: nn.Module) -> None:
    x = torch.randn(2, 3, 16, 16)
    branchy.eval()
    net = add_skip(branchy, "stem", "right", example=x)  # (2,8,16,16) -> (2,16,8,8)
    net = add_skip(net, "stem", "head", merge="concat", example=x)  # map into a vector
    net.eval()
    torch.testing.assert_close(net(x), branchy(x), atol=1e-6, rtol=0)
    net.train()
    sgd_steps(net, x)
    assert not torch.allclose(net.eval()(x), branchy(x))


def test_modules_as_arguments_and_custom_shortcut(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    custom = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    net = add_skip(mlp, mlp[1], mlp[5], shortcut=custom, example=x)
    assert (added(net)[0].src, added(net)[0].dst) == ("1", "5")
    # The user's shortcut keeps its weights; a zero gain follows it.
    adapter = added(net)[0].adapter
    assert isinstance(adapter, nn.Sequential) and isinstance(adapter[-1], sk.surgery.ZeroGain)
    copied = adapter[0]
    assert isinstance(copied, nn.Sequential) and copied is not custom
    assert torch.equal(copied.state_dict()["0.weight"], custom.state_dict()["0.weight"])
    torch.testing.assert_close(net(x), mlp(x), atol=0, rtol=0)


def test_vector_into_feature_map_broadcasts(cnn: nn.Sequential) -> None:
    """A (N, F) src into a (N, C, H, W) dst: Linear, then the same value at every pixel."""

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(5, 7)
            self.body = cnn

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e = self.embed(t)
            return self.body(x) + e.sum()

    model = TwoInputs().eval()
    x, t = torch.randn(2, 3, 16, 16), torch.randn(2, 5)
    net = add_skip(model, "embed", "body.2", example=(x, t)).eval()
    assert isinstance(added(net)[0].adapter, sk.surgery.ToMap)
    torch.testing.assert_close(net(x, t), model(x, t), atol=1e-6, rtol=0)


def test_sequences_features_last_and_tuple_outputs() -> None:
    """(N, T, F) sequences use Linear shortcuts; an LSTM's (output, state) keeps its state."""

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 6)
            self.lstm = nn.LSTM(6, 10, batch_first=True)
            self.head = nn.Linear(10, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.embed(x))
            return self.head(out)

    model = Seq()
    x = torch.randn(3, 7, 4)
    net = add_skip(model, "embed", "lstm", example=x)
    assert isinstance(added(net)[0].adapter, nn.Linear)  # 6 -> 10 on the last dim
    torch.testing.assert_close(net(x), model(x), atol=0, rtol=0)
    sgd_steps(net, x)
    assert not torch.allclose(net(x), model(x))


def test_inplace_layer_after_src_is_handled_by_copying() -> None:
    """VGG-style conv -> ReLU(inplace=True): the skip must carry the conv output, not its
    ReLU, so src's output is copied when taken."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 4))
    x = torch.randn(8, 4)
    net = add_skip(model, "0", "2", example=x, zero_init=False, shortcut=nn.Identity())
    assert added(net)[0].clone_src
    expected = model(x) + model[0](x)  # pre-ReLU values, negative ones included
    torch.testing.assert_close(net(x), expected)


def test_inplace_change_seen_only_at_run_time_raises() -> None:
    """An in-place op that the eval-mode probe did not see (dropout in train mode) must not
    silently change what the skip carries."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5, inplace=True), nn.Linear(4, 4))
    x = torch.randn(8, 4)
    net = add_skip(model, "0", "2", example=x)
    assert not added(net)[0].clone_src
    net.eval()
    net(x)
    with pytest.raises(RuntimeError, match=r"0 -> 2: the output of src '0' was modified in place"):
        net.train()(x)


def test_example_leaves_batchnorm_statistics_alone(cnn: nn.Sequential) -> None:
    """The probing pass runs in eval mode, for the model and for earlier adapters alike."""
    x = torch.randn(4, 3, 16, 16)
    net = add_skip(cnn, "0", "4", example=x)  # a conv + BN adapter
    assert net.training
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    net = add_skip(net, "1", "3", example=x)
    assert all(torch.equal(v, dict(net.named_buffers())[k]) for k, v in buffers.items())
    assert net.training and all(m.training for m in net.modules())


def test_keyword_inputs_as_example() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, *, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.b(self.a(x) * scale)

    model = Keyword()
    x = torch.randn(2, 3)
    net = add_skip(model, "a", "b", example={"x": x, "scale": 2.0})
    torch.testing.assert_close(net(x=x, scale=2.0), model(x=x, scale=2.0), atol=0, rtol=0)


def test_inference_mode(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    net = add_skip(mlp, "1", "5", example=x, zero_init=False)
    expected = net(x)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected)


def test_zero_init_false_changes_the_function(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    net = add_skip(mlp, "1", "5", example=x, zero_init=False)
    assert not torch.allclose(net(x), mlp(x))


def test_skips_disabled_switches_added_skips_off_exactly(cnn: nn.Sequential) -> None:
    x = torch.randn(2, 3, 16, 16)
    cnn.eval()
    net = add_skip(cnn, "0", "4", example=x)
    net = add_skip(net, "1", "3", merge="concat", example=x).eval()
    sgd_steps(net, x, params=net.skips.parameters())  # eval mode: BN statistics stay
    assert not torch.allclose(net(x), cnn(x))
    with sk.skips_disabled(net):
        assert [s.enabled for s in list_skips(net)] == [False, False]
        torch.testing.assert_close(net(x), cnn(x), atol=0, rtol=0)
    assert all(s.enabled for s in list_skips(net))
    assert not torch.allclose(net(x), cnn(x))


def test_train_and_eval_reach_the_adapters(cnn: nn.Sequential) -> None:
    net = add_skip(cnn.eval(), "0", "4", example=torch.randn(2, 3, 16, 16))
    assert not net.training and not added(net)[0].training
    net.train()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())


class HalfAdd(sk.Merge):
    """A merge defined outside skipkit: ``s + b / 2`` never equals ``b``."""

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return skip + branch / 2


def test_custom_merge_that_does_not_start_at_identity_is_rejected(mlp: nn.Sequential) -> None:
    with pytest.raises(
        ValueError,
        match=r"1 -> 5: with zero_init=True .* merge HalfAdd \(HalfAdd\(s, b\)\) changes it "
        r"by up to .*Fix: use a merge that starts as b \('add', 'concat', 'film'",
    ):
        add_skip(mlp, "1", "5", merge=HalfAdd(), example=torch.randn(2, 8))
    net = add_skip(mlp, "1", "5", merge=sk.Scale(0.5), example=torch.randn(2, 8), zero_init=False)
    assert isinstance(added(net)[0].merge, sk.Scale)


FIXES = {
    "mul": "film",
    "gate": "tanh_gate",
    "rezero": "rezero_skip",
    "skipinit": "rezero_skip",
    "layerscale": "layerscale_skip",
}


@pytest.mark.parametrize("merge", NO_ZERO_START)
def test_merges_that_cannot_start_as_dst_are_refused_with_zero_init(
    mlp: nn.Sequential, merge: str
) -> None:
    formula = resolve_merge(merge).formula
    fix = FIXES[merge]
    with pytest.raises(ValueError) as e:
        add_skip(mlp, "1", "5", merge=merge, example=torch.randn(2, 8))
    assert str(e.value).startswith(
        f"1 -> 5: with zero_init=True the new skip must start as dst's output b, but merge "
        f"{merge!r} ({formula}) cannot: "
    )
    assert f"Fix: merge={fix!r} ({resolve_merge(fix).formula}), which starts as b; " in str(e.value)
    assert str(e.value).endswith(
        f"or zero_init=False to keep {merge!r} with its default initialisation"
    )
    with pytest.raises(ValueError, match=rf"merge {merge!r}"):  # an instance alike
        add_skip(mlp, "1", "5", merge=resolve_merge(merge), example=torch.randn(2, 8))


# ----------------------------------------------------------------------------- errors
def test_unknown_path_suggests_close_matches(cnn: nn.Sequential) -> None:
    with pytest.raises(
        ValueError,
        match=r"dst '4.00' is not a submodule of Sequential\. "
        r"Did you mean '4.0'",
    ):
        add_skip(cnn, "0", "4.00", example=torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"src 'stm' is not a submodule .*Did you mean 'stem'"):
        add_skip(_branchy_like(), "stm", "right", example=torch.randn(1, 3, 16, 16))


def _branchy_like() -> nn.Module:
    m = nn.Module()
    m.stem = nn.Identity()
    m.right = nn.Identity()
    return m


def test_src_equal_to_dst(mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match=r"src and dst are the same module '3'"):
        add_skip(mlp, "3", "3", example=torch.randn(1, 8))


def test_dst_before_src(mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match=r"7 -> 3: dst '3' runs before src '7'.*swap src and dst"):
        add_skip(mlp, "7", "3", example=torch.randn(1, 8))
    # A parent finishes after its children: a child cannot be the dst of its parent.
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"dst '0.1' runs before src '0'"):
        add_skip(net, "0", "0.1", example=torch.randn(1, 2))


def test_module_run_more_than_once(shared: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"inp -> block: dst 'block' ran 2 times in one forward"):
        add_skip(shared, "inp", "block", example=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"src 'block' ran 2 times"):
        add_skip(shared, "block", "out", example=torch.randn(2, 4))


def test_module_that_does_not_run(conditional: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"src 'extra' did not run on the example input"):
        add_skip(conditional, "extra", "out", example=-torch.ones(1, 4))


def test_control_flow_at_run_time_never_gives_a_silent_result(conditional: nn.Module) -> None:
    x = torch.ones(1, 4)
    net = add_skip(conditional, "extra", "out", example=x)
    net = add_skip(net, "inp", "twice", example=x)
    net(x)
    with pytest.raises(RuntimeError, match=r"extra -> out: dst 'out' ran before src 'extra'"):
        net(-x)
    with pytest.raises(RuntimeError, match=r"inp -> twice: dst 'twice' ran twice in one forward"):
        net(100 * x)
    torch.testing.assert_close(net(x), conditional(x))  # a failed pass leaves nothing behind


def test_src_runs_without_its_dst() -> None:
    class Skippy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.c(self.b(h)) if x.sum() > 0 else self.c(h)

    model = Skippy()
    net = add_skip(model, "a", "b", example=torch.ones(1, 2))
    with pytest.raises(RuntimeError, match=r"a -> b: dst 'b' did not run after src"):
        net(-torch.ones(1, 2))


def test_stale_src_from_another_pass_is_never_used(mlp: nn.Sequential) -> None:
    x = torch.randn(2, 8)
    net = add_skip(mlp, "1", "5", example=x, zero_init=False)
    net(x)
    inner = net.model
    assert isinstance(inner, nn.Sequential)
    # Calling a submodule on its own: src has not run in this pass, so dst refuses.
    with pytest.raises(RuntimeError, match=r"dst '5' ran before src '1'.*call the wrapper"):
        inner[2:](torch.randn(2, 16))
    # A pass that fails half-way (bad input shape after src) ...
    bad = torch.randn(2, 8)

    def boom(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        raise KeyError("boom")

    h = inner[3].register_forward_hook(boom)
    with pytest.raises(KeyError):
        net(bad)
    h.remove()
    # ... leaves no kept output behind: the next pass uses its own src output only.
    y = torch.randn(2, 8)
    with torch.no_grad():
        h1 = mlp[:2](y)
        expected = mlp[6:](mlp[2:6](h1) + added(net)[0].adapter(h1))
    torch.testing.assert_close(net(y), expected)


def test_missing_example(mlp: nn.Sequential) -> None:
    with pytest.raises(ValueError, match=r"add_skip needs example=<an input for the model>"):
        add_skip(mlp, "1", "5")


def test_shapes_no_shortcut_can_match() -> None:
    class Reshaper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv1d(3, 4, 1)  # (N, 4, 10)
            self.b = nn.Conv2d(1, 2, 1)  # (N, 2, 4, 10)
            self.c = nn.Linear(10, 10)  # (N*4, 10): the batch dim changes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            m = self.b(h.unsqueeze(1))
            return self.c(m.flatten(0, 2)[:8])

    model = Reshaper()
    x = torch.randn(2, 3, 10)
    with pytest.raises(
        sk.ShapeMismatchError,
        match=r"a -> b: src gives a 3-D tensor and dst a "
        r"4-D one.*\(skip \(2, 4, 10\), branch \(2, 2, 4, 10\)\).*shortcut=",
    ) as e:
        add_skip(model, "a", "b", example=x)
    assert e.value.path == "a -> b" and e.value.skip_shape == (2, 4, 10)
    with pytest.raises(sk.ShapeMismatchError, match=r"different batch sizes \(2 vs 8\)"):
        add_skip(model, "a", "c", example=x)


def test_shortcut_kind_that_cannot_fit(cnn: nn.Sequential) -> None:
    with pytest.raises(sk.ShapeMismatchError, match=r"0 -> 4: .*shortcut='identity' needs equal"):
        add_skip(cnn, "0", "4", shortcut="identity", example=torch.randn(1, 3, 16, 16))


def test_bad_arguments(mlp: nn.Sequential) -> None:
    with pytest.raises(TypeError, match=r"add_skip needs an nn\.Module"):
        add_skip("model", "1", "5", example=torch.randn(1, 8))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="unknown merge 'sum'"):
        add_skip(mlp, "1", "5", merge="sum", example=torch.randn(1, 8))
    with pytest.raises(ValueError, match="unknown shortcut 'conv'"):
        add_skip(mlp, "1", "5", shortcut="conv", example=torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"src Linear is not a submodule"):
        add_skip(mlp, nn.Linear(2, 2), "5", example=torch.randn(1, 8))


def test_added_skip_module_is_a_skip_module(mlp: nn.Sequential) -> None:
    net = add_skip(mlp, "1", "5", example=torch.randn(1, 8))
    assert isinstance(added(net)[0], AddedSkip) and isinstance(added(net)[0], sk.SkipModule)
    assert "1 -> 5: (1, 16) -> (1, 16), merge='add'" in repr(net)
