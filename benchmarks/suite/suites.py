"""Suite definitions: tasks, optimizer grids, tuning and evaluation seeds, spike sweeps.

Protocol (the same in every suite; only sizes differ):

* learning rates live on the lattice ``lr = 2**k``; each spec starts from a ``window`` of rates
  centred on its family's centre and the window is extended (``max_extend`` points per side)
  while the best rate sits on an edge, so the optimum is interior;
* every spec is tuned on the **tuning seeds** (validation split) and the chosen configuration
  then runs on the disjoint **evaluation seeds**, whose test-split numbers the report shows;
* networks train with linear warmup + cosine decay; the quadratics use a constant rate;
* the baselines of a claim get at least the method's tuning budget: the same LR rule and seeds
  plus their own grids (Adam's b2, the clip threshold, AdamW's weight decay × b2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.core.specs import parse_spec

F = "filtered_adam"  # the method of the robustness claims (library defaults)
# Robustness baselines: Adam with tuned b2, Adam + global-norm clip with a tuned threshold,
# per-element clipping, SPAM's spike rule (Huang et al. 2025) as a filter stage.
ADAM_B2 = ("adam(b2=0.95)", "adam(b2=0.99)", "adam")
CLIP = ("adam+clip(0.1)", "adam+clip(1.0)", "adam+clip(10.0)")
CLIP_VALUE = ("adam+clip_value(0.01)", "adam+clip_value(0.1)")
SPAM = ("staged(filter='spam')",)
ROBUST_FAMILIES = (ADAM_B2, CLIP, CLIP_VALUE, SPAM)
ROBUST_BASELINES = ADAM_B2 + CLIP + CLIP_VALUE + SPAM
# Convergence / generalization baseline: AdamW over weight decay {0, 0.1} × b2 {0.95, 0.999}.
ADAMW = (
    "adamw(b2=0.95, weight_decay=0.0)",
    "adamw(b2=0.95, weight_decay=0.1)",
    "adamw(weight_decay=0.0)",
    "adamw(weight_decay=0.1)",
)
# The LM's AdamW grid, shrunk to fit the budget: weight decay 0.1 (the LM sizing run's) × b2.
LM_ADAMW = ("adamw(b2=0.95, weight_decay=0.1)", "adamw(weight_decay=0.1)")
# Muon specs derived from the tuned AdamW (its b2 and weight decay), filled in per task.
MUON_TEMPLATES = (
    "muon(adam_b2={b2}, weight_decay={wd})",
    "optax_muon(adam_b2={b2}, adam_weight_decay={wd}, weight_decay={wd})",
)
NET_SPECS = (F, *ROBUST_BASELINES, *ADAMW)
QUAD_SPECS = (F, *ROBUST_BASELINES)

# Spike sweep: magnitude × pattern × kind (train.PATTERNS / train.KINDS).
MAGNITUDES = (3.0, 10.0, 100.0, 1e3, 1e4)
SWEEP = tuple(
    {"magnitude": m, "pattern": p, "kind": k}
    for m in MAGNITUDES
    for p in ("once", "every50", "burst5")
    for k in ("batch", "row")
)
LM_SWEEP = tuple(
    [{"magnitude": m, "pattern": "once", "kind": "batch"} for m in (10.0, 100.0, 1e3)]
    + [{"magnitude": 100.0, "pattern": "every50", "kind": "batch"}]
)
NATURAL_LR_FACTOR = 4.0  # natural instability: 4× the tuned LR, no warmup, nothing injected

# Centre exponent k (lr = 2**k) per task and LR family, from pilot runs with warmup + cosine
# (the LM sizing run: AdamW best near 3e-3 ≈ 2^-8.4; the quick suite: the MLP's Adam family
# at 2^-6, optax.contrib.muon at 2^-5 to 2^-4). The window still extends past an edge.
LR_CENTRES: dict[str, dict[str, int]] = {
    "lm": {"adam": -8, "muon": -6},
    "mnist1d_mlp": {"adam": -6, "muon": -5},
    "mnist1d_cnn": {"adam": -7, "muon": -5},
    "fashion_mlp": {"adam": -8, "muon": -6},
}


@dataclass(frozen=True)
class NetPlan:
    """One network task of a suite (``kwargs`` go to its builder in :mod:`..tasks`)."""

    task: str
    kwargs: dict[str, Any]
    targets: tuple[float, ...]  # steps-to-target thresholds (≥ 3), fixed before any run
    tune_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    specs: tuple[str, ...] = NET_SPECS
    # Spike injections, run on F and on the strongest tuned member of each robustness family.
    sweep: tuple[dict[str, Any], ...] = ()
    natural: bool = False  # also run every spec at NATURAL_LR_FACTOR × its LR, no warmup
    warmup_frac: float = 0.05  # warmup steps / total steps
    window: int | None = None  # LR window / extension for this task (None: the suite's)
    max_extend: int | None = None


@dataclass(frozen=True)
class Suite:
    """Everything that defines a suite's runs."""

    name: str
    nets: tuple[NetPlan, ...]
    window: int
    max_extend: int
    quad_specs: tuple[str, ...]
    quad_steps: int
    quad_tune_seeds: tuple[int, ...]
    quad_eval_seeds: tuple[int, ...]
    quad_lr_exps: tuple[int, ...]
    quad_sweep: tuple[dict[str, Any], ...]
    cost_sizes: tuple[int, ...] = ()
    cost_reps: int = 5
    cost_lm: dict[str, Any] = field(default_factory=dict)
    indicative: bool = False
    notes: tuple[str, ...] = ()

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts a complete run has, named as ``run --only`` names them."""
        return tuple(p.task for p in self.nets) + ("quad",) + (("cost",) if self.cost_sizes else ())

    @property
    def net_specs(self) -> tuple[str, ...]:
        """Every spec the network tasks may run, with the Muon specs derived from each AdamW."""
        out = [s for p in self.nets for s in p.specs]
        for s in list(out):
            if s.startswith("adamw"):
                out += muon_specs(*adamw_params(s))
        return tuple(dict.fromkeys(out))


def seeds(first: int, n: int) -> tuple[int, ...]:
    """``n`` consecutive seeds from ``first`` (tuning seeds start at 0, evaluation at 1000)."""
    return tuple(range(first, first + n))


# Sized by one AdamW run (lr 3e-3, b2 0.95, weight decay 0.1, 60 warmup steps + cosine to
# 3e-4, 1200 steps): validation 1.77 nats/char at step 600, 1.63 at 900, 1.57 at 1200; test
# 1.74 (bigram 2.49, trigram 2.09 on the same test split).
_LM_FULL = dict(
    d=128,
    layers=2,
    heads=4,
    context=128,
    batch_size=32,
    steps=1200,
    eval_every=100,
    n_val=64,
    n_test=128,
)
_LM_QUICK = dict(
    d=32, layers=2, heads=2, context=32, batch_size=8, steps=200, eval_every=50, n_val=32, n_test=64
)
_SMOKE_LM = dict(
    d=16, layers=1, heads=2, context=16, batch_size=4, steps=4, eval_every=2, n_val=4, n_test=4
)
# The quick suite's specs: F, one member of two robustness families, one AdamW (+ 2 Muons).
_QUICK_SPECS = (F, "adam", "adam+clip(1.0)", "adamw(b2=0.95, weight_decay=0.1)")

SUITES: dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        nets=(
            NetPlan(
                "lm",
                _SMOKE_LM,
                (4.0, 3.5, 3.0),
                seeds(0, 1),
                seeds(1000, 1),
                specs=(F, "adam", "adamw(b2=0.95, weight_decay=0.1)"),
                sweep=LM_SWEEP[:1],
                natural=True,
            ),
            NetPlan(
                "mnist1d_mlp",
                dict(hidden=(16,), batch_size=16, steps=4, eval_every=2),
                (0.1, 0.2, 0.3),
                seeds(0, 2),
                seeds(1000, 2),
                specs=(F, "adam", "adam+clip(1.0)", *SPAM, "adamw(weight_decay=0.0)"),
                sweep=SWEEP[:2],
            ),
        ),
        window=1,
        max_extend=0,
        quad_specs=(F, "adam", "adam+clip(1.0)", *SPAM),
        quad_steps=40,
        quad_tune_seeds=seeds(0, 2),
        quad_eval_seeds=seeds(1000, 3),
        quad_lr_exps=(-6, -4),
        quad_sweep=SWEEP[:2],
        cost_sizes=(10_000,),
        cost_reps=2,
        indicative=True,
        notes=(
            "smoke size: a few steps of everything, to check that outputs parse; its "
            "numbers mean nothing",
        ),
    ),
    "quick": Suite(
        name="quick",
        nets=(
            # Equal numbers of tuning and evaluation seeds: one compiled shape serves both.
            NetPlan(
                "lm",
                _LM_QUICK,
                (3.0, 2.8, 2.6),
                seeds(0, 2),
                seeds(1000, 2),
                specs=_QUICK_SPECS,
                sweep=LM_SWEEP[1:2],
            ),
            NetPlan(
                "mnist1d_mlp",
                dict(steps=400, eval_every=50),
                (0.5, 0.55, 0.6),
                seeds(0, 3),
                seeds(1000, 3),
                specs=_QUICK_SPECS,
                sweep=tuple(
                    s for s in SWEEP if s["magnitude"] in (10.0, 1e3) and s["pattern"] != "burst5"
                ),
            ),
        ),
        window=3,
        max_extend=1,
        quad_specs=(F, "adam", "adam+clip(1.0)", *SPAM),
        quad_steps=400,
        quad_tune_seeds=seeds(0, 2),
        quad_eval_seeds=seeds(1000, 8),
        quad_lr_exps=tuple(range(-10, 1)),
        quad_sweep=SWEEP,
        cost_sizes=(1_000_000,),
        indicative=True,
        notes=(
            "quick size: **indicative only** — the full protocol (disjoint tuning and "
            "evaluation seeds, warmup + cosine, Holm-corrected verdicts) at a small size: "
            "fewer seeds and baselines, a tiny LM (d=32, context 32: it does not reach a "
            "useful loss), "
            "two network tasks; see the full suite for evidence",
        ),
    ),
    "full": Suite(
        name="full",
        nets=(
            # The LM dominates the cost (≈ 145 s per seed-run on 2 idle cores): it carries the
            # convergence / generalization claims only, on 1 tuning seed with a 3-point LR
            # window extended by ≤ 1 point, and AdamW's grid shrunk to b2 {0.95, 0.999} at
            # weight decay 0.1 (LM_ADAMW). Its spike grid (LM_SWEEP) and natural instability
            # do not fit the 120-min budget on 2 CPU cores; robustness is judged on MNIST-1D
            # and the quadratics (see benchmarks/README.md, Budget).
            NetPlan(
                "lm",
                _LM_FULL,
                (2.2, 2.0, 1.8),
                seeds(0, 1),
                seeds(1000, 5),
                specs=(F, *LM_ADAMW),
                window=3,
                max_extend=1,
            ),
            # The natural instability (4× the tuned LR, no warmup, nothing injected) runs here.
            NetPlan(
                "mnist1d_mlp",
                dict(steps=600, eval_every=50),
                (0.5, 0.55, 0.6),
                seeds(0, 2),
                seeds(1000, 5),
                sweep=SWEEP,
                natural=True,
            ),
            # CNN and Fashion-MNIST carry the convergence / generalization claims only.
            NetPlan(
                "mnist1d_cnn",
                dict(channels=16, hidden=64, steps=600, eval_every=50),
                (0.6, 0.65, 0.7),
                seeds(0, 2),
                seeds(1000, 5),
                specs=(F, *ADAMW),
                # fo.muon (LR family adam, centre 2^-7) tuned to 2^-3, the end of a window
                # extended by 2, in a full run: its window may extend by 3.
                max_extend=3,
            ),
            NetPlan(
                "fashion_mlp",
                dict(hidden=(128,), steps=600, eval_every=50, n_val=1000),
                (0.8, 0.82, 0.84),
                seeds(0, 2),
                seeds(1000, 5),
                specs=(F, *ADAMW),
            ),
        ),
        window=4,
        max_extend=2,
        quad_specs=QUAD_SPECS,
        quad_steps=1000,
        quad_tune_seeds=seeds(0, 4),
        quad_eval_seeds=seeds(1000, 20),
        quad_lr_exps=tuple(range(-12, 2)),
        quad_sweep=SWEEP,
        cost_sizes=(1_000_000, 10_000_000),
        cost_lm=dict(d=128, layers=2, heads=4, context=128, batch_size=16),
        notes=(
            "full size: one run on one commit; see benchmarks/README.md (Budget) for "
            "where its time goes",
        ),
    ),
}


def get_suite(name: str) -> Suite:
    """Look up a suite by name (``ValueError`` lists the valid names)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {sorted(SUITES)}")
    return SUITES[name]


def lr_window(task: str, family: str, window: int) -> tuple[int, int]:
    """Initial ``(k_lo, k_hi)`` window of LR exponents for an LR family on a task."""
    centre = LR_CENTRES.get(task, LR_CENTRES["mnist1d_mlp"]).get(family, -8)
    lo = centre - (window - 1) // 2
    return lo, lo + window - 1


def adamw_params(spec_text: str) -> tuple[float, float]:
    """(b2, weight_decay) of an ``adamw`` spec, with the registry's defaults filled in."""
    spec = parse_spec(spec_text)
    kw = {**(spec.entry.params or {}), **dict(spec.base.kwargs)}
    return float(kw["b2"]), float(kw["weight_decay"])


def muon_specs(b2: float, weight_decay: float) -> tuple[str, ...]:
    """The Muon specs whose AdamW side has the tuned AdamW's b2 and weight decay."""
    return tuple(t.format(b2=b2, wd=weight_decay) for t in MUON_TEMPLATES)
