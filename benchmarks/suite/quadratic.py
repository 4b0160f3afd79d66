"""The noisy-quadratic family, fully jitted: ``lax.scan`` over steps, vmapped over
learning rates × noise variants × seeds, so one compile per optimizer spec covers everything.

Loss ``f(x) = ½ Σ_i h_i (x_i − x*_i)²`` with curvatures ``h`` log-spaced in [1e-2, 1]. The
stochastic gradient is ``h ⊙ (x − x*) + σ √h ⊙ z`` (noise covariance ∝ H, as in the noisy
quadratic model), and each variant perturbs it differently (all variant knobs are numbers, so
variants are a vmapped axis, not separate programs):

* ``gauss`` – z ~ N(0, 1);  ``student_t3`` – z ~ t(3)/√3 (unit variance, heavy tails);
* ``coord_spikes`` – each coordinate independently, with probability 2e-4 per step, gets an
  extra ±1e3·σ√h spike;
* ``global_spikes`` – with probability 1e-2 per step the whole gradient is multiplied by 1e3;
* ``sparse`` – half of the coordinates are rare features present in 2 % of the steps (the
  gradient is zero there otherwise);
* ``jump`` – the optimum jumps by a N(0, 3²) vector at mid-run; we measure the lag to recover;
* ``sweep/<kind>/<pattern>/<magnitude>`` – the Gaussian variant plus an injected spike from
  mid-run on (:mod:`benchmarks.suite.train`'s patterns: once, every 50 steps, a burst of 5; kinds:
  the whole gradient × M, or one coordinate + M × the gradient's RMS).

Seeds are paired: seed ``s`` fixes x*, the jump direction and the whole noise stream for every
optimizer and learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.core import records
from benchmarks.core import specs as specs_lib
from benchmarks.suite.train import KINDS, PATTERNS, inject, injected, max_sqrt_nu

DIM = 64
SPIKE = 1e3  # spike magnitude (coordinate spikes: in noise units; global: gradient multiplier)
JUMP = 3.0  # standard deviation of the optimum's jump


@dataclass(frozen=True)
class QuadVariant:
    """Numeric knobs of one noise variant (see module docstring)."""

    sigma: float = 1.0
    heavy: float = 0.0
    p_coord: float = 0.0
    p_global: float = 0.0
    rare_frac: float = 0.0
    rare_p: float = 1.0
    jump: float = 0.0
    inj_magnitude: float = 1.0
    inj_pattern: float = 0.0  # train.PATTERNS code (0 = none)
    inj_kind: float = 0.0  # train.KINDS code
    inj_at: float = 0.5  # first injected step, as a fraction of the run


VARIANTS: dict[str, QuadVariant] = {
    "gauss": QuadVariant(),
    "student_t3": QuadVariant(heavy=1.0),
    "coord_spikes": QuadVariant(p_coord=2e-4),
    "global_spikes": QuadVariant(p_global=1e-2),
    "sparse": QuadVariant(rare_frac=0.5, rare_p=0.02),
    "jump": QuadVariant(jump=JUMP),
}


def curvatures() -> jax.Array:
    """Fixed diagonal Hessian, log-spaced in [1e-2, 1]."""
    return jnp.logspace(-2.0, 0.0, DIM)


def _gradient(
    x: jax.Array, t: jax.Array, v: dict, seed: jax.Array, steps: int
) -> tuple[jax.Array, jax.Array]:
    """(stochastic gradient at ``x`` on step ``t``, current optimum) for one variant and seed."""
    h = curvatures()
    k_star, k_jump, k_noise = jax.random.split(jax.random.key(seed), 3)
    x_star = jax.random.normal(k_star, (DIM,))
    jump_dir = jax.random.normal(k_jump, (DIM,))
    rare = (jnp.arange(DIM) < v["rare_frac"] * DIM).astype(jnp.float32)
    target = x_star + jnp.where(t >= steps // 2, v["jump"], 0.0) * jump_dir
    kn, kt, kc, ks, kg, kr = jax.random.split(jax.random.fold_in(k_noise, t), 6)
    z = jnp.where(
        v["heavy"] > 0, jax.random.t(kt, 3.0, (DIM,)) / jnp.sqrt(3.0), jax.random.normal(kn, (DIM,))
    )
    coord = jax.random.bernoulli(kc, v["p_coord"], (DIM,))
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (DIM,)), 1.0, -1.0)
    z = z + coord * sign * SPIKE
    g = h * (x - target) + v["sigma"] * jnp.sqrt(h) * z
    g = g * jnp.where(jax.random.bernoulli(kg, v["p_global"]), SPIKE, 1.0)
    present = jnp.where(rare > 0, jax.random.bernoulli(kr, v["rare_p"], (DIM,)), True)
    inj = {
        "magnitude": v["inj_magnitude"],
        "pattern": v["inj_pattern"],
        "kind": v["inj_kind"],
        "step": (v["inj_at"] * steps).astype(jnp.int32),
    }
    return inject(g * present, injected(t, inj), inj), target


def _loss(x: jax.Array, target: jax.Array) -> jax.Array:
    """Exact quadratic loss."""
    return 0.5 * jnp.sum(curvatures() * (x - target) ** 2)


def _step_records(spec: specs_lib.OptSpec, state, loss) -> dict:
    rec = {"loss": loss, "nu": max_sqrt_nu(state)}
    if spec.uses_filter:
        stats = specs_lib.filter_stats(state)
        if stats is not None:
            rec["spike_fraction"] = jnp.asarray(stats["spike_fraction"], jnp.float32)
    return rec


def _finish(recs: dict) -> dict:
    """Per-run outputs from per-step records (last axis = steps)."""
    out = {"loss": recs["loss"], "max_sqrt_nu": jnp.max(recs["nu"], axis=-1)}
    if "spike_fraction" in recs:
        out["spike_fraction"] = recs["spike_fraction"].mean(-1)
    return out


def _run_one(spec: specs_lib.OptSpec, steps: int, lr, v: dict, seed) -> dict:
    """One (lr, variant, seed) run in a scan; returns the exact loss after every step."""
    opt = specs_lib.build(spec, lr)
    x = jnp.zeros((DIM,))
    state = opt.init(x)

    def step(carry, t):
        x, state = carry
        g, target = _gradient(x, t, v, seed, steps)
        updates, state = opt.update(g, state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), _step_records(spec, state, _loss(x, target))

    _, recs = jax.lax.scan(step, (x, state), jnp.arange(steps))
    return _finish(jax.tree.map(lambda a: a.T, recs))


def _variant_params(variants: list[QuadVariant]) -> dict[str, jax.Array]:
    vs = [asdict(v) for v in variants]
    return {k: jnp.asarray([v[k] for v in vs], jnp.float32) for k in vs[0]}


def make_quad_fn(spec: specs_lib.OptSpec, steps: int) -> Callable[..., dict[str, np.ndarray]]:
    """``fn(lrs, variants, seeds) -> {name: array[L, V, S, ...]}`` (``variants``: a list of
    :class:`QuadVariant`).

    One compile per spec.
    """

    def batched(lrs, vparams, seeds):
        over_seed = jax.vmap(lambda lr, v, s: _run_one(spec, steps, lr, v, s), (None, None, 0))
        over_var = jax.vmap(over_seed, (None, 0, None))
        return jax.vmap(over_var, (0, None, None))(lrs, vparams, seeds)

    compiled = jax.jit(batched)

    def fn(lrs, variants, seeds) -> dict[str, np.ndarray]:
        vparams = _variant_params(list(variants))
        try:
            out = compiled(jnp.asarray(lrs, jnp.float32), vparams, jnp.asarray(seeds, jnp.int32))
            return jax.tree.map(np.asarray, out)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
            per_lr = [
                jax.jit(lambda v, s, lr=float(lr): batched(jnp.asarray([lr]), v, s))(
                    vparams, jnp.asarray(seeds, jnp.int32)
                )
                for lr in lrs
            ]
            return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *per_lr)

    return fn


def quad_metrics(loss: np.ndarray, jump: bool) -> dict[str, float | int | bool | None]:
    """Scalar metrics of one loss curve (exact loss after each step).

    ``final`` = mean loss over the last 10 % of steps; ``early`` = mean over steps 1–100;
    ``jump_lag`` = steps after the jump until the loss is back below pre + 10 % of the excess
    (pre = mean over the 50 steps before the jump; censored at the run's end).
    """
    steps = len(loss)
    finite = bool(np.all(np.isfinite(loss)))
    final = float(np.mean(loss[-max(1, steps // 10) :]))
    early = float(np.mean(loss[: min(100, steps)]))
    init = float(0.5 * np.sum(np.asarray(curvatures())))  # E[f(0)] for x* ~ N(0, I)
    diverged = (not finite) or final > 10.0 * init
    out: dict[str, float | int | bool | None] = {
        "final_loss": final if finite else None,
        "early_loss": early if np.isfinite(early) else None,
        "diverged": diverged,
    }
    if jump:
        j = steps // 2
        pre = float(np.mean(loss[max(0, j - 50) : j]))
        post = loss[j:]
        peak_i = int(np.nanargmax(post)) if finite else 0
        thresh = pre + 0.1 * (float(post[peak_i]) - pre)
        below = np.nonzero(post[peak_i:] <= thresh)[0]
        out["jump_lag"] = int(peak_i + below[0]) if (finite and below.size) else steps - j
    return out


def variants(sweep: tuple[dict[str, Any], ...]) -> dict[str, QuadVariant]:
    """The fixed variants plus one Gaussian variant per injection of the sweep."""
    out = dict(VARIANTS)
    for inj in sweep:
        name = f"sweep/{inj['kind']}/{inj['pattern']}/{inj['magnitude']:g}"
        out[name] = QuadVariant(
            inj_magnitude=inj["magnitude"],
            inj_pattern=float(PATTERNS[inj["pattern"]]),
            inj_kind=float(KINDS[inj["kind"]]),
        )
    return out


def to_records(
    spec: str,
    suite: Any,
    vs: dict[str, QuadVariant],
    seeds: tuple[int, ...],
    out: dict[str, np.ndarray],
    dt: float,
    cfg: list[Any],
    prov: dict[str, Any],
) -> list[dict[str, Any]]:
    """One ``quad`` record per (variant, LR) holding per-seed metrics, plus a mean curve."""
    recs = []
    n_runs = out["loss"].shape[0] * out["loss"].shape[1] * out["loss"].shape[2]
    for li, k in enumerate(suite.quad_lr_exps):
        for vi, v in enumerate(vs):
            ms = [quad_metrics(out["loss"][li, vi, si], v == "jump") for si in range(len(seeds))]
            metrics = {name: [m.get(name) for m in ms] for name in ms[0]}
            recs.append(
                records.make_record(
                    "quad",
                    suite=suite.name,
                    provenance=prov,
                    config=cfg,
                    key_parts=(spec, v, k),
                    task=f"quad/{v}",
                    spec=spec,
                    lr=2.0**k,
                    lr_exp=k,
                    seed=None,
                    seeds=list(seeds),
                    tune_seeds=list(suite.quad_tune_seeds),
                    eval_seeds=list(suite.quad_eval_seeds),
                    steps=suite.quad_steps,
                    metrics=metrics,
                    time_s=dt / n_runs,
                )
            )
    return recs
