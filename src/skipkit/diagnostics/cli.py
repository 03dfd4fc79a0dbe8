"""Handlers of ``skipkit gradflow``, ``skipkit landscape`` and ``skipkit advise``.

The parsers are in :mod:`skipkit._cli_diagnostics` (torch-free, for a fast ``--help``). Each
command checks its inputs (model, weights, data, grid size) before it claims its run folder
(:func:`skipkit._runs.open_run`), then writes JSON and PNG files there and a short summary to
stdout. User mistakes raise ``ValueError`` (one line and exit status 2 on the command line).

::

    skipkit gradflow --model resnet20 --model resnet56          plain vs residual, overlaid
    skipkit landscape --model resnet20 --weights w.safetensors  Li et al. surface (torchrun-able)
    skipkit advise --model resnet56 --no-skip                   where skips belong
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import skipkit.models as models
from skipkit._cli_diagnostics import VARIANTS
from skipkit._cli_runs import claim_out, out_folder
from skipkit._cliargs import echo, say
from skipkit._runs import RunFolder, open_run
from skipkit._weights import read_state_dict
from skipkit.data import DATASETS, get_dataset
from skipkit.diagnostics.advise import advise_with_flow, apply
from skipkit.diagnostics.gradflow import gradient_flow
from skipkit.diagnostics.landscape import interpolate, loss_landscape
from skipkit.diagnostics.plot import plot_gradient_flow
from skipkit.models import load_weights
from skipkit.train import TrainConfig, Trainer, seed_everything
from skipkit.train.distributed import setup as setup_distributed
from skipkit.train.identity import check_classifier

__all__ = ["cmd_advise", "cmd_gradflow", "cmd_landscape"]

log = logging.getLogger(__name__)

LANDSCAPE_FILES = ("landscape.npz", "landscape.json", "landscape.png", "landscape.ckpt.npz")
BYTES_PER_POINT = 64  # loss, accuracy, done flags, coordinates and their copies, rounded up


# ------------------------------------------------------------------------------------ helpers


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _dataset(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    names = args.model if isinstance(args.model, list) else [args.model]
    for name in names or ():
        if not models.is_registered(name):
            models.create(name)  # an unknown name fails before the data is loaded
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
        said = io.StringIO()  # torch.hub prints "Downloading: ..." on stdout
        try:
            with contextlib.redirect_stdout(said):
                load_weights(model, args.weights)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or "://" not in str(args.weights):
                raise
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise ValueError(
                f"cannot fetch --weights {args.weights} ({reason}); check the address and the "
                "network, or pass a local file"
            ) from None
        if said.getvalue().strip():
            log.info(said.getvalue().strip())
    return model.to(device)


def _label(name: str, skip: bool) -> str:
    return f"{name} ({'skips' if skip else 'plain'})"


def _write_json(run: RunFolder, name: str, doc: Any) -> None:
    run.write_text(name, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The model must classify the batch (``num_classes`` above every label)."""
    check_classifier(model, TensorDataset(x.cpu(), y.cpu()))


def _open(args: argparse.Namespace, command: str, files: tuple[str, ...]) -> RunFolder:
    run = open_run(
        claim_out(args, command),
        command,
        resume=args.resume,
        overwrite=args.overwrite,
        writes=files,
    )
    run.expect(*files)
    return run


# ----------------------------------------------------------------------------------- gradflow


def cmd_gradflow(args: argparse.Namespace) -> int:
    names = args.model or ["resnet20", "resnet56"]
    if args.weights and (len(names) > 1 or args.variants == "both"):
        raise ValueError("--weights fits one model: give one --model and --variants skip|no-skip")
    out_folder(args)
    spec, train, _ = _dataset(args)
    device = _device(args.device)
    x, y = _subset(train, args.examples, args.seed)
    batch = (x.to(device), y.to(device))
    built = [
        (name, skip, _build(args, name, skip, spec, device))
        for name in names
        for skip in VARIANTS[args.variants]
    ]
    for _, _, model in built:
        _check(model, x, y)
    files = ("gradflow.json", "gradflow.png")
    with _open(args, "gradflow", files) as run:
        flows = []
        for name, skip, model in built:
            say(args, f"measuring {_label(name, skip)}")
            flows.append(
                gradient_flow(
                    model, batch, nn.CrossEntropyLoss(), ranks=args.ranks, name=_label(name, skip)
                )
            )
        out = run.path
        _write_json(run, "gradflow.json", {"flows": [f.to_dict() for f in flows]})
        plot_gradient_flow(flows, out / "gradflow.png")
        run.record("gradflow.png")
    echo(f"{'model':<24}{'layers':>7}{'‖∂L/∂a‖ first':>15}{'last':>10}{'decades':>9}")
    for f in flows:
        g = [v for v in f.column("act_grad_norm") if math.isfinite(v) and v > 0]
        decades = math.log10(g[0] / g[-1]) if len(g) > 1 else math.nan
        first, last = (g[0], g[-1]) if g else (math.nan, math.nan)
        echo(f"{f.name:<24}{len(f.layers):>7}{first:>15.3g}{last:>10.3g}{decades:>9.2f}")
    echo(f"wrote {out / 'gradflow.json'} and {out / 'gradflow.png'}")
    return 0


# ---------------------------------------------------------------------------------- landscape


def _check_grid(args: argparse.Namespace) -> None:
    """Refuse a grid whose results cannot fit in this machine's memory (estimated)."""
    dims = 1 if args.interpolate else args.dims
    points = args.steps**dims
    need = points * BYTES_PER_POINT
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform
        have = 8 * 2**30
    if need > have // 4:
        fit = int((have // 4 // BYTES_PER_POINT) ** (1 / dims))
        raise ValueError(
            f"--steps {args.steps} with {dims} direction(s) is {points:.3g} grid points "
            f"(~{need / 2**30:.3g} GiB of results), more than a quarter of this machine's "
            f"{have / 2**30:.3g} GiB of memory; use --steps {fit} or fewer"
        )
    if args.span is not None and not args.span[0] < args.span[1]:
        raise ValueError(f"--span LOW HIGH needs LOW < HIGH, got {args.span[0]} {args.span[1]}")


def cmd_landscape(args: argparse.Namespace) -> int:
    if args.interpolate and args.weights:
        raise ValueError("give either --weights (random directions) or --interpolate A B")
    if args.interpolate and args.train_epochs:
        raise ValueError("--train-epochs makes no sense with --interpolate A B")
    _check_grid(args)
    out_folder(args)
    device = _device(args.device)
    info = setup_distributed(device)  # joins the torchrun group, if any
    if info.enabled and args.out is None:
        raise ValueError("under torchrun give --out: every process must write the same folder")
    main = info.rank == 0
    spec, train, _ = _dataset(args)
    model = _build(args, args.model, not args.no_skip, spec, device)
    x, y = _subset(train, args.examples, args.seed)
    _check(model, x, y)
    ends = [read_state_dict(p) for p in args.interpolate] if args.interpolate else []
    names = LANDSCAPE_FILES + tuple(
        f"landscape.ckpt.npz.rank{r}" for r in range(max(1, info.world_size))
    )
    run = _open(args, "landscape", names) if main else None
    out = run.path if run is not None else Path(args.out)
    try:
        if args.train_epochs > 0 and not args.weights:
            if main:
                say(args, f"training {args.model} for {args.train_epochs} epochs first")
            cfg = TrainConfig(epochs=args.train_epochs, seed=args.seed, quiet=args.quiet)
            Trainer(model, train, None, cfg, device=str(device)).fit()
            x, y = _subset(train, args.examples, args.seed)
        if info.enabled:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        land = _landscape(args, model, ends, (x, y), out / "landscape.ckpt.npz", main)
        seconds = time.perf_counter() - t0
        if run is not None:
            land.save(out / "landscape.npz")
            _write_json(run, "landscape.json", land.to_dict())
            land.plot(out / "landscape.png")
            run.record(*names)
            s = land.summary()
            extra = f", non-convex share {s['nonconvex']:.0%}" if "nonconvex" in s else ""
            echo(
                f"{land.name}: {land.loss.size} points on {land.meta['examples']} examples in "
                f"{seconds:.1f} s ({info.world_size} process(es)); loss at "
                f"the weights {s['origin_loss']:.4g}, range {s['min_loss']:.3g}–"
                f"{s['max_loss']:.3g}{extra}"
            )
            echo(f"wrote {out / 'landscape.npz'}, landscape.json and landscape.png")
    finally:
        if run is not None:
            run.close()
    if info.enabled:
        torch.distributed.destroy_process_group()
    return 0


def _landscape(
    args: argparse.Namespace,
    model: nn.Module,
    ends: list[dict[str, torch.Tensor]],
    batch: tuple[torch.Tensor, torch.Tensor],
    ckpt: Path,
    main: bool,
) -> Any:
    label = _label(args.model, not args.no_skip)
    show = main and not args.quiet and sys.stderr.isatty()
    common: dict[str, Any] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "checkpoint": ckpt,
        "progress": show,
        "name": label,
    }
    if ends:
        land = interpolate(
            model,
            ends[0],
            ends[1],
            batch,
            nn.CrossEntropyLoss(),
            span=tuple(args.span) if args.span else (-0.5, 1.5),
            **common,
        )
    else:
        land = loss_landscape(
            model,
            batch,
            nn.CrossEntropyLoss(),
            dims=args.dims,
            span=tuple(args.span) if args.span else (-1.0, 1.0),
            seed=args.seed,
            include_bn=args.include_bn,
            **common,
        )
    return land


# ------------------------------------------------------------------------------------- advise


def cmd_advise(args: argparse.Namespace) -> int:
    out_folder(args)
    spec, train, _ = _dataset(args)
    device = _device(args.device)
    model = _build(args, args.model, not args.no_skip, spec, device)
    x, y = _subset(train, args.examples, args.seed)
    _check(model, x, y)
    batch = (x.to(device), y.to(device))
    files = ("advice.json", "gradflow.png")
    with _open(args, "advise", files) as run:
        tips, flow = advise_with_flow(
            model,
            batch,
            nn.CrossEntropyLoss(),
            block=args.block,
            min_decades=args.min_decades,
            max_suggestions=args.max,
        )
        flow.name = _label(args.model, not args.no_skip)
        out = run.path
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
                echo(
                    f"  {t.src} -> {t.dst}  merge={t.merge} shortcut={t.shortcut}  score={t.score}"
                )
            echo(f"  why: {tips[0].reason}")
        if args.validate_epochs > 0 and tips:
            doc["validation"] = _validate(args, model, tips, train, x[:2].to(device), device)
        _write_json(run, "advice.json", doc)
        plot_gradient_flow([flow], out / "gradflow.png")
        run.record("gradflow.png")
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
