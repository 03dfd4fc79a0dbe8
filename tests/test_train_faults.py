"""Fault injection: a training run SIGKILLed before every file operation of its run folder
(manifest, metrics, checkpoints, final weights) and after random amounts of work resumes to
bit-identical weights and history, and leaves no temporary file after the next start.

One driver subprocess imports torch once and forks a child per run, so each kill point costs
two short trainings instead of two interpreter starts. The parent never runs a torch kernel
before forking (OMP_NUM_THREADS=1), which keeps fork safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = r"""
import json, os, random, signal, sys, time
import torch
from torch import nn
from skipkit.data import synthetic
from skipkit.train import Trainer, TrainConfig, seed_everything

OPS = ("replace", "fsync", "unlink", "mkdir", "rmdir", "ftruncate")
root = sys.argv[1]
n_random = int(sys.argv[2])


def train(out, resume):
    torch.set_num_threads(1)
    train_set, test_set = synthetic(64, shape=(1, 12), num_classes=4, noise=1.0, n_test=16, seed=1)
    seed_everything(0)
    model = nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(48, 4),
    )
    cfg = TrainConfig(epochs=2, batch_size=16, out_dir=out, resume=resume, quiet=True)
    return Trainer(model, train_set, test_set, cfg)


def kill_before_op(k):
    # SIGKILL this process just before its k-th file operation; log the operations
    log = []
    for name in OPS:
        real = getattr(os, name)

        def wrapped(*a, _real=real, _name=name, **kw):
            log.append((_name, os.path.basename(str(a[-1])) if _name == "replace" else ""))
            if len(log) == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*a, **kw)

        setattr(os, name, wrapped)
    return log


def child(out, resume, kill_at=None, report=None):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            trainer = train(out, resume)
            log = kill_before_op(kill_at) if kill_at else kill_before_op(0)
            trainer.fit()
            if report:
                with open(report, "w") as f:
                    json.dump(log, f)
        except BaseException as exc:
            sys.stderr.write(f"child failed: {exc!r}\n")
            code = 1
        os._exit(code)
    return pid


def wait(pid):
    _, status = os.waitpid(pid, 0)
    return status


def history(out):
    rows = json.load(open(os.path.join(out, "metrics.json")))["epochs"]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def tmp_files(out):
    return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]


# warm up in this process (lazy imports, first kernels), so that each forked child only trains
train(os.path.join(root, "warm"), False).fit()
ref = os.path.join(root, "ref")
t0 = time.monotonic()
assert wait(child(ref, False, report=os.path.join(root, "ops"))) == 0
seconds = time.monotonic() - t0
ops = json.load(open(os.path.join(root, "ops")))
total = len(ops)
# every operation of the start and of the last epoch's metrics, checkpoint and final weights;
# the first epoch's writes are the same operations on other names
second = [i for i, (n, p) in enumerate(ops) if n == "replace" and p == "metrics.csv"][1]
first_of_last_epoch = second - 1  # the fsync of that write's temporary file
chosen = [k for k in range(1, total + 1) if k <= 8 or k >= first_of_last_epoch]
ref_weights = open(os.path.join(ref, "model.safetensors"), "rb").read()
ref_hist = history(ref)

results = []
rng = random.Random(0)
points = [("op", k) for k in chosen]
points += [("time", rng.uniform(0.0, seconds)) for _ in range(n_random)]
for i, (kind, where) in enumerate(points):
    out = os.path.join(root, f"run{i}")
    if kind == "op":
        status = wait(child(out, False, kill_at=where))
    else:
        pid = child(out, False)
        time.sleep(where)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = wait(pid)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    resumed = wait(child(out, True))
    exact = (
        resumed == 0
        and open(os.path.join(out, "model.safetensors"), "rb").read() == ref_weights
        and history(out) == ref_hist
    )
    results.append({"kind": kind, "at": where, "killed": killed, "exact": exact,
                     "resume_status": resumed, "tmp": tmp_files(out)})
with open(os.path.join(root, "faults.json"), "w") as f:
    json.dump({"ops": total, "chosen": len(chosen), "results": results}, f)
"""


@pytest.mark.slow
def test_sigkill_at_every_file_operation_resumes_bit_identical(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "faults.json").read_text())
    results = doc["results"]
    ops = [r for r in results if r["kind"] == "op"]
    # the start and every file operation of the last epoch's metrics, checkpoint and weights
    assert doc["ops"] >= 60 and len(ops) == doc["chosen"] >= 40
    assert all(r["killed"] for r in ops), [r for r in ops if not r["killed"]]
    inexact = [r for r in results if not r["exact"]]
    assert not inexact, inexact
    assert not [r for r in results if r["tmp"]]
