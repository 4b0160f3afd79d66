"""The difficulty ladder: every optimizer × every synthetic problem, pass/fail against criteria
fixed in advance (see :mod:`benchmarks.ladder_problems`).

Protocol (one program per problem × optimizer: ``lax.scan`` over steps, vmapped over learning
rates × seeds, jitted once):

* every optimizer gets the same grid of ``N_LR`` learning rates on the ×2 lattice
  ``lr = 2**k``, centred on its LR family's centre (``LR_CENTRES``; SGD's rates are larger);
* the learning rate is chosen on ``TUNE_SEEDS`` tuning seeds: most passes, ties broken by the
  lower median log criterion value;
* the pass rate is then measured at that rate on separate held-out seeds (``--seeds``, default
  16), with a 95 % Wilson score interval;
* constant learning rates, no schedule, for every optimizer alike.

``python -m benchmarks ladder`` writes ``results.json``, ``heatmap.png``, ``curves.png`` and
``LADDER.md`` (a hand-written reading between the ``reading`` markers of an existing LADDER.md
is kept when the file is rewritten).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.core import specs as specs_lib
from benchmarks.core.provenance import provenance
from benchmarks.core.tables import table as _table
from benchmarks.ladder_problems import PROBLEMS, SGD_M, Problem

# The columns. Argument names follow benchmarks/specs.py (REGISTRY) and the library's filters.
SPECS: tuple[str, ...] = (
    SGD_M,  # heavy-ball SGD, momentum 0.9 (see ladder_problems.SGD_M for the spelling)
    "adam",
    "adabelief",
    "adam+clip(1.0)",  # global-norm clipping in front of Adam
    "filtered_adam",  # library default: eta = 1 (no smoothing), gamma = 10 -> spike clip only
    "filtered_adam(eta=0.5, gamma=inf)",  # smoothing only (gain floor 0.5), no clipping
    "filtered_adam(eta=0.5)",  # smoothing + spike clip
    "adam(b1=0.95)",  # a fixed-gain filter is Adam with another b1: the smoothing baseline
    "staged(filter='spam')",  # SPAM's rule, threshold 5000 on the raw second moment
    "staged(filter='zscore')",  # centred z-score clip, gamma = 5 noise sigmas
    "staged(filter='soft_clip')",  # m_hat + gamma s tanh(d / (gamma s)), gamma = 10
    "muon(weight_decay=0.0)",  # fo.muon; no decay, so the optimum is not biased toward 0
)
# Specs that only make sense when the parameters are one matrix. On a vector fo.muon routes
# everything to its AdamW side, so the column would be AdamW under another name: left out.
MATRIX_ONLY = frozenset({"muon(weight_decay=0.0)"})
# Not a column: filtered_adam(gamma=inf) with eta = 1 is exactly Adam (the library
# short-circuits it at trace time; the test battery checks it bitwise).

# Centre exponent k (lr = 2**k) of each LR family's grid. Adam-like methods (and fo.muon, whose
# Moonshot scaling matches AdamW's update RMS) share one centre; heavy-ball SGD's is 4× larger.
LR_CENTRES: dict[str, int] = {"adam": -6, "sgd": -4, "rmsprop": -7, "muon": -6}
N_LR = 11  # 2**(centre-5) … 2**(centre+5): a 1000× range on the ×2 lattice
TUNE_SEEDS = 4
HELDOUT_SEEDS = 16
HELDOUT_BASE = 1000  # held-out seeds are 1000, 1001, …; tuning seeds are 0 … TUNE_SEEDS-1
CURVE_POINTS = 100
BAND_FRAC = 0.75  # "working LR band": grid rates passing on >= 75 % of the held-out seeds

QUICK_SPECS: tuple[str, ...] = ("filtered_adam", "muon(weight_decay=0.0)")  # n/a path too
QUICK_N_LR = 3
QUICK_STEP_DIV = 20


# ----------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ``k / n`` (``(nan, nan)`` if n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def criterion_values(problem: Problem, traj: np.ndarray) -> np.ndarray:
    """The criterion's value per run from tracked trajectories ``[..., steps]`` (nan if the
    window holds a non-finite value)."""
    steps = traj.shape[-1]
    w = max(1, int(round(problem.window * steps)))
    tail = traj[..., -w:].astype(np.float64)
    out = tail.mean(-1)
    return np.where(np.all(np.isfinite(tail), axis=-1), out, np.nan)


def passes(problem: Problem, values: np.ndarray) -> np.ndarray:
    """Pass mask: finite and at most the problem's threshold."""
    v = np.asarray(values, dtype=np.float64)
    return np.isfinite(v) & (np.nan_to_num(v, nan=np.inf) <= problem.threshold)


def choose_lr(problem: Problem, values: np.ndarray) -> int:
    """Index of the chosen LR from tuning values ``[n_lr, n_seeds]``: most passes, then the
    lowest median log10 criterion value (non-finite counts as +inf), then the smaller LR."""
    ok = passes(problem, values).sum(axis=1)
    logv = np.log10(np.maximum(np.nan_to_num(values, nan=np.inf), 1e-300))
    med = np.median(logv, axis=1)
    order = sorted(range(len(ok)), key=lambda i: (-int(ok[i]), float(med[i]), i))
    return order[0]


# ----------------------------------------------------------------------------- running


def _knob_arrays(
    problem: Problem, steps: int, overrides: dict[str, float] | None = None
) -> dict[str, jax.Array]:
    knobs = {**problem.knobs, **(overrides or {}), "steps": float(steps)}
    return {k: jnp.float32(v) for k, v in knobs.items()}


def make_run_fn(
    problem: Problem, spec: str, steps: int
) -> Callable[[Sequence[float], Sequence[int], dict[str, float] | None], np.ndarray]:
    """``fn(lrs, seeds, knob_overrides=None) -> traj[n_lr, n_seeds, steps]`` (numpy float32).

    One jitted program: ``lax.scan`` over the steps, vmapped over seeds and learning rates;
    the knobs are traced, so changing them does not recompile.
    """
    parsed = specs_lib.parse_spec(spec)

    def one(lr, seed, knobs):
        k_inst, k_noise = jax.random.split(jax.random.key(seed))
        inst, x0 = problem.setup(k_inst, knobs)
        opt = specs_lib.build(parsed, lr, stats=False)
        state = opt.init(x0)

        def step(carry, t):
            x, s = carry
            g = problem.grad(x, inst, t, jax.random.fold_in(k_noise, t), knobs)
            updates, s = opt.update(g, s, x)
            x = optax.apply_updates(x, updates)
            return (x, s), problem.track(x, inst, t, knobs).astype(jnp.float32)

        _, traj = jax.lax.scan(step, (x0, state), jnp.arange(steps))
        return traj

    batched = jax.vmap(jax.vmap(one, (None, 0, None)), (0, None, None))
    compiled = jax.jit(batched)

    def fn(lrs, seeds, overrides=None):
        knobs = _knob_arrays(problem, steps, overrides)
        seeds_a = jnp.asarray(seeds, jnp.int32)
        try:
            return np.asarray(compiled(jnp.asarray(lrs, jnp.float32), seeds_a, knobs))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
            # An optimizer that needs a concrete learning rate: one program per rate.
            return np.concatenate(
                [
                    np.asarray(
                        jax.jit(
                            lambda s, k, lr=float(lr): batched(jnp.asarray([lr], jnp.float32), s, k)
                        )(seeds_a, knobs)
                    )
                    for lr in lrs
                ]
            )

    return fn


def lr_grid(spec: str, n_lr: int = N_LR) -> list[int]:
    """LR exponents (lr = 2**k) of a spec: ``n_lr`` points centred on its family's centre."""
    centre = LR_CENTRES.get(specs_lib.parse_spec(spec).family, LR_CENTRES["adam"])
    lo = centre - (n_lr - 1) // 2
    return list(range(lo, lo + n_lr))


@dataclass
class Cell:
    """Outcome of one optimizer on one problem."""

    problem: str
    spec: str
    lr_exps: list[int]
    tune_pass: list[int]  # per LR, passes among the tuning seeds
    tune_median: list[float | None]  # per LR, median criterion value on the tuning seeds
    chosen: int  # index into lr_exps
    heldout_values: list[float | None]  # at the chosen LR, per held-out seed
    heldout_pass: int
    heldout_n: int
    heldout_pass_by_lr: list[int]  # every LR on the held-out seeds (not used for the verdict)
    curve: list[float | None]  # median tracked value at the chosen LR, CURVE_POINTS points
    curve_steps: list[int]
    seconds: float

    @property
    def rate(self) -> float:
        return self.heldout_pass / self.heldout_n if self.heldout_n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.heldout_pass, self.heldout_n)

    @property
    def chosen_lr(self) -> float:
        return 2.0 ** self.lr_exps[self.chosen]

    @property
    def on_edge(self) -> bool:
        return self.chosen in (0, len(self.lr_exps) - 1)

    @property
    def band(self) -> int:
        """Grid rates passing on at least ``BAND_FRAC`` of the held-out seeds."""
        return sum(k >= BAND_FRAC * self.heldout_n for k in self.heldout_pass_by_lr)


def _clean(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def run_cell(
    problem: Problem,
    spec: str,
    steps: int,
    lr_exps: list[int],
    tune_seeds: list[int],
    heldout_seeds: list[int],
) -> Cell:
    """Tune on ``tune_seeds``, evaluate at the chosen LR on ``heldout_seeds`` (one program)."""
    t0 = time.perf_counter()
    fn = make_run_fn(problem, spec, steps)
    traj = fn([2.0**k for k in lr_exps], list(tune_seeds) + list(heldout_seeds))
    vals = criterion_values(problem, traj)
    nt = len(tune_seeds)
    tune, held = vals[:, :nt], vals[:, nt:]
    i = choose_lr(problem, tune)
    idx = np.unique(np.linspace(0, steps - 1, CURVE_POINTS).astype(int))
    with np.errstate(invalid="ignore"):
        curve = np.median(
            np.where(np.isfinite(traj[i, nt:][:, idx]), traj[i, nt:][:, idx], np.inf), axis=0
        )
    return Cell(
        problem=problem.name,
        spec=spec,
        lr_exps=list(lr_exps),
        tune_pass=[int(x) for x in passes(problem, tune).sum(1)],
        tune_median=[_clean(np.median(np.nan_to_num(r, nan=np.inf))) for r in tune],
        chosen=i,
        heldout_values=[_clean(v) for v in held[i]],
        heldout_pass=int(passes(problem, held[i]).sum()),
        heldout_n=len(heldout_seeds),
        heldout_pass_by_lr=[int(x) for x in passes(problem, held).sum(1)],
        curve=[_clean(v) for v in curve],
        curve_steps=[int(s) + 1 for s in idx],
        seconds=time.perf_counter() - t0,
    )


def applies(problem: Problem, spec: str) -> bool:
    """Whether the column is run on this problem (Muon only on matrix parameters)."""
    return problem.matrix or spec not in MATRIX_ONLY


@dataclass(frozen=True)
class LadderConfig:
    """Everything that defines a ladder run."""

    specs: tuple[str, ...] = SPECS
    problems: tuple[str, ...] = tuple(p.name for p in PROBLEMS)
    n_lr: int = N_LR
    tune_seeds: int = TUNE_SEEDS
    heldout_seeds: int = HELDOUT_SEEDS
    step_div: int = 1  # quick runs divide every problem's step count by this
    quick: bool = False

    @staticmethod
    def make(
        quick: bool = False, seeds: int | None = None, problems: Sequence[str] | None = None
    ) -> LadderConfig:
        """The default (or ``quick``) configuration, with optional overrides."""
        names = tuple(problems) if problems else tuple(p.name for p in PROBLEMS)
        unknown = [n for n in names if n not in {p.name for p in PROBLEMS}]
        if unknown:
            raise ValueError(
                f"unknown ladder problem(s) {unknown}; valid: {[p.name for p in PROBLEMS]}"
            )
        if quick:
            return LadderConfig(QUICK_SPECS, names, QUICK_N_LR, 2, seeds or 2, QUICK_STEP_DIV, True)
        return LadderConfig(SPECS, names, N_LR, TUNE_SEEDS, seeds or HELDOUT_SEEDS, 1, False)

    def steps(self, problem: Problem) -> int:
        return max(20, problem.steps // self.step_div)


def run_ladder(cfg: LadderConfig, progress: bool = True) -> list[Cell]:
    """Run every (problem, spec) cell of the configuration."""
    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    units = [(p, s) for p in probs for s in cfg.specs if applies(p, s)]
    tune = list(range(cfg.tune_seeds))
    held = list(range(HELDOUT_BASE, HELDOUT_BASE + cfg.heldout_seeds))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc="ladder", unit="cell", dynamic_ncols=True)
    cells = []
    for p, s in units:
        if bar is not None:
            bar.set_postfix_str(f"{p.name} · {s}")
        cells.append(run_cell(p, s, cfg.steps(p), lr_grid(s, cfg.n_lr), tune, held))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return cells


# ----------------------------------------------------------------------------- outputs


def _short(spec: str) -> str:
    return {SGD_M: "sgd (momentum 0.9)", "muon(weight_decay=0.0)": "muon (wd 0)"}.get(spec, spec)


def to_json(cfg: LadderConfig, cells: list[Cell], meta: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable results."""
    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    return {
        "schema": "ladder/1",
        **meta,
        "config": {
            "specs": list(cfg.specs),
            "n_lr": cfg.n_lr,
            "lr_centres_log2": LR_CENTRES,
            "tune_seeds": list(range(cfg.tune_seeds)),
            "heldout_seeds": list(range(HELDOUT_BASE, HELDOUT_BASE + cfg.heldout_seeds)),
            "quick": cfg.quick,
            "step_div": cfg.step_div,
            "selection": "most passes on the tuning seeds, then lowest median log10 value, "
            "then the smaller LR",
            "interval": "95 % Wilson score interval on the held-out pass rate",
        },
        "problems": [
            {
                "name": p.name,
                "level": p.level,
                "title": p.title,
                "hard": p.hard,
                "criterion": p.criterion,
                "threshold": p.threshold,
                "window": p.window,
                "steps": cfg.steps(p),
                "knobs": p.knobs,
                "matrix": p.matrix,
                "witness": {
                    "spec": p.witness.spec,
                    "lr": p.witness.lr,
                    "knobs": p.witness.knobs,
                    "note": p.witness.note,
                },
            }
            for p in probs
        ],
        "cells": [
            {
                "problem": c.problem,
                "spec": c.spec,
                "lr_exps": c.lr_exps,
                "lrs": [2.0**k for k in c.lr_exps],
                "tune_pass": c.tune_pass,
                "tune_median": c.tune_median,
                "chosen_lr": c.chosen_lr,
                "chosen_lr_exp": c.lr_exps[c.chosen],
                "chosen_on_grid_edge": c.on_edge,
                "heldout_pass": c.heldout_pass,
                "heldout_n": c.heldout_n,
                "pass_rate": c.rate,
                "wilson95": list(c.interval),
                "heldout_values": c.heldout_values,
                "heldout_pass_by_lr": c.heldout_pass_by_lr,
                "lr_band": c.band,
                "curve_steps": c.curve_steps,
                "curve_median": c.curve,
                "seconds": c.seconds,
            }
            for c in cells
        ],
        "not_run": [
            {
                "problem": p.name,
                "spec": s,
                "why": "parameters are a vector: Muon applies to matrices only",
            }
            for p in probs
            for s in cfg.specs
            if not applies(p, s)
        ],
    }


def plot_heatmap(cfg: LadderConfig, cells: list[Cell], path: Path) -> None:
    """Optimizer × problem pass-rate heatmap, annotated with k/n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    by = {(c.spec, c.problem): c for c in cells}
    grid = np.full((len(cfg.specs), len(probs)), np.nan)
    for i, s in enumerate(cfg.specs):
        for j, p in enumerate(probs):
            if (s, p.name) in by:
                grid[i, j] = by[(s, p.name)].rate
    fig, ax = plt.subplots(figsize=(1.25 * len(probs) + 3.5, 0.5 * len(cfg.specs) + 1.8))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#d9d9d9")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i, s in enumerate(cfg.specs):
        for j, p in enumerate(probs):
            c = by.get((s, p.name))
            if c is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
                continue
            edge = "*" if c.on_edge else ""
            dark = c.rate < 0.2 or c.rate > 0.85  # the colormap's dark ends: white text
            ax.text(
                j,
                i,
                f"{c.heldout_pass}/{c.heldout_n}{edge}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    ax.set_xticks(
        range(len(probs)), [f"{p.level}. {p.name}" for p in probs], rotation=30, ha="right"
    )
    ax.set_yticks(range(len(cfg.specs)), [_short(s) for s in cfg.specs])
    ax.set_title(
        "held-out pass rate at the LR chosen on tuning seeds (* = LR on grid edge)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(cfg: LadderConfig, cells: list[Cell], path: Path) -> None:
    """Per problem: median tracked criterion quantity over held-out seeds at the chosen LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    ncol = min(4, len(probs))
    nrow = math.ceil(len(probs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, p in zip(axes.flat, probs):
        for i, s in enumerate(cfg.specs):
            c = next((c for c in cells if c.problem == p.name and c.spec == s), None)
            if c is None:
                continue
            y = np.array([np.nan if v is None else v for v in c.curve], float)
            ax.plot(
                c.curve_steps,
                np.clip(y, 1e-12, 1e12),
                color=cmap(i % 10),
                ls=("-", "--", ":")[(i // 10) % 3],
                lw=1.2,
                label=_short(s),
            )
        ax.axhline(p.threshold, color="k", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{p.level}. {p.name}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(probs) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # the first panel may lack the matrix-only columns
        h, lab = ax.get_legend_handles_labels()
        if len(lab) > len(labels):
            handles, labels = h, lab
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(
        "median over held-out seeds of the criterion's tracked quantity at the chosen "
        "LR (dotted: threshold; a window criterion averages the last 10 %)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


READING_START = "<!-- reading:start -->"
READING_END = "<!-- reading:end -->"
_DEFAULT_READING = "_No hand-written reading yet: the facts above are computed from results.json._"


def _existing_reading(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text()
    if READING_START in text and READING_END in text:
        return text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip("\n")
    return None


def _grid(
    cfg: Any, probs: list[Any], by: dict[tuple[str, str], Any], cell: Callable[[Any], str]
) -> list[list[str]]:
    """Table rows: one per optimizer, ``cell(result)`` per problem ("n/a" where not run)."""
    return [
        [f"`{_short(s)}`"]
        + ["n/a" if (c := by.get((s, p.name))) is None else cell(c) for p in probs]
        for s in cfg.specs
    ]


def _facts(cfg: LadderConfig, cells: list[Cell]) -> list[str]:
    """Plain statements computed from the cells (no interpretation)."""
    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    by = {(c.spec, c.problem): c for c in cells}
    out = []
    for p in probs:
        row = [by[(s, p.name)] for s in cfg.specs if (s, p.name) in by]
        good = [_short(c.spec) for c in row if c.heldout_pass == c.heldout_n]
        none = [_short(c.spec) for c in row if c.heldout_pass == 0]
        mean = np.mean([c.rate for c in row]) if row else math.nan
        out.append(
            f"- **{p.level}. {p.name}** (mean pass rate {mean:.0%}): all held-out seeds "
            f"pass for {', '.join(good) if good else 'no optimizer'}; none pass for "
            f"{', '.join(none) if none else 'no optimizer'}."
        )
    base = "adam"
    for s in cfg.specs:
        if s == base:
            continue
        better, worse = [], []
        for p in probs:
            a, b = by.get((s, p.name)), by.get((base, p.name))
            if a is None or b is None:
                continue
            (alo, ahi), (blo, bhi) = a.interval, b.interval
            if alo > bhi:
                better.append(p.name)
            elif ahi < blo:
                worse.append(p.name)
        if better or worse:
            out.append(
                f"- {_short(s)} vs adam, Wilson intervals disjoint: better on "
                f"{', '.join(better) or '—'}; worse on {', '.join(worse) or '—'}."
            )
    edges = [f"{_short(c.spec)} on {c.problem}" for c in cells if c.on_edge]
    if edges:
        out.append(
            f"- Chosen LR on the edge of the grid ({len(edges)} cells): " + "; ".join(edges) + "."
        )
    return out


def write_markdown(cfg: LadderConfig, cells: list[Cell], meta: dict[str, Any], path: Path) -> None:
    """LADDER.md: command, environment, criteria, pass-rate and LR tables, facts, reading."""
    probs = [p for p in PROBLEMS if p.name in cfg.problems]
    by = {(c.spec, c.problem): c for c in cells}
    env = meta.get("env", {})
    reading = _existing_reading(path) or _DEFAULT_READING
    lines = [
        "# Difficulty ladder",
        "",
        "Cheap synthetic problems of increasing difficulty, each with a pass criterion fixed in "
        "code from witness runs, before the compared optimizers were run "
        "(`benchmarks/ladder_problems.py`; exceptions, if any, are disclosed in the reading), "
        "run by `benchmarks/ladder.py`.",
        "",
        f"- command: `{meta.get('command', '')}`",
        f"- wall time: {meta.get('wall_s', math.nan):.0f} s "
        f"({len(cells)} problem × optimizer cells, one compiled program each)",
        f"- date: {meta.get('date', '')}",
        "- environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
    ]
    if cfg.quick:
        lines += [
            "",
            "**Quick run (plumbing check): steps divided by "
            f"{cfg.step_div}, few seeds and LRs. The pass rates below mean nothing.**",
        ]
    lines += [
        "",
        "## Protocol",
        "",
        f"- Learning rates: {cfg.n_lr} points of the ×2 lattice `lr = 2**k` per optimizer, "
        "centred on its family's centre: "
        + ", ".join(f"{f} k = {k}" for f, k in LR_CENTRES.items() if f in ("adam", "sgd"))
        + " (heavy-ball SGD is the only `sgd`-family column; fo.muon uses AdamW-sized rates). "
        "Constant rate, no schedule, for everyone.",
        f"- Tuning: seeds 0–{cfg.tune_seeds - 1}; the LR with the most passes wins, ties go to "
        "the lower median log criterion value, then to the smaller LR.",
        f"- Evaluation: {cfg.heldout_seeds} held-out seeds ({HELDOUT_BASE}–"
        f"{HELDOUT_BASE + cfg.heldout_seeds - 1}) at the chosen LR; a seed fixes the instance, "
        "the start and the noise stream, so cells are paired. Interval: 95 % Wilson score.",
        "- Muon (`fo.muon`, weight decay 0 so that the optimum is not pulled toward 0) runs only "
        "where the parameters are one matrix (levels "
        + ", ".join(str(p.level) for p in probs if p.matrix)
        + "); on a vector it would route everything to its AdamW side.",
        "- `filtered_adam(gamma=inf)` is not a column: with `eta = 1` it is Adam exactly "
        "(bitwise, checked by the test battery). The library default `filtered_adam` is "
        "`eta = 1, gamma = 10`: spike clipping with no smoothing.",
        "",
        "## Problems and pass criteria",
        "",
        _table(
            [
                "level",
                "problem",
                "what is hard",
                "pass criterion",
                "witness (criterion is reachable)",
            ],
            [
                [
                    str(p.level),
                    f"`{p.name}`: {p.title}",
                    p.hard,
                    p.criterion,
                    f"{p.witness.note}"
                    + (f" (knobs {p.witness.knobs})" if p.witness.knobs else ""),
                ]
                for p in probs
            ],
        ),
        "",
        "A witness run and a learning rate of 0 are checked by "
        "`tests/benchmarks/test_ladder.py`: the witness passes, learning rate 0 fails every "
        "problem.",
        "",
        "## Held-out pass rates",
        "",
        "![heatmap](heatmap.png)",
        "",
    ]
    header = ["optimizer"] + [f"{p.level}. {p.name}" for p in probs] + ["total"]
    rows = []
    for s in cfg.specs:
        row, k_all, n_all = [f"`{_short(s)}`"], 0, 0
        for p in probs:
            c = by.get((s, p.name))
            if c is None:
                row.append("n/a")
                continue
            lo, hi = c.interval
            row.append(f"{c.heldout_pass}/{c.heldout_n} [{lo:.2f}, {hi:.2f}]")
            k_all += c.heldout_pass
            n_all += c.heldout_n
        row.append(f"{k_all}/{n_all}")
        rows.append(row)
    lines += [
        _table(header, rows),
        "",
        "Cells: passes / held-out seeds [95 % Wilson interval].",
        "",
        "## Chosen learning rates",
        "",
        "`k` of `lr = 2**k`; `*` = on the edge of the grid (the best rate may lie "
        "outside); in brackets the tuning-seed passes at that rate.",
        "",
    ]
    chosen = _grid(
        cfg,
        probs,
        by,
        lambda c: (
            f"{c.lr_exps[c.chosen]}{'*' if c.on_edge else ''} "
            f"({c.tune_pass[c.chosen]}/{cfg.tune_seeds})"
        ),
    )
    lines += [
        _table(["optimizer"] + [p.name for p in probs], chosen),
        "",
        "## Width of the working LR band",
        "",
        f"Descriptive only (not used to choose anything): how many of the {cfg.n_lr} grid "
        f"rates (×2 apart) pass on at least {BAND_FRAC:.0%} of the held-out seeds. A wide "
        "band means the result does not hinge on the tuning.",
        "",
    ]
    bands = _grid(cfg, probs, by, lambda c: str(c.band))
    lines += [
        _table(["optimizer"] + [p.name for p in probs], bands),
        "",
        "![curves](curves.png)",
        "",
        "## Facts computed from the results",
        "",
    ]
    lines += _facts(cfg, cells)
    lines += [
        "",
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
        "## Files",
        "",
        "- `results.json`: configuration, problems and criteria, and per cell the tuning "
        "passes and medians per LR, the chosen LR, held-out values per seed, held-out "
        "passes at every LR, and the median curve.",
        "- `heatmap.png`, `curves.png`: the figures above.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(
    out: Path,
    command: str,
    quick: bool = False,
    seeds: int | None = None,
    problems: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the ladder and write results.json, heatmap.png, curves.png and LADDER.md."""
    cfg = LadderConfig.make(quick, seeds, problems)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cells = run_ladder(cfg, progress)
    wall = time.perf_counter() - t0
    meta = {
        "command": command,
        "wall_s": wall,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "env": provenance(),
    }
    res = to_json(cfg, cells, meta)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    plot_heatmap(cfg, cells, out / "heatmap.png")
    plot_curves(cfg, cells, out / "curves.png")
    write_markdown(cfg, cells, meta, out / "LADDER.md")
    return res


def cells_from_json(res: dict[str, Any]) -> tuple[LadderConfig, list[Cell]]:
    """Configuration and cells back from ``results.json`` (to rewrite the report)."""
    c = res["config"]
    cfg = LadderConfig(
        tuple(c["specs"]),
        tuple(p["name"] for p in res["problems"]),
        int(c["n_lr"]),
        len(c["tune_seeds"]),
        len(c["heldout_seeds"]),
        int(c["step_div"]),
        bool(c["quick"]),
    )
    cells = [
        Cell(
            problem=d["problem"],
            spec=d["spec"],
            lr_exps=d["lr_exps"],
            tune_pass=d["tune_pass"],
            tune_median=d["tune_median"],
            chosen=d["lr_exps"].index(d["chosen_lr_exp"]),
            heldout_values=d["heldout_values"],
            heldout_pass=d["heldout_pass"],
            heldout_n=d["heldout_n"],
            heldout_pass_by_lr=d["heldout_pass_by_lr"],
            curve=d["curve_median"],
            curve_steps=d["curve_steps"],
            seconds=d["seconds"],
        )
        for d in res["cells"]
    ]
    return cfg, cells


def rewrite_report(out: Path) -> dict[str, Any]:
    """Rewrite LADDER.md and the figures from ``out/results.json`` without running anything
    (the command and wall time cited stay those of the run)."""
    res = json.loads((out / "results.json").read_text())
    cfg, cells = cells_from_json(res)
    meta = {k: res[k] for k in ("command", "wall_s", "date", "env") if k in res}
    plot_heatmap(cfg, cells, out / "heatmap.png")
    plot_curves(cfg, cells, out / "curves.png")
    write_markdown(cfg, cells, meta, out / "LADDER.md")
    return res


def summary_text(res: dict[str, Any]) -> str:
    """A compact text table of pass rates (optimizer rows × problem columns)."""
    probs = [p["name"] for p in res["problems"]]
    by = {(c["spec"], c["problem"]): c for c in res["cells"]}
    w = max(len(_short(s)) for s in res["config"]["specs"])
    lines = [" " * w + "  " + " ".join(f"{p[:11]:>11s}" for p in probs)]
    for s in res["config"]["specs"]:
        cells = [by.get((s, p)) for p in probs]
        lines.append(
            f"{_short(s):{w}s}  "
            + " ".join(
                f"{'n/a':>11s}" if c is None else f"{c['heldout_pass']:>5d}/{c['heldout_n']:<5d}"
                for c in cells
            )
        )
    return "\n".join(lines)


def add_parsers(sub: Any) -> None:
    """The ``ladder`` subcommand."""
    lad = sub.add_parser(
        "ladder",
        help="the difficulty ladder: synthetic problems with fixed "
        "pass criteria, every optimizer, pass-rate heatmap",
    )
    lad.add_argument("--out", default=None, help="output dir (default benchmarks/results/ladder)")
    lad.add_argument(
        "--seeds", type=int, default=None, help="held-out seeds per cell (default 16; quick: 2)"
    )
    lad.add_argument(
        "--quick",
        action="store_true",
        help="plumbing check: few steps, seeds, LRs and optimizers (seconds)",
    )
    lad.add_argument("--problems", default=None, help="comma-separated subset of the problems")
    lad.add_argument(
        "--report",
        action="store_true",
        help="only rewrite LADDER.md and the figures from OUT/results.json",
    )


def cli(a: Any, command: str) -> int:
    """Run the parsed ``ladder`` subcommand; returns the exit code."""
    out = Path(a.out) if a.out else Path(__file__).resolve().parent / "results" / "ladder"
    t0 = time.perf_counter()
    if a.seeds is not None and a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
    if a.report:
        if not (out / "results.json").exists():
            raise ValueError(f"--report: no results.json in {out}")
        print(summary_text(rewrite_report(out)))
        print(f"\nrewrote {out / 'LADDER.md'} and the figures")
        return 0
    res = main(
        out,
        command,
        quick=a.quick,
        seeds=a.seeds,
        problems=a.problems.split(",") if a.problems else None,
    )
    print(summary_text(res))
    print(
        f"\nwrote {out / 'LADDER.md'}, results.json, heatmap.png, curves.png "
        f"({time.perf_counter() - t0:.0f} s total)"
    )
    return 0
