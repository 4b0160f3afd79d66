"""The difficulty ladder's problems: cheap synthetic objectives, each with its pass criterion.

Every problem is pure JAX. A seed fixes the instance (optimum, rotation, noise stream) and the
starting point, so runs are paired across optimizers and learning rates. A problem exposes

* ``setup(key, knobs) -> (instance, x0)`` – the instance pytree and the initial parameters;
* ``grad(x, instance, t, key, knobs)`` – the (stochastic) gradient the optimizer sees at step t;
* ``track(x, instance, t, knobs)`` – the exact, noise-free quantity the criterion reads, after
  the update of step t (lower is better);
* a fixed ``threshold`` and ``window``: the run **passes** when the mean of ``track`` over the
  last ``window`` fraction of the steps (``window=0``: the final iterate) is finite and
  ``<= threshold``.

``knobs`` are the numbers that make a rung hard (spike probability, noise law, jump size, …).
They are traced scalars, so turning one off reuses the compiled program. Each problem names a
*witness*: a plain optimizer at a fixed learning rate that passes with the knob set to
``witness.knobs`` – evidence that the criterion is reachable and that what fails on the rung is
the difficulty the knob adds, not an impossible threshold. The witnesses and thresholds were set
from witness runs only, before any of the compared optimizers was run on the ladder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

Knobs = dict[str, Any]

# Heavy-ball SGD (momentum 0.9) for the witnesses. Spelled through fo.sgd with an explicit
# momentum: the bare "sgd" spec drops its registry default (momentum 0.9) at build time and
# would give plain SGD.
SGD_M = "fo_sgd(momentum=0.9)"


@dataclass(frozen=True)
class Witness:
    """A plain optimizer at a fixed learning rate that passes the problem with these knobs."""

    spec: str
    lr: float
    knobs: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Problem:
    """One rung of the ladder (see the module docstring for the contract)."""

    name: str
    level: int
    title: str
    hard: str  # what makes it hard, in one line
    criterion: str  # the pass criterion in words (must match threshold / window / track)
    steps: int
    threshold: float
    window: float  # fraction of the final steps averaged; 0 = the final iterate
    knobs: dict[str, float]
    setup: Callable[[jax.Array, Knobs], tuple[Any, Any]]
    grad: Callable[[Any, Any, jax.Array, jax.Array, Knobs], Any]
    track: Callable[[Any, Any, jax.Array, Knobs], jax.Array]
    witness: Witness
    matrix: bool = False  # parameters are one matrix (Muon applies)


def _orthogonal(key: jax.Array, n: int) -> jax.Array:
    """Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    return q * jnp.sign(jnp.diag(r))[None, :]


# --------------------------------------------------------------------------- 1–2: quadratics
# X is a 16 × 8 matrix; f(X) = ½‖A (X − X*)‖²_F with the singular values² of A log-spaced in
# [1/κ, 1] (κ = 10**log10_kappa). Level 1: A diagonal (axis-aligned curvature). Level 2:
# A = U diag(s) Vᵀ with Haar-random U, V (a rotated Hessian: diagonal preconditioners lose
# their edge). Deterministic gradients; X0 = 0, X* ~ N(0, 1).
QUAD_ROWS, QUAD_COLS = 16, 8


def _quad_setup(rotated: bool) -> Callable[[jax.Array, Knobs], tuple[Any, Any]]:
    def setup(key: jax.Array, knobs: Knobs) -> tuple[Any, Any]:
        ks, ku = jax.random.split(key)
        s2 = jnp.logspace(-knobs["log10_kappa"], 0.0, QUAD_ROWS)
        x_star = jax.random.normal(ks, (QUAD_ROWS, QUAD_COLS))
        if rotated:
            v = _orthogonal(ku, QUAD_ROWS)
            hess = (v * s2[None, :]) @ v.T  # AᵀA = V diag(s²) Vᵀ (U cancels)
        else:
            hess = jnp.diag(s2)
        return {"hess": hess, "x_star": x_star}, jnp.zeros((QUAD_ROWS, QUAD_COLS))

    return setup


def _quad_grad(x, inst, t, key, knobs):
    del t, key, knobs
    return inst["hess"] @ (x - inst["x_star"])


def _quad_track(x, inst, t, knobs):
    del t, knobs
    # x0 = 0, so the initial distance is ‖X*‖.
    return jnp.linalg.norm(x - inst["x_star"]) / jnp.linalg.norm(inst["x_star"])


_QUAD_CRITERION = "‖X_T − X*‖_F ≤ 1e-2 · ‖X_0 − X*‖_F at the final step T = 1000"

ILL_QUAD = Problem(
    name="ill_quad",
    level=1,
    title="ill-conditioned quadratic (κ = 1e3, axis-aligned)",
    hard="curvatures spread over 3 decades; a single step size is too big or too small",
    criterion=_QUAD_CRITERION,
    steps=1000,
    threshold=1e-2,
    window=0.0,
    knobs={"log10_kappa": 3.0},
    setup=_quad_setup(False),
    grad=_quad_grad,
    track=_quad_track,
    # Heavy ball, lr·h_min/(1−β) = 1e-2 per step: e^-10 on the flattest direction by T = 1000.
    witness=Witness(SGD_M, 1.0, note="heavy-ball SGD at lr 1 (= 1/h_max)"),
    matrix=True,
)

ROTATED_QUAD = Problem(
    name="rotated_quad",
    level=2,
    title="rotated ill-conditioned quadratic (κ = 1e3)",
    hard="same spectrum as level 1 in a random basis: per-coordinate scaling cannot align with it",
    criterion=_QUAD_CRITERION,
    steps=1000,
    threshold=1e-2,
    window=0.0,
    knobs={"log10_kappa": 3.0},
    setup=_quad_setup(True),
    grad=_quad_grad,
    track=_quad_track,
    # Heavy ball is rotation invariant: the same witness as level 1.
    witness=Witness(SGD_M, 1.0, note="heavy-ball SGD at lr 1 (rotation invariant)"),
    matrix=True,
)

# --------------------------------------------------------------------------- 3: strict saddle
# f(x, y) = Σ ½ h_i x_i² + Σ_j (ε/4)(y_j² − 1)², x ∈ R^24 with h log-spaced in [0.1, 1],
# y ∈ R^8. (0, 0) is a strict saddle (curvature −ε along every y_j); the minima are y_j = ±1,
# f = 0. Start: x0 ~ N(0, 1), y0 ~ y0_scale · N(0, 1), i.e. almost exactly on the saddle.
N_X, N_Y = 24, 8


def _saddle_setup(key, knobs):
    kx, ky = jax.random.split(key)
    x0 = jnp.concatenate(
        [jax.random.normal(kx, (N_X,)), knobs["y0_scale"] * jax.random.normal(ky, (N_Y,))]
    )
    return {"h": jnp.logspace(-1.0, 0.0, N_X)}, x0


def _saddle_loss(z, inst, knobs):
    x, y = z[:N_X], z[N_X:]
    return 0.5 * jnp.sum(inst["h"] * x**2) + knobs["eps"] / 4 * jnp.sum((y**2 - 1.0) ** 2)


def _saddle_grad(z, inst, t, key, knobs):
    del t, key
    return jax.grad(_saddle_loss)(z, inst, knobs)


def _saddle_track(z, inst, t, knobs):
    del t
    f_saddle = N_Y * knobs["eps"] / 4  # f at the saddle point (0, 0)
    return _saddle_loss(z, inst, knobs) / f_saddle


SADDLE = Problem(
    name="saddle",
    level=3,
    title="escape a strict saddle (negative curvature −1e-3)",
    hard="the escape coordinates start at ~1e-6, on a curvature (−1e-3) 100–1000× flatter "
    "than the bowl's",
    criterion="f(x_T) ≤ 1e-3 · f(saddle) at the final step T = 2000 (escaped along all 8 "
    "negative directions and settled in a minimum)",
    steps=2000,
    threshold=1e-3,
    window=0.0,
    knobs={"eps": 1e-3, "y0_scale": 1e-6},
    setup=_saddle_setup,
    grad=_saddle_grad,
    track=_saddle_track,
    # Escape rate ≈ lr·ε/(1−β) = 0.03 per step: 1e-6 → 1 in ≈ 460 steps, then the minimum
    # (curvature 2ε) is reached geometrically; lr·h_max = 3 < 2(1+β) keeps the bowl stable.
    witness=Witness(SGD_M, 3.0, note="heavy-ball SGD at lr 3"),
)

# --------------------------------------------------------------------------- 4–5: noisy quadratic
# f(x) = ½ Σ h_i (x_i − x*_i)², h log-spaced in [1e-2, 1], x* ~ N(0, 1), x0 = 0; the optimizer
# sees g = h ⊙ (x − x*) + σ √h ⊙ z (noise covariance ∝ H). Level 4: z ~ Student-t(ν = 1.5)
# (infinite variance). Level 5: z ~ N(0, 1), but with probability p per step the whole gradient
# is multiplied by 1e3 (rare global spikes, e.g. one corrupt batch).
NOISY_DIM = 32
SPIKE = 1e3  # spike multiplier


def _noisy_setup(key, knobs):
    del knobs
    return {"x_star": jax.random.normal(key, (NOISY_DIM,))}, jnp.zeros((NOISY_DIM,))


def _noisy_h():
    return jnp.logspace(-2.0, 0.0, NOISY_DIM)


def _heavy_tail_grad(x, inst, t, key, knobs):
    del t
    h = _noisy_h()
    kn, kt = jax.random.split(key)
    z = jnp.where(
        knobs["heavy"] > 0,
        jax.random.t(kt, knobs["nu"], (NOISY_DIM,)),
        jax.random.normal(kn, (NOISY_DIM,)),
    )
    return h * (x - inst["x_star"]) + knobs["sigma"] * jnp.sqrt(h) * z


def _spikes_grad(x, inst, t, key, knobs):
    # Gaussian only: Student-t sampling (a gamma draw) triples the compile time.
    del t
    h = _noisy_h()
    kn, ks = jax.random.split(key)
    z = jax.random.normal(kn, (NOISY_DIM,))
    g = h * (x - inst["x_star"]) + knobs["sigma"] * jnp.sqrt(h) * z
    return g * jnp.where(jax.random.bernoulli(ks, knobs["p_spike"]), SPIKE, 1.0)


def _noisy_track(x, inst, t, knobs):
    del t, knobs
    h = _noisy_h()
    return jnp.sum(h * (x - inst["x_star"]) ** 2) / jnp.sum(h * inst["x_star"] ** 2)


_NOISY_CRITERION = (
    "mean of f(x_t)/f(x_0) over the last 10 % of T = 2000 steps ≤ 0.01 (exact, noise-free loss)"
)
# With Gaussian noise and no spikes the witness ends near 5e-4 (worst of 16 seeds 9e-4): the
# threshold 0.01 leaves a 10× margin, so what fails on these rungs is the noise law.
_NOISY_WITNESS_NOTE = "heavy-ball SGD at lr 0.01 with Gaussian noise and no spikes"

HEAVY_TAIL = Problem(
    name="heavy_tail",
    level=4,
    title="noisy quadratic, Student-t(1.5) gradient noise",
    hard="infinite-variance noise: rare huge kicks, and √v is dominated by the outliers",
    criterion=_NOISY_CRITERION,
    steps=2000,
    threshold=0.01,
    window=0.1,
    knobs={"sigma": 0.1, "heavy": 1.0, "nu": 1.5},
    setup=_noisy_setup,
    grad=_heavy_tail_grad,
    track=_noisy_track,
    witness=Witness(SGD_M, 0.01, {"heavy": 0.0}, note=_NOISY_WITNESS_NOTE),
)

SPIKES = Problem(
    name="spikes",
    level=5,
    title="noisy quadratic with rare ×1e3 gradient spikes (p = 5e-3)",
    hard="≈ 10 spikes per run, each 1000× the gradient: one can throw x far or inflate √v",
    criterion=_NOISY_CRITERION,
    steps=2000,
    threshold=0.01,
    window=0.1,
    knobs={"sigma": 0.1, "p_spike": 5e-3},
    setup=_noisy_setup,
    grad=_spikes_grad,
    track=_noisy_track,
    witness=Witness(SGD_M, 0.01, {"p_spike": 0.0}, note=_NOISY_WITNESS_NOTE),
)

# --------------------------------------------------------------------------- 6: sparse features
# x ∈ R^32, unit curvature, x* ~ N(0, 1), x0 = 0. The first 16 coordinates are frequent
# (gradient every step); the last 16 are rare features whose gradient is present with
# probability p = 5e-3 per step (≈ 20 times in the run) and exactly zero otherwise:
# g = present ⊙ (x − x* + σ z), σ = 0.05. A rare coordinate must be learnt from a few isolated
# gradients; for Adam-like methods each one arrives after ~200 steps of zeros, when v has
# decayed, and looks like a spike. (First version: σ = 0.3, p = 2e-3, ≈ 8 occurrences – any
# estimator's error on the rare group is then ≈ σ/√8 ≈ 0.11 > the threshold, so the criterion
# was unreachable in principle; replaced before the reported run.)
SPARSE_DIM, N_RARE = 32, 16


def _sparse_setup(key, knobs):
    del knobs
    return {"x_star": jax.random.normal(key, (SPARSE_DIM,))}, jnp.zeros((SPARSE_DIM,))


def _sparse_grad(x, inst, t, key, knobs):
    del t
    kz, kp = jax.random.split(key)
    rare = jnp.arange(SPARSE_DIM) >= SPARSE_DIM - N_RARE
    present = jnp.where(rare, jax.random.bernoulli(kp, knobs["p_rare"], (SPARSE_DIM,)), True)
    g = x - inst["x_star"] + knobs["sigma"] * jax.random.normal(kz, (SPARSE_DIM,))
    return jnp.where(present, g, 0.0)


def _sparse_track(x, inst, t, knobs):
    del t, knobs
    e, s = x - inst["x_star"], inst["x_star"]
    n_f = SPARSE_DIM - N_RARE
    rel_f = jnp.linalg.norm(e[:n_f]) / jnp.linalg.norm(s[:n_f])
    rel_r = jnp.linalg.norm(e[n_f:]) / jnp.linalg.norm(s[n_f:])
    return jnp.maximum(rel_f, rel_r)


SPARSE = Problem(
    name="sparse",
    level=6,
    title="sparse gradients: 16 rare features seen with p = 5e-3",
    hard="a rare coordinate gets ≈ 20 isolated non-zero gradients in 4000 steps (zero otherwise)",
    criterion="mean over the last 10 % of T = 4000 steps of max(rel. error of the frequent "
    "coordinates, rel. error of the rare ones) ≤ 0.1, rel. error = ‖x − x*‖/‖x*‖ "
    "on the group",
    steps=4000,
    threshold=0.1,
    window=0.1,
    knobs={"sigma": 0.05, "p_rare": 5e-3},
    setup=_sparse_setup,
    grad=_sparse_grad,
    track=_sparse_track,
    # Heavy ball moves a rare coordinate by ≈ lr/(1−β) × its gradient per occurrence: at lr 0.05
    # half the error goes per occurrence. Passes 16/16 (worst seed 0.04); the information limit
    # of the rare group, σ/√20 ≈ 0.01, is far below the threshold.
    witness=Witness(SGD_M, 0.05, note="heavy-ball SGD at lr 0.05"),
)


# --------------------------------------------------------------------------- 7: plasticity
# f_t(x) = ½ Σ h_i (x_i − x*_i(t))², h log-spaced in [0.1, 1], small Gaussian noise σ = 0.01.
# x*(t) = x*_1 for t < T/2, then jumps to x*_2 = x*_1 + J · N(0, 1) with J = 10: after a long
# quiet phase (√v small) the optimizer must re-learn a far-away target.
SWITCH_DIM = 32


def _switch_setup(key, knobs):
    k1, k2 = jax.random.split(key)
    x1 = jax.random.normal(k1, (SWITCH_DIM,))
    x2 = x1 + knobs["jump"] * jax.random.normal(k2, (SWITCH_DIM,))
    return {"x1": x1, "x2": x2}, jnp.zeros((SWITCH_DIM,))


def _switch_h():
    return jnp.logspace(-1.0, 0.0, SWITCH_DIM)


def _switch_target(inst, t, knobs):
    # knobs["steps"] is the run length, added by the runner (quick runs are shorter).
    return jnp.where(t >= knobs["steps"] // 2, inst["x2"], inst["x1"])


def _switch_grad(x, inst, t, key, knobs):
    h = _switch_h()
    z = jax.random.normal(key, (SWITCH_DIM,))
    return h * (x - _switch_target(inst, t, knobs)) + knobs["sigma"] * jnp.sqrt(h) * z


def _switch_track(x, inst, t, knobs):
    h = _switch_h()
    f = jnp.sum(h * (x - _switch_target(inst, t, knobs)) ** 2)
    f_switch = jnp.sum(h * (inst["x2"] - inst["x1"]) ** 2)  # the loss at x = x*_1 after the jump
    return f / f_switch


SWITCH = Problem(
    name="switch",
    level=7,
    title="plasticity: the optimum jumps 10σ away at mid-run",
    hard="after 1000 quiet steps the new gradients are ~100× anything seen (filters see spikes)",
    criterion="mean over the last 10 % of T = 2000 steps of f(x_t)/f(x*_1) (both after the "
    "jump at t = 1000) ≤ 1e-3",
    steps=2000,
    threshold=1e-3,
    window=0.1,
    knobs={"sigma": 0.01, "jump": 10.0},
    setup=_switch_setup,
    grad=_switch_grad,
    track=_switch_track,
    witness=Witness(SGD_M, 1.0, note="heavy-ball SGD at lr 1 (its progress is scale-free)"),
)

# --------------------------------------------------------------------------- 8: exploding gradients
# Learn a recurrent matrix W (8 × 8) from its K = 16-fold product: f(W) = ½‖W^K − W*^K‖²_F with
# W* = Q diag(λ) Qᵀ, λ ~ U[0.8, 0.95]. Start W0 = c0 · I + 0.02 · G/√8 with c0 = 1.2: the gradient
# Σ_j (Wᵀ)^j R (Wᵀ)^{K−1−j} is ~1e4× larger there (median norm 1.4e4) than at the witness's start
# c0 = 0.9 (1.4) – the cliff of an RNN unrolled over K steps. Deterministic.
EXP_N, EXP_K = 8, 16


def _power(w, k):
    """W^k for a static power of two k, by repeated squaring (log2 k products: a smaller
    program than k − 1 products, and the same Jacobian)."""
    if k & (k - 1):
        raise ValueError(f"k must be a power of two, got {k}")
    while k > 1:
        w = w @ w
        k //= 2
    return w


def _exploding_setup(key, knobs):
    kq, kl, kg = jax.random.split(key, 3)
    q = _orthogonal(kq, EXP_N)
    lam = jax.random.uniform(kl, (EXP_N,), minval=0.8, maxval=0.95)
    w_star = (q * lam[None, :]) @ q.T
    w0 = knobs["c0"] * jnp.eye(EXP_N) + 0.02 * jax.random.normal(kg, (EXP_N, EXP_N)) / EXP_N**0.5
    return {"target": _power(w_star, EXP_K)}, w0


def _exploding_loss(w, inst):
    return 0.5 * jnp.sum((_power(w, EXP_K) - inst["target"]) ** 2)


def _exploding_grad(w, inst, t, key, knobs):
    del t, key, knobs
    return jax.grad(_exploding_loss)(w, inst)


def _exploding_track(w, inst, t, knobs):
    del t, knobs
    return jnp.linalg.norm(_power(w, EXP_K) - inst["target"]) / jnp.linalg.norm(inst["target"])


EXPLODING = Problem(
    name="exploding",
    level=8,
    title="exploding gradients: 16-step recurrent product W^16",
    hard="spectral radius 1.2 at the start: a gradient ~1e4× that of a start below the cliff",
    criterion="‖W_T^16 − W*^16‖_F ≤ 1e-2 · ‖W*^16‖_F at the final step T = 2000",
    steps=2000,
    threshold=1e-2,
    window=0.0,
    knobs={"c0": 1.2},
    setup=_exploding_setup,
    grad=_exploding_grad,
    track=_exploding_track,
    # Below the cliff (c0 = 0.9) the witness passes from lr 1e-3 to 2e-2; from c0 = 1.0 up
    # heavy-ball SGD fails at every one of those rates.
    witness=Witness(
        SGD_M,
        0.01,
        {"c0": 0.9},
        note="heavy-ball SGD at lr 0.01 started below the cliff (c0 = 0.9)",
    ),
    matrix=True,
)

PROBLEMS: tuple[Problem, ...] = (
    ILL_QUAD,
    ROTATED_QUAD,
    SADDLE,
    HEAVY_TAIL,
    SPIKES,
    SPARSE,
    SWITCH,
    EXPLODING,
)
BY_NAME: dict[str, Problem] = {p.name: p for p in PROBLEMS}
