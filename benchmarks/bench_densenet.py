"""DenseNet-121 with ``memory_efficient=True``: skipkit vs torchvision, peak memory and step time.

Run by hand (not a test)::

    python benchmarks/bench_densenet.py                       # CPU, batch 8, 224x224
    python benchmarks/bench_densenet.py --device cuda --batch 64 --repeats 20
    python benchmarks/bench_densenet.py --baselines           # also memory_efficient=False

Both models get the same weights and the same batch; a train step is forward, cross-entropy,
backward and an SGD (momentum) step. The two are interleaved (A B, then B A, ...) after a
warm-up step each, and medians are reported.

Peak memory is the most memory live at once during a train step, above what was live just
before it (weights, optimizer state). So it counts activations saved for backward, gradients
and temporaries. How it is measured:

- ``cuda``: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step (the caching allocator's own count, exact).
- ``cpu``, ``profiler``: every allocation and free of PyTorch's CPU allocator during one step,
  recorded by ``torch.profiler`` (``profile_memory=True``) and replayed in time order; the
  peak of the running sum. Exact for tensors, deterministic; misses memory that bypasses the
  allocator (oneDNN scratch space, Python objects).
- ``cpu``, ``rss``: the process's resident set in a fresh subprocess per measurement: the peak
  (VmHWM, reset through ``/proc/self/clear_refs`` just before the step) minus the resident
  size before it, with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed tensors to the
  system at once. Sees everything the OS sees; a little noisy.

Step time on CPU is reported as wall time and as the process's CPU time (``process_time``),
which other jobs on a shared machine disturb much less; compare the CPU-time medians there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from skipkit.models.densenet import densenet121

TARGET_MEMORY = 0.8  # skipkit peak / torchvision peak
TARGET_TIME = 1.0  # skipkit step time / torchvision step time


def build(impl: str, device: torch.device) -> nn.Module:
    """``skipkit`` / ``torchvision`` densenet121, memory-efficient unless ``-full``; the same
    weights for all (torchvision loads skipkit's state_dict, whose keys are identical)."""
    torch.manual_seed(0)
    efficient = not impl.endswith("-full")
    reference = densenet121(memory_efficient=efficient)
    if impl.startswith("skipkit"):
        model: nn.Module = reference
    else:
        model = torchvision.models.densenet121(weights=None, memory_efficient=efficient)
        model.load_state_dict(reference.state_dict())
    return model.to(device).train()


class Runner:
    """One model with its optimizer and a fixed batch."""

    def __init__(self, impl: str, device: torch.device, batch: int, size: int) -> None:
        self.impl, self.device = impl, device
        self.model = build(impl, device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, 3, size, size, generator=g).to(device)
        self.y = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_step(self) -> tuple[float, float, float | None]:
        """(wall seconds, process CPU seconds, CUDA peak bytes or None) of one step."""
        peak = None
        gc.collect()
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        self.step()
        self.sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if self.device.type == "cuda":
            peak = float(torch.cuda.max_memory_allocated(self.device) - base)
        return wall, cpu, peak

    def profiled_peak(self) -> float:
        """Peak bytes of PyTorch's CPU allocator during one step, above the state before it."""
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        # The allocator's alloc (+bytes) / free (-bytes) events, replayed in time order.
        events = sorted(
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]"
        )
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        return float(peak)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(impl: str, batch: int, size: int, threads: int | None) -> None:
    """Subprocess body: one warm-up step on small images (creates the optimizer state and
    kernels' caches), then the resident-set peak of one full-size step."""
    if threads:
        torch.set_num_threads(threads)
    runner = Runner(impl, torch.device("cpu"), batch, size)
    full = runner.x
    runner.x = full[:, :, :64, :64].contiguous()
    runner.step()
    runner.x = full
    gc.collect()
    before = _status_kib("VmRSS")
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        reset = False
    runner.step()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_bytes": (peak - before) * 1024, "hwm_reset": reset}))


def rss_peak(impl: str, args: argparse.Namespace) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--rss-child", impl, "--batch", str(args.batch)]
    cmd += ["--size", str(args.size)] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["hwm_reset"]:
        print("  (could not reset VmHWM; rss peaks include the warm-up)")
    return float(result["peak_bytes"])


def interleaved(impls: list[str], repeats: int, fn: Callable[[str], Any]) -> dict[str, list[Any]]:
    """``fn(impl)`` ``repeats`` times per impl, alternating the order every round."""
    results: dict[str, list[Any]] = {i: [] for i in impls}
    for r in range(repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            results[impl].append(fn(impl))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--memory", choices=["profiler", "rss", "both", "none"], default="both")
    p.add_argument("--memory-repeats", type=int, default=3, help="rss subprocesses per model")
    p.add_argument("--baselines", action="store_true", help="add memory_efficient=False")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.batch, args.size, args.threads)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = ["skipkit", "torchvision"]
    if args.baselines:
        impls += ["skipkit-full", "torchvision-full"]
    print(
        f"densenet121 train step, batch {args.batch}, {args.size}x{args.size}, {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")

    runners = {i: Runner(i, device, args.batch, args.size) for i in impls}
    for r in runners.values():  # warm-up: kernels, caches, optimizer state
        r.step()
        r.sync()
    times = interleaved(impls, args.repeats, lambda i: runners[i].timed_step())

    rows: dict[str, dict[str, Any]] = {}
    for impl in impls:
        walls, cpus, peaks = zip(*times[impl], strict=True)
        rows[impl] = {"wall_s": list(walls), "cpu_s": list(cpus)}
        if device.type == "cuda":
            rows[impl]["peak_cuda_bytes"] = list(peaks)
    if device.type == "cpu" and args.memory in ("profiler", "both"):
        for impl in impls:  # deterministic: one profiled step each
            rows[impl]["peak_profiler_bytes"] = [runners[impl].profiled_peak()]
    runners.clear()  # free the models before the subprocesses run
    gc.collect()
    if device.type == "cpu" and args.memory in ("rss", "both"):
        rss = interleaved(impls, args.memory_repeats, lambda i: rss_peak(i, args))
        for impl in impls:
            rows[impl]["peak_rss_bytes"] = rss[impl]

    metrics: list[str] = [m for m in ("wall_s", "cpu_s") if m in rows["skipkit"]]
    metrics += [m for m in rows["skipkit"] if m.startswith("peak_")]
    header = f"{'model':<18}" + "".join(f"{m:>24}" for m in metrics)
    print(header)
    for impl, row in rows.items():
        cells = []
        for m in metrics:
            med = statistics.median(row[m])
            cells.append(f"{med:>24.3f}" if m.endswith("_s") else f"{med / 2**20:>21.1f} MB")
        print(f"{impl:<18}" + "".join(cells))
    # Targets: CPU time on a CPU (wall time is at the mercy of other jobs), wall time on a GPU.
    judged = {"cpu_s", "peak_profiler_bytes", "peak_rss_bytes"}
    if device.type == "cuda":
        judged = {"wall_s", "peak_cuda_bytes"}
    print("ratios skipkit / torchvision (medians):")
    verdicts = []
    for m in metrics:
        ratio = statistics.median(rows["skipkit"][m]) / statistics.median(rows["torchvision"][m])
        target = TARGET_MEMORY if m.startswith("peak_") else TARGET_TIME
        ok = ratio <= target
        note = ("ok" if ok else "MISSED") if m in judged else "(not judged)"
        verdicts += [ok] if m in judged else []
        print(f"  {m:<22} {ratio:6.3f}   target <= {target}   {note}")
        if m.endswith("_s"):  # the same round's two steps ran back to back: less drift
            pairs = zip(rows["skipkit"][m], rows["torchvision"][m], strict=True)
            paired = statistics.median(a / b for a, b in pairs)
            print(f"  {m + ' (paired)':<22} {paired:6.3f}   median of per-round ratios")
    print("all targets met" if all(verdicts) else "some targets missed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
