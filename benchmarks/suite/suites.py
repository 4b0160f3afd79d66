"""Suite definitions: which tasks, optimizer specs, seeds, step counts and LR windows run.

Learning rates live on the lattice ``lr = 2**k`` (×2 steps) for every optimizer; each optimizer
starts from a window of ``window`` points centred on its family's centre for that task and the
runner extends the window (up to ``max_extend`` points per side) while the best rate sits on an
edge. The centres come from pilot runs (and the quick suite) and are written here before the
suite runs; REPORT.md flags any optimizer whose best rate is still on an edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# filtered_adam with both moments stored in bfloat16 (arithmetic stays float32): the report
# compares it with float32 storage at the same learning rate and seeds.
BF16_STORAGE_SPEC = "filtered_adam(mu_dtype='bfloat16', nu_dtype='bfloat16')"

# Every optimizer compared on the network tasks (full suite).
NET_SPECS = (
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adabelief",
    "adopt",
    "adam+clip(1.0)",
    "filtered_adam",  # defaults = "spike only" (eta=1, gamma=10)
    "filtered_adam(eta=0.5, gamma=inf)",  # smoothing only
    "filtered_adam(eta=0.9)",  # the eta = 0.9 ablation (smoothing + spike clip)
    "adam(b1=0.8)",  # Adam with other b1: the baseline for smoothing claims
    "adam(b1=0.95)",
    "muon",  # fo.muon: hidden matrices -> Muon, the rest -> AdamW
    "optax_muon",  # optax.contrib.muon with its defaults
    BF16_STORAGE_SPEC,
)

# Muon is defined for matrices only, so it is left out of the (vector) quadratic family.
QUAD_SPECS = (
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adabelief",
    "adopt",
    "adam+clip(1.0)",
    "filtered_adam",
    "filtered_adam(eta=0.5, gamma=inf)",
    "filtered_adam(eta=0.9)",
    "filtered_adam(gamma=inf)",  # must equal Adam exactly (sanity check)
    "adam(b1=0.5)",
    "adam(b1=0.8)",
    "adam(b1=0.95)",
    "adam(b1=0.98)",
    "adam(b1=0.99)",
    "staged(filter='spam', threshold=5000.0)",
    "staged(filter='zscore')",
    "staged(filter='soft_clip')",
)

# Specs whose LR window is pushed upward until the loss leaves the 10 % band (stability claim).
PROBE_UPPER = ("adam", "filtered_adam", "adam+clip(1.0)")

# Centre exponent k (lr = 2**k) per task and LR family.
# Family "adam" covers every Adam-like optimizer and fo.muon (Moonshot scaling: AdamW's LR);
# "muon" is optax.contrib.muon (Keller-style LR ~0.02); "sgd" is SGD with momentum 0.9, whose
# effective step is ~10x its LR. Set from pilot and quick-suite runs.
LR_CENTRES: dict[str, dict[str, int]] = {
    "lm": {"adam": -8, "rmsprop": -9, "sgd": -4, "muon": -6},
    "mnist1d_mlp": {"adam": -8, "rmsprop": -9, "sgd": -4, "muon": -6},
    "mnist1d_cnn": {"adam": -8, "rmsprop": -9, "sgd": -4, "muon": -6},
    "fashion_mlp": {"adam": -9, "rmsprop": -10, "sgd": -6, "muon": -6},
}


@dataclass(frozen=True)
class NetPlan:
    """One network task in a suite (``kwargs`` go to its builder in :mod:`benchmarks.tasks`)."""

    task: str
    kwargs: dict[str, Any]
    spike_step: int | None = None  # also run a corrupt-batch injection at this step
    specs: tuple[str, ...] | None = None  # subset of the suite's net_specs (None = all)


@dataclass(frozen=True)
class Suite:
    """Everything that defines a suite's runs."""

    name: str
    nets: tuple[NetPlan, ...]
    net_specs: tuple[str, ...]
    seeds: int
    window: int
    max_extend: int
    quad_specs: tuple[str, ...]
    quad_steps: int
    quad_seeds: int
    quad_lr_exps: tuple[int, ...]
    cost_sizes: tuple[int, ...]
    cost_reps: int
    cost_lm: dict[str, Any] = field(default_factory=dict)
    stepwise: bool = False  # smoke: step-by-step execution (less compile time for few steps)
    notes: tuple[str, ...] = ()


_SMOKE_LM = dict(d=16, layers=1, heads=2, context=16, batch_size=4, steps=4, eval_every=2,
                 n_val=4, n_test=4)

SUITES: dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        nets=(
            NetPlan("lm", _SMOKE_LM, spike_step=2),
            NetPlan("mnist1d_mlp", dict(hidden=(16,), batch_size=16, steps=4, eval_every=2),
                    spike_step=2),
            NetPlan("mnist1d_cnn", dict(channels=4, hidden=8, batch_size=16, steps=4,
                                        eval_every=2)),
            NetPlan("fashion_mlp", dict(hidden=(16,), batch_size=16, steps=4, eval_every=2,
                                        n_val=64)),
        ),
        net_specs=NET_SPECS,
        seeds=2,
        window=1,
        max_extend=0,
        quad_specs=QUAD_SPECS,
        quad_steps=40,
        quad_seeds=3,
        quad_lr_exps=(-6, -4),
        cost_sizes=(10_000,),
        cost_reps=2,
        cost_lm={},  # the train-step overhead needs 4 more compiles; quick/full measure it
        stepwise=True,
        notes=("smoke size: a few steps of everything, to check that outputs parse; "
               "its numbers mean nothing",),
    ),
    "quick": Suite(
        name="quick",
        nets=(
            NetPlan("lm", dict(d=48, layers=2, heads=4, context=64, batch_size=8, steps=150,
                               eval_every=25, n_val=32, n_test=64, target=2.75), spike_step=75,
                    specs=("sgd", "adam", "adam+clip(1.0)", "filtered_adam", "muon")),
            NetPlan("mnist1d_mlp", dict(steps=400, eval_every=50, target=0.6), spike_step=200),
            NetPlan("mnist1d_cnn", dict(steps=300, eval_every=50, target=0.75),
                    specs=("sgd", "adam", "filtered_adam")),
            NetPlan("fashion_mlp", dict(hidden=(128,), steps=200, eval_every=50, n_val=1000,
                                        target=0.8),
                    specs=("sgd", "adam", "filtered_adam", "muon")),
        ),
        net_specs=(
            "sgd",
            "adam",
            "adam+clip(1.0)",
            "filtered_adam",
            "filtered_adam(eta=0.5, gamma=inf)",
            "muon",
        ),
        seeds=3,
        window=3,
        max_extend=1,
        quad_specs=(
            "sgd",
            "adam",
            "adam(b1=0.8)",
            "adam(b1=0.95)",
            "adam(b1=0.98)",
            "adam+clip(1.0)",
            "filtered_adam",
            "filtered_adam(eta=0.5, gamma=inf)",
            "filtered_adam(eta=0.9)",
        ),
        quad_steps=400,
        quad_seeds=20,
        quad_lr_exps=tuple(range(-10, 1)),
        cost_sizes=(1_000_000,),
        cost_reps=5,
        cost_lm=dict(d=64, layers=2, heads=4, context=64, batch_size=16),
        notes=("quick size: a subset of optimizers (fewer still on the CNN and Fashion-MNIST), "
               "small models and few steps, 3-point LR windows extended by at most one point "
               "per side; see the full suite for every optimizer",),
    ),
    "full": Suite(
        name="full",
        nets=(
            NetPlan("lm", dict(d=48, layers=2, heads=4, context=64, batch_size=8, steps=200,
                               eval_every=25, n_val=48, n_test=96, target=2.55), spike_step=100),
            NetPlan("mnist1d_mlp", dict(steps=600, eval_every=50, target=0.63), spike_step=300),
            NetPlan("mnist1d_cnn", dict(steps=400, eval_every=50, target=0.8)),
            NetPlan("fashion_mlp", dict(hidden=(128,), steps=300, eval_every=50, n_val=1000,
                                        target=0.84)),
        ),
        net_specs=NET_SPECS,
        seeds=3,
        window=4,
        max_extend=2,
        quad_specs=QUAD_SPECS,
        quad_steps=1000,
        quad_seeds=20,
        quad_lr_exps=tuple(range(-12, 2)),
        cost_sizes=(1_000_000, 10_000_000, 50_000_000),
        cost_reps=5,
        cost_lm=dict(d=128, layers=2, heads=4, context=128, batch_size=16),
        notes=("full size on 2 CPU cores: the LM uses d=48, context 64, batch 8 and 200 steps "
               "(the task's default is d=128, context 128) to fit the time budget — fewer "
               "steps and a smaller model rather than fewer seeds; the cost benchmark's "
               "train-step overhead uses the d=128, context 128 model",
               "LR windows: 4 points of the ×2 lattice centred where the quick suite and pilot "
               "runs put each optimizer family's best rate (benchmarks/suites.py, LR_CENTRES), "
               "extended by up to 2 points per side while the best is on an edge; Adam, "
               "filtered_adam and Adam+clip are also pushed upward until the loss leaves the "
               "10 % band (stability claim)"),
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
