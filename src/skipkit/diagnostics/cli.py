"""``skipkit gradflow``, ``skipkit landscape`` and ``skipkit advise``.

:func:`add_parsers` is called by :mod:`skipkit.cli` with its subparsers; each command writes
JSON and PNG files to ``--out`` and a short summary to stdout. User mistakes raise
``ValueError`` (the ``skipkit`` command turns them into one line and exit status 2).

::

    skipkit gradflow --model resnet20 --model resnet56          plain vs residual, overlaid
    skipkit landscape --model resnet20 --weights w.safetensors  Li et al. surface (torchrun-able)
    skipkit advise --model resnet56 --no-skip                   where skips belong
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipkit.cli import echo, key_value, positive_int, say

__all__ = ["add_parsers"]


# ----------------------------------------------------------------------------- argument kinds


def _add_model(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    g = p.add_argument_group("model")
    if several:
        g.add_argument(
            "--model",
            action="append",
            default=None,
            help="registry name (repeatable; default: resnet20 and resnet56)",
        )
        g.add_argument(
            "--variants",
            choices=("both", "skip", "plain"),
            default="both",
            help="build each model with skips, without (its plain twin), or both (%(default)s)",
        )
    else:
        g.add_argument("--model", required=True, help="registry name, e.g. resnet20")
        g.add_argument("--no-skip", action="store_true", help="the plain twin (skip=False)")
    g.add_argument(
        "--model-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the model builder (repeatable), e.g. shortcut=B",
    )
    g.add_argument(
        "--weights",
        default=None,
        help="a .safetensors or torch state_dict to load (e.g. from 'skipkit train'); without "
        "it the model keeps its seeded random initialisation",
    )


def _add_data(p: argparse.ArgumentParser, *, examples: int, what: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist1d", help="mnist1d, cifar10, ... (%(default)s)")
    g.add_argument("--data-dir", default=None, help="CIFAR folder / MNIST-1D cache folder")
    g.add_argument(
        "--examples",
        type=positive_int,
        default=examples,
        help=f"{what} (%(default)s, drawn from the training set with --seed)",
    )
    g.add_argument("--seed", type=int, default=0, help="model init and data draw (%(default)s)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if any)")


def _add_common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help="output folder (%(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parsers(sub: Any) -> None:
    """Register ``gradflow``, ``landscape`` and ``advise`` on ``skipkit``'s subparsers."""
    p = sub.add_parser(
        "gradflow",
        help="gradient norms per layer and skip balance, plain vs residual",
        description="One forward and backward pass per model on a batch of training data: "
        "the gradient norm of every layer's output and weights against depth (log scale, "
        "models overlaid), He et al.'s per-layer response std, and per skip the ratio of "
        "branch to shortcut. Writes gradflow.json and gradflow.png to --out.",
    )
    _add_model(p, several=True)
    _add_data(p, examples=128, what="batch size of the measured pass")
    p.add_argument("--ranks", action="store_true", help="also effective ranks (an SVD/layer)")
    _add_common(p, "runs/gradflow")
    p.set_defaults(func=_cmd_gradflow)

    p = sub.add_parser(
        "landscape",
        help="Li et al.'s loss landscape (random directions or interpolation)",
        description="The loss on a grid around the weights along filter-normalized random "
        "directions (Li et al. 2018), or along the line between two weight files "
        "(--interpolate). Resumable (--resume) and splittable: 'torchrun --nproc-per-node N "
        "-m skipkit.cli landscape ...' deals the grid points to N processes. Writes "
        "landscape.npz, landscape.json and landscape.png to --out.",
    )
    _add_model(p)
    _add_data(p, examples=1000, what="training examples the loss is averaged over")
    g = p.add_argument_group("grid")
    g.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1 or 2 (%(default)s)")
    g.add_argument("--steps", type=positive_int, default=21, help="points per axis (21)")
    g.add_argument(
        "--span",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="offsets per axis (default -1 1; -0.5 1.5 with --interpolate)",
    )
    g.add_argument("--include-bn", action="store_true", help="move biases and BN weights too")
    g.add_argument(
        "--interpolate",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="two weight files of the model: the 1-D line from A to B instead",
    )
    g.add_argument("--batch-size", type=positive_int, default=500, help="(%(default)s)")
    p.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="train the model this many epochs first (skipkit's default recipe), when no "
        "--weights are given (%(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_common(p, "runs/landscape")
    p.set_defaults(func=_cmd_landscape)

    p = sub.add_parser(
        "advise",
        help="where skip connections belong in a model",
        description="Measures gradient flow and activation ranks on a batch and proposes "
        "skips (src, dst, merge, shortcut, reason) for skipkit.add_skip. With "
        "--validate-epochs it also trains the model with and without the advice. Writes "
        "advice.json and gradflow.png to --out.",
    )
    _add_model(p)
    _add_data(p, examples=128, what="batch size of the measured pass")
    p.add_argument("--block", type=positive_int, default=2, help="layers per skip (2)")
    p.add_argument(
        "--min-decades",
        type=float,
        default=1.5,
        help="gradient-signal change that marks a span unhealthy (%(default)s)",
    )
    p.add_argument("--max", type=positive_int, default=None, help="keep the N best suggestions")
    p.add_argument(
        "--validate-epochs",
        type=int,
        default=0,
        help="train the model as it is and with the advice applied for N epochs on "
        "--validate-examples training examples, and compare training errors (0: skip)",
    )
    p.add_argument("--validate-examples", type=positive_int, default=512, help="(512)")
    _add_common(p, "runs/advise")
    p.set_defaults(func=_cmd_advise)


# ------------------------------------------------------------------------------------ helpers


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _dataset(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from skipkit.data import DATASETS, get_dataset

    key = args.dataset.lower().replace("-", "").replace("_", "")
    train, test = get_dataset(args.dataset, root=args.data_dir)
    return DATASETS[key], train, test


def _subset(data: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training pairs drawn with ``seed``, stacked: ``x: (n, C, *S)``, ``y: (n,)``."""
    n = min(n, len(data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    xs, ys = zip(*(data[int(i)] for i in idx), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


def _build(
    args: argparse.Namespace, name: str, skip: bool, spec: Any, device: torch.device
) -> nn.Module:
    import skipkit.models as models
    from skipkit.train import seed_everything

    if not models.is_registered(name):
        models.create(name)  # raises ValueError with close matches
    kw: dict[str, Any] = {
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "dims": spec.dims,
        "skip": skip,
    }
    kw.update(dict(args.model_arg))
    seed_everything(args.seed)  # twins get the same initial weights
    try:
        model = models.create(name, **kw)
    except TypeError as exc:
        raise ValueError(f"cannot build {name} for {args.dataset}: {exc}") from exc
    if args.weights:
        from skipkit.models import load_weights

        load_weights(model, args.weights)
    return model.to(device)


def _label(name: str, skip: bool) -> str:
    return f"{name} ({'skips' if skip else 'plain'})"


def _write_json(path: Path, doc: Any) -> None:
    from skipkit.train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------- gradflow


def _cmd_gradflow(args: argparse.Namespace) -> int:
    from skipkit.diagnostics import gradient_flow
    from skipkit.diagnostics.plot import plot_gradient_flow

    names = args.model or ["resnet20", "resnet56"]
    if args.weights and (len(names) > 1 or args.variants == "both"):
        raise ValueError("--weights fits one model: give one --model and --variants skip|plain")
    spec, train, _ = _dataset(args)
    device = _device(args.device)
    x, y = _subset(train, args.examples, args.seed)
    batch = (x.to(device), y.to(device))
    skips = {"both": (False, True), "skip": (True,), "plain": (False,)}[args.variants]
    flows = []
    for name in names:
        for skip in skips:
            model = _build(args, name, skip, spec, device)
            say(args, f"measuring {_label(name, skip)}")
            flows.append(
                gradient_flow(
                    model, batch, nn.CrossEntropyLoss(), ranks=args.ranks, name=_label(name, skip)
                )
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "gradflow.json", {"flows": [f.to_dict() for f in flows]})
    plot_gradient_flow(flows, out / "gradflow.png")
    echo(f"{'model':<24}{'layers':>7}{'‖∂L/∂a‖ first':>15}{'last':>10}{'decades':>9}")
    for f in flows:
        g = [v for v in f.column("act_grad_norm") if math.isfinite(v) and v > 0]
        decades = math.log10(g[0] / g[-1]) if len(g) > 1 else math.nan
        first, last = (g[0], g[-1]) if g else (math.nan, math.nan)
        echo(f"{f.name:<24}{len(f.layers):>7}{first:>15.3g}{last:>10.3g}{decades:>9.2f}")
    echo(f"wrote {out / 'gradflow.json'} and {out / 'gradflow.png'}")
    return 0


# ---------------------------------------------------------------------------------- landscape


def _cmd_landscape(args: argparse.Namespace) -> int:
    from skipkit.diagnostics.landscape import interpolate, loss_landscape
    from skipkit.models import read_state_dict
    from skipkit.train.distributed import setup

    if args.interpolate and args.weights:
        raise ValueError("give either --weights (random directions) or --interpolate A B")
    if args.interpolate and args.train_epochs:
        raise ValueError("--train-epochs makes no sense with --interpolate A B")
    device = _device(args.device)
    info = setup(device)  # joins the torchrun group, if any
    main = info.rank == 0
    spec, train, _ = _dataset(args)
    model = _build(args, args.model, not args.no_skip, spec, device)
    if args.train_epochs > 0 and not args.weights:
        from skipkit.train import TrainConfig, Trainer

        if main:
            say(args, f"training {args.model} for {args.train_epochs} epochs first")
        cfg = TrainConfig(epochs=args.train_epochs, seed=args.seed, quiet=args.quiet)
        Trainer(model, train, None, cfg, device=str(device)).fit()
    x, y = _subset(train, args.examples, args.seed)
    out = Path(args.out)
    ckpt = out / "landscape.ckpt.npz"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            ckpt.unlink(missing_ok=True)
            for f in out.glob("landscape.ckpt.npz.rank*"):
                f.unlink()
    if info.enabled:
        torch.distributed.barrier()
    label = _label(args.model, not args.no_skip)
    show = main and not args.quiet and sys.stderr.isatty()
    t0 = time.perf_counter()
    if args.interpolate:
        a, b = (read_state_dict(p) for p in args.interpolate)
        land = interpolate(
            model,
            a,
            b,
            (x, y),
            nn.CrossEntropyLoss(),
            steps=args.steps,
            span=tuple(args.span) if args.span else (-0.5, 1.5),
            batch_size=args.batch_size,
            checkpoint=ckpt,
            progress=show,
            name=label,
        )
    else:
        land = loss_landscape(
            model,
            (x, y),
            nn.CrossEntropyLoss(),
            dims=args.dims,
            steps=args.steps,
            span=tuple(args.span) if args.span else (-1.0, 1.0),
            seed=args.seed,
            include_bn=args.include_bn,
            batch_size=args.batch_size,
            checkpoint=ckpt,
            progress=show,
            name=label,
        )
    if main:
        land.save(out / "landscape.npz")
        _write_json(out / "landscape.json", land.to_dict())
        land.plot(out / "landscape.png")
        s = land.summary()
        extra = f", non-convex share {s['nonconvex']:.0%}" if "nonconvex" in s else ""
        echo(
            f"{label}: {land.loss.size} points on {land.meta['examples']} examples in "
            f"{time.perf_counter() - t0:.1f} s ({info.world_size} process(es)); loss at the "
            f"weights {s['origin_loss']:.4g}, range {s['min_loss']:.3g}–{s['max_loss']:.3g}"
            f"{extra}"
        )
        echo(f"wrote {out / 'landscape.npz'}, landscape.json and landscape.png")
    if info.enabled:
        torch.distributed.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------- advise


def _cmd_advise(args: argparse.Namespace) -> int:
    from skipkit.diagnostics.advise import advise_with_flow
    from skipkit.diagnostics.plot import plot_gradient_flow

    spec, train, _ = _dataset(args)
    device = _device(args.device)
    model = _build(args, args.model, not args.no_skip, spec, device)
    x, y = _subset(train, args.examples, args.seed)
    batch = (x.to(device), y.to(device))
    tips, flow = advise_with_flow(
        model,
        batch,
        nn.CrossEntropyLoss(),
        block=args.block,
        min_decades=args.min_decades,
        max_suggestions=args.max,
    )
    flow.name = _label(args.model, not args.no_skip)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "model": args.model,
        "skip": not args.no_skip,
        "suggestions": [t.to_dict() for t in tips],
        "gradient_flow": flow.to_dict(),
    }
    if not tips:
        echo(f"{flow.name}: no skips suggested (the gradient signal is healthy)")
    else:
        echo(f"{flow.name}: {len(tips)} skip(s) suggested")
        for t in tips:
            echo(f"  {t.src} -> {t.dst}  merge={t.merge} shortcut={t.shortcut}  score={t.score}")
        echo(f"  why: {tips[0].reason}")
    if args.validate_epochs > 0 and tips:
        doc["validation"] = _validate(args, model, tips, train, x[:2].to(device), device)
    _write_json(out / "advice.json", doc)
    plot_gradient_flow([flow], out / "gradflow.png")
    echo(f"wrote {out / 'advice.json'} and {out / 'gradflow.png'}")
    return 0


def _validate(
    args: argparse.Namespace,
    model: nn.Module,
    tips: list[Any],
    train: Any,
    example: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Train the model as it is and with the advice, same budget and data; training errors."""
    from torch.utils.data import TensorDataset

    from skipkit.diagnostics.advise import apply
    from skipkit.train import TrainConfig, Trainer, seed_everything

    x, y = _subset(train, args.validate_examples, args.seed + 1)
    data = TensorDataset(x, y)
    cfg = TrainConfig(
        epochs=args.validate_epochs,
        batch_size=64,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.0,
        seed=args.seed,
        device=str(device),
        quiet=True,
    )
    errors: dict[str, float] = {}
    for label, net in (("as is", model), ("advised", apply(model, tips, example))):
        say(args, f"training the model {label} for {args.validate_epochs} epochs")
        seed_everything(args.seed)
        trainer = Trainer(net, data, None, cfg)
        trainer.fit()
        errors[label] = trainer.evaluate(data)["error"]
    echo(
        f"training error after {args.validate_epochs} epochs on {len(data)} examples: "
        f"as is {100 * errors['as is']:.1f}%, advised {100 * errors['advised']:.1f}%"
    )
    return errors
