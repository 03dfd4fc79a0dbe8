"""``skipkit train``: one registered model on one dataset, in a run folder.

The model is built and checked against the data (labels, input shape) before the run folder
is claimed, so a bad option changes nothing on disk; ``--resume`` refuses a checkpoint of
another config, model or data (see :mod:`skipkit.train.identity`).
"""

from __future__ import annotations

import argparse
from typing import Any

from skipkit._cliargs import add_model_arg, echo, int_list, integer, real
from skipkit.cli import (
    add_data,
    add_out,
    add_parser,
    add_recipe,
    claim_out,
    out_folder,
    recipe_options,
)

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Register ``train`` on ``skipkit``'s subparsers."""
    p = add_parser(
        sub,
        "train",
        examples=(
            "skipkit train --model resnet20 --epochs 10 --out runs/r20",
            "skipkit train --model resnet20 --epochs 20 --out runs/r20 --resume  # 10 more",
            "skipkit train --model resnet56 --no-skip --dataset cifar10 --data-dir ~/data",
        ),
        help="train one registered model (checkpoints every epoch, --resume)",
        description="Train a model from the registry (see 'skipkit models') on a dataset. "
        "Writes metrics.csv/json, checkpoints and model.safetensors to --out. Under "
        "'torchrun --nproc-per-node N skipkit train ...' it trains with DDP.",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="registry name, e.g. resnet20 or resnet56")
    g.add_argument("--no-skip", action="store_true", help="build the plain twin (skip=False)")
    add_model_arg(g)
    d = add_data(p)
    d.add_argument("--augment", action="store_true", help="CIFAR: pad-4 crop + flip")
    d.add_argument("--download", action="store_true", help="CIFAR: fetch with torchvision")
    add_recipe(p, epochs=30)
    g = p.add_argument_group("more training options")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="optimizer")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    g.add_argument(
        "--milestones",
        type=int_list,
        default=None,
        help="epochs at which --schedule step decays (default: 1/2 and 3/4 of --epochs)",
    )
    g.add_argument(
        "--gamma",
        type=real(0, 1, low_open=True),
        default=None,
        help="decay factor of --schedule step (default: 0.1)",
    )
    g.add_argument(
        "--warmup-epochs", type=real(0, 100_000), default=0.0, help="linear warm-up (epochs)"
    )
    g.add_argument(
        "--label-smoothing", type=real(0, 1, high_open=True), default=0.0, help="of the loss"
    )
    g.add_argument(
        "--grad-clip",
        type=real(0, 1e6, low_open=True),
        default=None,
        help="max global gradient norm (default: none, no clipping)",
    )
    g.add_argument(
        "--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="CUDA precision"
    )
    g.add_argument("--channels-last", action="store_true", help="channels-last 4-D tensors")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--num-workers", type=integer(0, 64), default=0, help="DataLoader workers")
    g.add_argument(
        "--on-nan",
        choices=("stop", "skip"),
        default="stop",
        help="a non-finite loss stops training (exit status 3, last checkpoint kept) or skips "
        "that batch",
    )
    add_out(p, "train")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import skipkit.models as models
    from skipkit.data import DATASETS, get_dataset
    from skipkit.train import TrainConfig, Trainer, seed_everything, teardown
    from skipkit.train.identity import check_classifier

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
