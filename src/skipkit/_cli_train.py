"""``skipkit train``: one registered model on one dataset, in a run folder.

Its handler is :func:`skipkit.train.cli.cmd_train`, loaded when the command runs.
"""

from __future__ import annotations

from typing import Any

from skipkit._cliargs import (
    add_data,
    add_model_arg,
    add_out,
    add_parser,
    add_recipe,
    int_list,
    integer,
    real,
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
