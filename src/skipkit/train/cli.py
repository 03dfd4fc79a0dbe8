"""Handler of ``skipkit train`` (its parser is :mod:`skipkit._cli_train`).

The model is built and checked against the data (labels, input shape) before the run folder
is claimed, so a bad option changes nothing on disk; ``--resume`` refuses a checkpoint of
another config, model or data (see :mod:`skipkit.train.identity`).
"""

from __future__ import annotations

import argparse
from typing import Any

from skipkit import models
from skipkit._cli_runs import claim_out, out_folder, recipe_options
from skipkit._cliargs import echo
from skipkit.data import DATASETS, get_dataset
from skipkit.train import TrainConfig, Trainer, seed_everything, teardown
from skipkit.train.identity import check_classifier

__all__ = ["cmd_train"]


def cmd_train(args: argparse.Namespace) -> int:
    key = args.dataset.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    recipe = recipe_options(args)
    if (args.gamma is not None or args.milestones) and args.schedule != "step":
        raise ValueError("--gamma and --milestones apply to --schedule step only")
    if args.milestones and not all(1 <= m <= args.epochs for m in args.milestones):
        raise ValueError(f"--milestones must lie in 1..{args.epochs} (--epochs)")
    if args.warmup_epochs > args.epochs:
        raise ValueError(f"--warmup-epochs {args.warmup_epochs:g} exceeds --epochs {args.epochs}")
    out_folder(args)
    spec = DATASETS[key]
    cfg = TrainConfig(
        **recipe,
        optimizer=args.optimizer,
        nesterov=args.nesterov,
        milestones=tuple(args.milestones) if args.milestones else None,
        gamma=0.1 if args.gamma is None else args.gamma,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        grad_clip=args.grad_clip,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        num_workers=args.num_workers,
        resume=False,
        quiet=args.quiet,
        on_nan=args.on_nan,
    )
    # build the model before loading data, so a bad model option fails at once
    seed_everything(cfg.seed)
    model_kw: dict[str, Any] = {
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "dims": spec.dims,
        "skip": not args.no_skip,
    }
    model_kw.update(dict(args.model_arg))
    if not models.is_registered(args.model):
        models.create(args.model)  # raises the ValueError with close matches
    try:
        model = models.create(args.model, **model_kw)
    except TypeError as exc:
        raise ValueError(f"cannot build {args.model} for {args.dataset}: {exc}") from exc
    data_kw: dict[str, Any] = {}
    if key in ("cifar10", "cifar100"):
        data_kw = {"augment": args.augment, "download": args.download}
    train, test = get_dataset(key, root=args.data_dir, **data_kw)
    check_classifier(model, train)  # before a default --out is created
    identity = {
        "model_name": args.model,
        "model_options": model_kw,
        "dataset": key,
        "augment": bool(args.augment),
    }
    out = claim_out(args, "train")
    trainer = Trainer(
        model,
        train,
        test,
        cfg,
        identity=identity,
        out_dir=str(out),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    hist = trainer.fit()
    teardown()
    if trainer.dist.is_main:
        last = hist[-1]
        echo(
            f"{args.model}{' (plain)' if args.no_skip else ''}: train error "
            f"{100 * last['train_error']:.2f}%, test error {100 * last['test_error']:.2f}% "
            f"after {int(last['epoch'])} epochs; weights: {out / 'model.safetensors'}"
        )
    return 0
