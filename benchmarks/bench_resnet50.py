"""Train-step time of skipkit's ``resnet50`` against torchvision's, side by side.

One step = forward, cross-entropy, backward, SGD step (momentum 0.9, weight decay 1e-4).
Five configurations run interleaved in the same process (torchvision / skipkit, each in the
default NCHW layout and in channels_last, plus a second torchvision in channels_last as a
control), so machine noise hits all of them alike; each is repeated. Both models start from the
same weights. A ratio is the median over rounds of the ratio of the two steps of one round
(paired, so a slow moment hits both sides); the control's ratio to the first torchvision is the
noise floor of the run: a gap no larger than it is not a measured difference.
tests/models/test_resnet.py checks that skipkit dispatches exactly torchvision's ATen ops.

Targets (docs/benchmarks.md): skipkit / torchvision in the same layout <= 1.02;
skipkit channels_last / torchvision default <= 0.85.

Usage::

    python benchmarks/bench_resnet50.py                       # CPU, batch 16, 224x224
    python benchmarks/bench_resnet50.py --threads 1 --clock process   # a busy shared machine
    python benchmarks/bench_resnet50.py --device cuda --batch 64 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from skipkit.models import create


@dataclass
class Config:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    channels_last: bool
    times: list[float] = field(default_factory=list)
    peak_mib: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make(
    name: str, model: nn.Module, channels_last: bool, device: torch.device, lr: float
) -> Config:
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    layout = "channels_last" if channels_last else "default"
    return Config(f"{name} {layout}", model, opt, channels_last)


def _step(cfg: Config, x: torch.Tensor, y: torch.Tensor, device: torch.device, clock: str) -> float:
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    now = time.process_time if clock == "process" else time.perf_counter
    _sync(device)
    start = now()
    cfg.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(cfg.model(x), y)
    loss.backward()
    cfg.optimizer.step()
    _sync(device)  # CUDA runs asynchronously: wait for the step before reading the clock
    return now() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall: elapsed time (default); process: this process's CPU time, steadier on a\n"
        "shared machine (use with --threads 1; CPU only)",
    )
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.clock == "process" and device.type != "cpu":
        raise SystemExit("--clock process measures CPU time; use the wall clock on a GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    state = reference.state_dict()

    def ours() -> nn.Module:
        model = create("resnet50")
        model.load_state_dict(state)
        return model

    def theirs() -> nn.Module:
        model = torchvision.models.resnet50(weights=None)
        model.load_state_dict(state)
        return model

    configs = [
        _make("torchvision", theirs(), False, device, 0.01),
        _make("skipkit", ours(), False, device, 0.01),
        _make("torchvision", theirs(), True, device, 0.01),
        _make("skipkit", ours(), True, device, 0.01),
        _make("control: torchvision", theirs(), True, device, 0.01),
    ]
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    print(
        f"batch {args.batch}, {args.size}x{args.size}, {args.repeats} timed steps each, "
        f"{args.clock} clock"
    )
    for cfg in configs:
        for _ in range(args.warmup):
            _step(cfg, x, y, device, args.clock)
    for r in range(args.repeats):
        # Rotate the order every round so no configuration always follows the same one.
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for cfg in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            cfg.times.append(_step(cfg, x, y, device, args.clock))
            if device.type == "cuda":
                cfg.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20

    med = {cfg.name: statistics.median(cfg.times) for cfg in configs}
    print(f"\n{'configuration':<36}{'median s/step':>14}{'min':>9}{'max':>9}{'peak MiB':>10}")
    for cfg in configs:
        peak = f"{cfg.peak_mib:10.0f}" if cfg.peak_mib is not None else f"{'-':>10}"
        print(
            f"{cfg.name:<36}{med[cfg.name]:14.3f}{min(cfg.times):9.3f}{max(cfg.times):9.3f}{peak}"
        )
    times = {cfg.name: cfg.times for cfg in configs}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    ratios = {
        "skipkit/torchvision, default layout (target <= 1.02)": paired(
            "skipkit default", "torchvision default"
        ),
        "skipkit/torchvision, channels_last (target <= 1.02)": paired(
            "skipkit channels_last", "torchvision channels_last"
        ),
        "skipkit channels_last / torchvision default (target <= 0.85)": paired(
            "skipkit channels_last", "torchvision default"
        ),
        "control: torchvision/torchvision, channels_last (noise floor)": paired(
            "control: torchvision channels_last", "torchvision channels_last"
        ),
    }
    print()
    for label, value in ratios.items():
        print(f"{label:<64}{value:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "torch": torch.__version__,
                    "times": times,
                    "median": med,
                    "ratios": ratios,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
