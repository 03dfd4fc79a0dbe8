"""The plain-words findings of ``skipkit transformers`` (see
:mod:`skipkit.experiments.transformer`), split from it: every sentence is computed from the
measured numbers of the runs, so the report never states a claim its numbers do not carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skipkit.experiments.transformer import Settings, VariantRun

__all__ = ["findings", "trained"]


def trained(acc: float, s: Settings) -> bool:
    """The run's bar for "trained": test accuracy at least halfway from chance to 100%."""
    chance = 1.0 / s.values
    return acc >= chance + 0.5 * (1.0 - chance)


def findings(runs: list[VariantRun], s: Settings) -> list[str]:
    """Plain sentences derived from the numbers (no claim the numbers do not carry)."""
    chance = 1.0 / s.values
    at = {(r.variant, r.depth): r for r in runs}
    depths = sorted({r.depth for r in runs})
    lo, hi = depths[0], depths[-1]
    acc = {k: r.final_accuracy for k, r in at.items()}
    names = [v for v in s.variants if any(r.variant == v for r in runs)]
    out = [
        f"Chance is {chance:.1%}; each model trained {s.steps} steps (batch {s.batch}, AdamW, "
        f'constant lr {s.lr:g}, no warm-up). "Trained" below means a test accuracy at least '
        f"halfway from chance to 100% ({chance + 0.5 * (1 - chance):.1%})."
    ]
    for d in depths:
        row = ", ".join(f"{v} {acc[(v, d)]:.1%}" for v in names if (v, d) in acc)
        out.append(f"Depth {d}: test accuracy {row}.")
    if hi != lo:
        moves = []
        for v in names:
            if (v, lo) in acc and (v, hi) in acc:
                a, b = acc[(v, lo)], acc[(v, hi)]
                how = "loses" if b < a - 0.05 else "gains" if b > a + 0.05 else "holds"
                both = max(a, b) < chance + 0.05
                moves.append(f"{v} {how} ({a:.1%} -> {b:.1%}{', at chance' if both else ''})")
        out.append(f"From depth {lo} to depth {hi}: {', '.join(moves)}.")
    top = max(r.final_accuracy for r in runs if r.depth == hi)
    best = [r.variant for r in runs if r.depth == hi and r.final_accuracy >= top - 0.005]
    out.append(
        f"At depth {hi} the best {'variant is' if len(best) == 1 else 'variants are'} "
        f"{' and '.join([', '.join(best[:-1]), best[-1]] if len(best) > 1 else best)} ({top:.1%})."
    )
    rising = []
    for r in runs:
        k = max(1, len(r.accuracy) // 4)  # the last quarter of the curve
        if len(r.accuracy) > k and r.accuracy[-1] > r.accuracy[-1 - k] + 0.05:
            gain, span = r.accuracy[-1] - r.accuracy[-1 - k], r.steps[-1] - r.steps[-1 - k]
            rising.append(f"{r.name} (+{gain:.0%} in its last {span} steps)")
    if rising:
        out.append(
            "Still improving when training stopped (more steps would change these numbers): "
            + ", ".join(rising)
            + "."
        )
    expect = {"plain": False, "pre": True, "hyper": True, "mhc": True}
    checks = []
    for v in names:
        if (v, hi) not in acc:
            continue
        if v == "post":
            refs = [acc[k] for k in (("post", lo), ("pre", hi)) if k in acc and k != (v, hi)]
            degraded = any(acc[(v, hi)] < r - 0.05 for r in refs)
            than = f" or post-norm at depth {lo}" if lo != hi else ""
            checks.append(
                f"post-norm {'degrades' if degraded else 'does not degrade'} at depth {hi} "
                f"(5 points or more below pre-norm there{than}; "
                f"as expected: {'yes' if degraded else 'no'})"
            )
        elif v in expect:
            ok = trained(acc[(v, hi)], s)
            checks.append(
                f"{v} {'trains' if ok else 'does not train'} at depth {hi} "
                f"(as expected: {'yes' if ok == expect[v] else 'no'})"
            )
    if checks:
        out.append(
            "Against the literature (a deep transformer without skips barely trains, post-norm "
            "degrades at depth without warm-up, pre-norm and hyper-connections train): "
            + "; ".join(checks)
            + "."
        )
    flows = []
    for v in names:
        grads = at[(v, hi)].block_grads()[1] if (v, hi) in at else []
        if len(grads) > 1 and grads[-1] > 0:
            flows.append(f"{v} {grads[0] / grads[-1]:.2g}")
    if flows:
        out.append(
            f"At initialisation, depth {hi}, the gradient reaching the first block's attention "
            f"input projection relative to the last block's MLP output projection "
            f"(‖∂L/∂W‖ ratio): {', '.join(flows)}."
        )
    for v in ("hyper", "mhc"):
        gains = at[(v, hi)].gains if (v, hi) in at else []
        if not gains:
            continue
        g = max(gains)
        dev = max(abs(x - 1.0) for x in gains)
        if v == "mhc":
            how = f"differs from 1 by at most {dev:.1e} (a product of doubly stochastic matrices)"
        elif g > 1.05:
            how = f"grows to {g:.3f} (unconstrained mixing)"
        else:
            how = f"stays within {dev:.1e} of 1 in this run"
        out.append(
            f"{v}: the composite residual-mapping gain over the {len(gains)} sublayers at depth "
            f"{hi}, after training, {how}."
        )
    for r in runs:
        if r.stopped_at is not None:
            out.append(
                f"{r.name} stopped at step {r.stopped_at}: non-finite loss; its curves end there."
            )
        elif r.nonfinite:
            out.append(f"{r.name} skipped {r.nonfinite} batches with a non-finite loss.")
    return out
