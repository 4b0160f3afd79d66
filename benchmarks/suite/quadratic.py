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
* ``jump`` – the optimum jumps by a N(0, 3²) vector at mid-run; we measure the lag to recover.

Seeds are paired: seed ``s`` fixes x*, the jump direction and the whole noise stream for every
optimizer and learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import specs as specs_lib
from benchmarks.train import max_sqrt_nu

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


def _gradient(x: jax.Array, t: jax.Array, v: dict, seed: jax.Array,
              steps: int) -> tuple[jax.Array, jax.Array]:
    """(stochastic gradient at ``x`` on step ``t``, current optimum) for one variant and seed."""
    h = curvatures()
    k_star, k_jump, k_noise = jax.random.split(jax.random.key(seed), 3)
    x_star = jax.random.normal(k_star, (DIM,))
    jump_dir = jax.random.normal(k_jump, (DIM,))
    rare = (jnp.arange(DIM) < v["rare_frac"] * DIM).astype(jnp.float32)
    target = x_star + jnp.where(t >= steps // 2, v["jump"], 0.0) * jump_dir
    kn, kt, kc, ks, kg, kr = jax.random.split(jax.random.fold_in(k_noise, t), 6)
    z = jnp.where(v["heavy"] > 0, jax.random.t(kt, 3.0, (DIM,)) / jnp.sqrt(3.0),
                  jax.random.normal(kn, (DIM,)))
    coord = jax.random.bernoulli(kc, v["p_coord"], (DIM,))
    sign = jnp.where(jax.random.bernoulli(ks, 0.5, (DIM,)), 1.0, -1.0)
    z = z + coord * sign * SPIKE
    g = h * (x - target) + v["sigma"] * jnp.sqrt(h) * z
    g = g * jnp.where(jax.random.bernoulli(kg, v["p_global"]), SPIKE, 1.0)
    present = jnp.where(rare > 0, jax.random.bernoulli(kr, v["rare_p"], (DIM,)), True)
    return g * present, target


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


def _variant_params(variant_names: list[str]) -> dict[str, jax.Array]:
    vs = [asdict(VARIANTS[n]) for n in variant_names]
    return {k: jnp.asarray([v[k] for v in vs], jnp.float32) for k in vs[0]}


def make_quad_fn(spec: specs_lib.OptSpec, steps: int,
                 stepwise: bool = False) -> Callable[..., dict[str, np.ndarray]]:
    """``fn(lrs, variant_names, seeds) -> {name: array[L, V, S, ...]}``.

    Fused: one compile per spec. Stepwise: the noisy gradient is compiled once for all specs
    and only the optimizer update per spec (for short smoke runs).
    """
    if stepwise:
        return _make_stepwise(spec, steps)

    def batched(lrs, vparams, seeds):
        over_seed = jax.vmap(lambda lr, v, s: _run_one(spec, steps, lr, v, s), (None, None, 0))
        over_var = jax.vmap(over_seed, (None, 0, None))
        return jax.vmap(over_var, (0, None, None))(lrs, vparams, seeds)

    compiled = jax.jit(batched)

    def fn(lrs, variant_names, seeds) -> dict[str, np.ndarray]:
        vparams = _variant_params(variant_names)
        try:
            out = compiled(jnp.asarray(lrs, jnp.float32), vparams, jnp.asarray(seeds, jnp.int32))
            return jax.tree.map(np.asarray, out)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError):
            per_lr = [
                jax.jit(lambda v, s, lr=float(lr): batched(jnp.asarray([lr]), v, s))(
                    vparams, jnp.asarray(seeds, jnp.int32))
                for lr in lrs
            ]
            return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *per_lr)

    return fn


_GRAD: dict[int, Callable] = {}


def _make_stepwise(spec: specs_lib.OptSpec, steps: int) -> Callable[..., dict[str, np.ndarray]]:
    """Stepwise quadratic runs over a flattened (lr, variant, seed) batch."""
    if steps not in _GRAD:
        _GRAD[steps] = jax.jit(jax.vmap(lambda x, t, v, s: _gradient(x, t, v, s, steps),
                                        (0, None, 0, 0)))
    grad = _GRAD[steps]

    def init(x, lr):
        return specs_lib.build(spec, lr).init(x)

    def update(g, state, x, lr, target):
        updates, state = specs_lib.build(spec, lr).update(g, state, x)
        x = optax.apply_updates(x, updates)
        return x, state, _step_records(spec, state, _loss(x, target))

    opt_init = jax.vmap(init)  # eager: see train.make_stepwise_fn
    opt_update = jax.jit(jax.vmap(update))

    def fn(lrs, variant_names, seeds) -> dict[str, np.ndarray]:
        n_l, n_v, n_s = len(lrs), len(variant_names), len(seeds)
        vp = _variant_params(variant_names)
        lr_b = jnp.repeat(jnp.asarray(lrs, jnp.float32), n_v * n_s)
        v_b = {k: jnp.tile(jnp.repeat(a, n_s), n_l) for k, a in vp.items()}
        s_b = jnp.tile(jnp.asarray(seeds, jnp.int32), n_l * n_v)
        x = jnp.zeros((lr_b.shape[0], DIM))
        state = opt_init(x, lr_b)
        recs: dict[str, list] = {}
        for t in range(steps):
            g, target = grad(x, jnp.int32(t), v_b, s_b)
            x, state, rec = opt_update(g, state, x, lr_b, target)
            for k, v in rec.items():
                recs.setdefault(k, []).append(np.asarray(v))
        out = _finish({k: np.stack(v, axis=-1) for k, v in recs.items()})
        return {k: np.asarray(v).reshape(n_l, n_v, n_s, *np.shape(v)[1:])
                for k, v in out.items()}

    return fn


def quad_metrics(loss: np.ndarray, jump: bool) -> dict[str, float | int | bool | None]:
    """Scalar metrics of one loss curve (exact loss after each step).

    ``final`` = mean loss over the last 10 % of steps; ``early`` = mean over steps 1–100;
    ``jump_lag`` = steps after the jump until the loss is back below pre + 10 % of the excess
    (pre = mean over the 50 steps before the jump; censored at the run's end).
    """
    steps = len(loss)
    finite = bool(np.all(np.isfinite(loss)))
    final = float(np.mean(loss[-max(1, steps // 10):]))
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
        pre = float(np.mean(loss[max(0, j - 50): j]))
        post = loss[j:]
        peak_i = int(np.nanargmax(post)) if finite else 0
        thresh = pre + 0.1 * (float(post[peak_i]) - pre)
        below = np.nonzero(post[peak_i:] <= thresh)[0]
        out["jump_lag"] = int(peak_i + below[0]) if (finite and below.size) else steps - j
    return out
