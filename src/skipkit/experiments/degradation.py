"""The degradation experiment (He et al. 2015, figures 1 and 6): plain vs residual twins.

For each depth ``6n + 2`` two CIFAR-style networks are trained with the same recipe and the
same initial weights: the plain net (``skip=False``) and its residual twin. Without skips the
deeper net ends with a *higher training error* than the shallow one (not overfitting: it fits
the training set worse); with skips depth stops hurting.

The runs are independent, so they are spread over worker processes (one per CPU core by
default, each with its own share of the threads) and written to ``out_dir/runs/<name>/``.
``out_dir`` is a run folder (:func:`skipkit._runs.open_run`) and each ``runs/<name>/`` is a
nested training run folder, so a fresh experiment never mixes with or deletes an earlier one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import skipkit.models as models
from skipkit._io import atomic_write_text, read_json
from skipkit._runs import RunFolder, open_run
from skipkit.data import DATASETS, get_dataset
from skipkit.models.resnet_cifar import cifar_resnet
from skipkit.train import TrainConfig, Trainer, seed_everything

__all__ = [
    "DEGRADATION_FILES",
    "DegradationResult",
    "ModelRun",
    "build_model",
    "check_depth",
    "format_table",
    "run_degradation",
]

log = logging.getLogger(__name__)

DEGRADATION_FILES = ("results.json", "report.html", "degradation.png", "final_errors.png")
"""Fixed names the experiment and its report write in ``out_dir``."""


@dataclass
class ModelRun:
    """One trained network: final errors (fractions in [0, 1]) and per-epoch curves.

    ``train_error``/``train_loss`` are those of the final model on the whole training set
    (evaluation mode); ``train_curve`` is the running error of every epoch as in He et al.'s
    figures, so its last point can sit slightly above ``train_error``.
    """

    name: str
    depth: int
    skip: bool
    params: int
    train_error: float
    test_error: float
    train_loss: float
    train_curve: list[float] = field(default_factory=list)
    test_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        return "residual" if self.skip else "plain"


@dataclass
class DegradationResult:
    """All runs of one experiment plus the settings that produced them."""

    dataset: str
    depths: list[int]
    config: dict[str, Any]
    runs: list[ModelRun]
    seconds: float = 0.0

    def get(self, depth: int, skip: bool) -> ModelRun:
        """The run of the given depth and kind; ``KeyError`` if it was not trained."""
        for r in self.runs:
            if r.depth == depth and r.skip == skip:
                return r
        raise KeyError(f"no {'residual' if skip else 'plain'} run of depth {depth}")

    def verdict(self, *, margin: float = 0.02) -> dict[str, bool]:
        """Did the experiment show the effect? Compares the shallowest and deepest depth.

        ``plain_degrades``: the deep plain net's final training error exceeds the shallow one's
        by more than ``margin``. ``residual_holds``: the deep residual net's is no higher than
        the shallow one's plus ``margin`` (the same noise allowance).
        """
        lo, hi = min(self.depths), max(self.depths)
        p_lo, p_hi = self.get(lo, False), self.get(hi, False)
        r_lo, r_hi = self.get(lo, True), self.get(hi, True)
        return {
            "plain_degrades": p_hi.train_error > p_lo.train_error + margin,
            "residual_holds": r_hi.train_error <= r_lo.train_error + margin,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict() if len(self.depths) > 1 else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DegradationResult:
        runs = [ModelRun(**r) for r in d["runs"]]
        return cls(d["dataset"], list(d["depths"]), d["config"], runs, d.get("seconds", 0.0))

    def to_json(self) -> str:
        """The JSON text of :meth:`to_dict` (non-finite numbers as strings, never empty)."""
        return json.dumps(_finite_json(self.to_dict()), indent=1, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``results.json`` (atomically)."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DegradationResult:
        return cls.from_dict(_from_finite_json(read_json(path, what="results file")))


def check_depth(depth: int) -> int:
    """Return ``depth`` if it is ``6n + 2`` with ``n >= 1``, else raise ``ValueError``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"depth {depth!r} is not 6n+2; CIFAR-style ResNets have 8, 14, 20, 26, 32, 44, 56, "
            "110, ... layers"
        )
    return depth


def build_model(depth: int, *, skip: bool, dataset: str = "mnist1d", **kw: Any) -> nn.Module:
    """The CIFAR ResNet of ``depth`` (or its plain twin) shaped for ``dataset``.

    ``(N, C, *S) -> (N, num_classes)`` with ``C``, ``S`` and ``num_classes`` from
    :data:`skipkit.data.DATASETS` (MNIST-1D: 1-D convolutions on ``(N, 1, 40)``).
    """
    check_depth(depth)
    spec = DATASETS[dataset]
    opts: dict[str, Any] = {
        "dims": spec.dims,
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
    }
    opts.update(kw)
    name = f"resnet{depth}"
    if models.is_registered(name):
        return models.create(name, skip=skip, **opts)
    return cifar_resnet(depth, skip=skip, **opts)


@dataclass(frozen=True)
class _Job:
    depth: int
    skip: bool
    dataset: str
    root: str | None
    config: dict[str, Any]
    threads: int

    @property
    def name(self) -> str:
        return _name(self.depth, self.skip)


def _train_one(job: _Job) -> ModelRun:
    """Train one network; runs in a worker process or in the caller's."""
    threads = torch.get_num_threads()
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    try:
        return _fit(job)
    finally:
        torch.set_num_threads(threads)


def _fit(job: _Job) -> ModelRun:
    t0 = time.perf_counter()
    train, test = get_dataset(job.dataset, root=job.root)
    cfg = TrainConfig.from_dict(job.config)
    # the same seed gives the plain net and its twin the same initial weights
    seed_everything(cfg.seed)
    model = build_model(job.depth, skip=job.skip, dataset=job.dataset)
    trainer = Trainer(model, train, test, cfg)
    hist = trainer.fit()
    final = trainer.evaluate(train)
    return ModelRun(
        name=job.name,
        depth=job.depth,
        skip=job.skip,
        params=sum(p.numel() for p in model.parameters()),
        train_error=final["error"],
        test_error=hist[-1]["test_error"],
        train_loss=final["loss"],
        train_curve=[r["train_error"] for r in hist],
        test_curve=[r["test_error"] for r in hist],
        seconds=time.perf_counter() - t0,
    )


def run_degradation(
    depths: Sequence[int] = (20, 56),
    *,
    dataset: str = "mnist1d",
    root: str | os.PathLike[str] | None = None,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    schedule: str = "onecycle",
    seed: int = 0,
    out_dir: str | os.PathLike[str] | RunFolder | None = None,
    workers: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **train_kw: Any,
) -> DegradationResult:
    """Train plain and residual twins at every depth and collect their errors.

    Args:
        depths: network depths, each ``6n + 2``.
        dataset: a name from :data:`skipkit.data.DATASETS` (``root`` is its data/cache folder).
        epochs, batch_size, lr, momentum, weight_decay, schedule, seed: the recipe (defaults:
            He et al.'s CIFAR settings with a one-cycle schedule); more
            :class:`~skipkit.train.TrainConfig` fields via ``train_kw``.
        out_dir: each run writes metrics, checkpoints and weights to ``out_dir/runs/<name>``
            and the result goes to ``out_dir/results.json``; ``None`` uses a temporary folder.
            A path is claimed with :func:`skipkit._runs.open_run` (an earlier experiment there
            is refused unless ``resume`` or ``overwrite``); a :class:`~skipkit._runs.RunFolder`
            already claimed by the caller is used as it is.
        workers: parallel worker processes; ``None`` means one per CPU core (at most one per
            run) on CPU and 1 on CUDA. ``1`` trains in this process.
        threads: torch threads per run; ``None`` shares the cores among the workers (and
            keeps torch's setting when training in this process).
        resume: continue interrupted runs from their checkpoints.
        overwrite: remove the files an earlier experiment in ``out_dir`` wrote (others stay).
        progress: show one progress bar over all epochs of all runs.

    Returns:
        a :class:`DegradationResult` with the runs ordered plain then residual, by depth.
    """
    depths = sorted({check_depth(d) for d in depths})
    if dataset not in DATASETS:
        get_dataset(dataset)  # raises the ValueError listing the choices
    get_dataset(dataset, root=root)  # fail (or build the cache) once, before any worker starts
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    jobs_spec = [(d, s) for s in (False, True) for d in depths]
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if on_cuda else max(1, min(len(jobs_spec), cores))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is None:
        threads = 0 if workers == 1 else max(1, cores // workers)
    elif threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")

    base = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        device=device,
        quiet=True,
        **train_kw,
    ).to_dict()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skipkit-degradation-") as tmp:
        if isinstance(out_dir, RunFolder):
            run, owned = out_dir, False
        else:
            where = tmp if out_dir is None else out_dir
            run = open_run(
                where,
                "degradation",
                resume=resume,
                overwrite=overwrite,
                writes=DEGRADATION_FILES,
            )
            owned = True
        try:
            out = run.path
            # an overwritten experiment's nested runs were emptied; what is left there is foreign
            flags = {"resume": resume, "overwrite": overwrite}
            jobs = [
                _Job(d, s, dataset, None if root is None else str(root), cfg, threads)
                for d, s in jobs_spec
                for cfg in [{**base, "out_dir": str(out / "runs" / _name(d, s)), **flags}]
            ]
            # the report's names too, so a report written later belongs to this run
            run.expect(*(f"runs/{j.name}/" for j in jobs), *DEGRADATION_FILES)
            runs = _run_jobs(jobs, workers, run, epochs, progress)
            result = DegradationResult(
                dataset=dataset,
                depths=list(depths),
                config={
                    k: v
                    for k, v in base.items()
                    if k not in ("out_dir", "resume", "overwrite", "quiet")
                },
                runs=runs,
                seconds=time.perf_counter() - t0,
            )
            if out_dir is not None:
                run.write_text("results.json", result.to_json())
        finally:
            if owned:
                run.close()
    return result


def _finite_json(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_json(v) for v in obj]
    return obj


def _from_finite_json(obj: Any) -> Any:
    if obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _from_finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_finite_json(v) for v in obj]
    return obj


def _name(depth: int, skip: bool) -> str:
    return f"{'residual' if skip else 'plain'}-{depth}"


def _run_jobs(
    jobs: list[_Job], workers: int, run: RunFolder, epochs: int, progress: bool
) -> list[ModelRun]:
    """Run the jobs, deepest first, keeping the result order of ``jobs``."""
    out = run.path
    bar = _Progress(out, [j.name for j in jobs], epochs) if progress else None
    done: dict[str, ModelRun] = {}
    try:
        if workers == 1:
            for job in jobs:
                done[job.name] = _train_one(job)
                _log_done(done[job.name], len(done), len(jobs), bar)
        else:
            queue = sorted(jobs, key=lambda j: -j.depth)
            running: list[_Worker] = []
            while queue or running:
                while queue and len(running) < workers:
                    running.append(_Worker(queue.pop(0), run))
                time.sleep(0.5)
                for w in [w for w in running if w.proc.poll() is not None]:
                    running.remove(w)
                    finished = w.result()
                    done[finished.name] = finished
                    _log_done(finished, len(done), len(jobs), bar)
                if bar is not None:
                    bar.poll()
    finally:
        if workers > 1:
            for w in running:
                w.proc.kill()
                w.proc.wait()
        if bar is not None:
            bar.close()
    return [done[j.name] for j in jobs]


class _Worker:
    """One job in a fresh ``python`` process, so the caller's ``__main__`` is never re-run
    (as multiprocessing's spawn would) and each process has its own thread pool."""

    def __init__(self, job: _Job, run: RunFolder) -> None:
        self.job = job
        # beside the run's folder, not in it: that folder holds the trainer's files only
        stem = f"runs/{job.name}"
        names = (f"{stem}.job.json", f"{stem}.result.json", f"{stem}.log")
        run.expect(*names)
        run.remove(names[1])
        run.write_text(names[0], json.dumps(asdict(job)))
        self.job_file, self.result_file, self.log_file = (run.path / n for n in names)
        self._run, self._names = run, names
        env = dict(os.environ)
        if job.threads > 0:  # sized before torch starts its OpenMP pool
            env["OMP_NUM_THREADS"] = str(job.threads)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        code = "from skipkit.experiments.degradation import _worker_main; _worker_main()"
        with open(self.log_file, "wb") as log_f:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(self.job_file), str(self.result_file)],
                env=env,
                stdout=log_f,
                stderr=subprocess.STDOUT,
            )

    def result(self) -> ModelRun:
        self._run.record(*self._names[1:])
        if self.proc.returncode != 0 or not self.result_file.is_file():
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
            last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise RuntimeError(
                f"training {self.job.name} failed (exit status {self.proc.returncode}): "
                f"{last.strip()[:300]} (full log: {self.log_file})"
            )
        return ModelRun(**_from_finite_json(read_json(self.result_file, what="result file")))


def _worker_main() -> None:
    """Entry point of a :class:`_Worker` process: ``job.json result.json``."""
    job_file, result_file = sys.argv[1:3]
    job = _Job(**json.loads(Path(job_file).read_text(encoding="utf-8")))
    run = _train_one(job)
    text = json.dumps(_finite_json(asdict(run)), allow_nan=False)
    atomic_write_text(result_file, text)


def _log_done(run: ModelRun, n: int, total: int, bar: _Progress | None) -> None:
    msg = (
        f"[{n}/{total}] {run.name:<12} train error {100 * run.train_error:6.2f}%  "
        f"test error {100 * run.test_error:6.2f}%  ({run.seconds:.0f}s)"
    )
    if bar is not None:
        bar.write(msg)
    else:
        log.info(msg)


class _Progress:
    """One bar over all epochs of all runs, read from the runs' ``metrics.json`` files."""

    def __init__(self, out: Path, names: list[str], epochs: int) -> None:
        self.files = [out / "runs" / n / "metrics.json" for n in names]
        self.bar = tqdm(total=len(names) * epochs, unit="epoch", desc="training", leave=False)

    def poll(self) -> None:
        count = 0
        for f in self.files:
            try:
                count += len(json.loads(f.read_text(encoding="utf-8"))["epochs"])
            except (OSError, ValueError, KeyError):
                continue
        self.bar.update(max(0, count - self.bar.n))

    def write(self, msg: str) -> None:
        self.poll()
        self.bar.write(msg)

    def close(self) -> None:
        self.poll()
        self.bar.close()


def format_table(result: DegradationResult) -> str:
    """The results as an aligned plain-text table (errors in percent)."""
    lines = [f"{'model':<14}{'params':>9}{'train err':>11}{'test err':>10}{'time':>8}"]
    for r in result.runs:
        lines.append(
            f"{r.name:<14}{r.params:>9,}{100 * r.train_error:>10.2f}%"
            f"{100 * r.test_error:>9.2f}%{r.seconds:>7.0f}s"
        )
    return "\n".join(lines)
