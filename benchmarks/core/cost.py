"""Cost benchmark: optimizer-step time, state bytes and achieved memory bandwidth of
``filtered_adam`` and ``fo.muon`` against ``optax.adam`` and ``optax.contrib.muon``, plus the
train-step overhead on the character LM.

Method: every step function is jitted with ``donate_argnums`` for parameters and optimizer
state and returns fresh buffers for both (the gradient is the only non-donated input and is never
returned). Optimizers are timed *interleaved* (one step of each in turn, repeated), after a
warm-up step, and summarised by median and [min, max]. A memory-bound reference op with Adam's
data flow — read p, g, m, v; write p, m, v — gives the machine's attainable GB/s in the same run,
so "achieved GB/s" and all ratios compare numbers measured side by side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.core import specs as specs_lib
from benchmarks.core.models import CharLM, nnx_functional

COST_SPECS = ("adam", "filtered_adam", "muon", "optax_muon")
# Nominal bytes moved per parameter per step (float32): Adam family reads p, g, m, v and writes
# p, m, v (7 arrays); Muon keeps one momentum buffer: reads p, g, m, writes p, m (5 arrays).
BYTES_PER_PARAM = {"adam": 28, "filtered_adam": 28, "muon": 20, "optax_muon": 20, "ref_op": 28}


def make_params(n: int) -> dict[str, Any]:
    """A dict of hidden-layer-like matrices with about ``n`` float32 parameters in total."""
    if n >= 1_000_000:
        shapes = [(250, 4000)] * (n // 1_000_000)  # 1e6 parameters per matrix
    else:
        r = max(2, int(math.isqrt(n)))
        shapes = [(r, r)]
    keys = jax.random.split(jax.random.key(0), len(shapes))
    return {
        "blocks": {
            str(i): {"fc": {"kernel": 0.02 * jax.random.normal(k, s)}}
            for i, (k, s) in enumerate(zip(keys, shapes, strict=True))
        }
    }


def tree_bytes(tree: Any) -> int:
    """Total bytes of the array leaves of ``tree``."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "size")))


def opt_step(opt: optax.GradientTransformation) -> Callable:
    """Jitted (params, state, grads) → (params', state') with params and state donated."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _ref_op_leaf(p, m, v, g):
    """Fused memory-bound op with Adam's data flow (4 reads, 3 writes per element)."""
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g
    return p - 1e-3 * (m2 + v2), m2, v2


def _ref_op_tree(p, m, v, g):
    """The reference op over whole trees, as ONE jitted call (like an optimizer step)."""
    out = jax.tree.map(_ref_op_leaf, p, m, v, g)
    pick = [
        jax.tree.map(lambda t, i=i: t[i], out, is_leaf=lambda x: isinstance(x, tuple))
        for i in range(3)
    ]
    return tuple(pick)


ref_op = jax.jit(_ref_op_tree, donate_argnums=(0, 1, 2))


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def summary(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of times in seconds."""
    return {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "max_s": float(np.max(times)),
    }


def advance(r: dict[str, Any]) -> Any:
    """One step of a runner ``{"step", "params", "state", "batch"}``: params and state are
    replaced by the step's fresh (donated-into) buffers; returns the new params."""
    r["params"], r["state"] = r["step"](r["params"], r["state"], r["batch"])
    return r["params"]


def interleave(calls: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Times each call once per round, in turn, for ``reps`` rounds after one warm-up round.

    Interleaving spreads the machine's load changes evenly over all contenders, so ratios of
    medians compare like with like even on a shared machine.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(reps + 1):  # rep 0 = compile + warm-up, not recorded
        for name, fn in calls.items():
            dt = _time(fn)
            if rep:
                times[name].append(dt)
    return times


def bench_opt_steps(
    n: int, reps: int, spec_texts: tuple[str, ...] = COST_SPECS, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Interleaved optimizer-step timings at about ``n`` parameters (see module docstring)."""
    params0 = make_params(n)
    n_real = int(sum(x.size for x in jax.tree.leaves(params0)))
    grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params0)
    runners: dict[str, dict[str, Any]] = {}
    for text in spec_texts:
        spec = specs_lib.parse_spec(text)
        why = specs_lib.check_available(spec)
        if why:
            log(f"SKIP cost {text}: {why}")
            continue
        opt = specs_lib.build(spec, 1e-3, stats=False)
        params = jax.tree.map(jnp.copy, params0)
        runners[text] = {
            "step": opt_step(opt),
            "params": params,
            "state": opt.init(params),
            "batch": grads,
        }
    p, m, v = (jax.tree.map(jnp.copy, params0) for _ in range(3))
    ref = {"p": p, "m": m, "v": v}
    del params0

    def run_ref():
        ref["p"], ref["m"], ref["v"] = ref_op(ref["p"], ref["m"], ref["v"], grads)
        return ref["p"]

    times = interleave(
        {**{t: (lambda r=r: advance(r)) for t, r in runners.items()}, "ref_op": run_ref}, reps
    )
    out = []
    for text, r in [*runners.items(), ("ref_op", ref)]:
        r["times"] = times[text]
        s = summary(r["times"])
        b = BYTES_PER_PARAM.get(text.split("(")[0], 28) * n_real
        out.append(
            {
                "what": "opt_step",
                "spec": text,
                "n_params": n_real,
                "reps": reps,
                "times_s": r["times"],
                **s,
                "state_bytes": None if text == "ref_op" else tree_bytes(r["state"]),
                "param_bytes": 4 * n_real,
                "nominal_bytes": b,
                "gbps": b / s["median_s"] / 1e9,
            }
        )
    return out


def bench_train_step(
    lm_kwargs: dict[str, Any],
    reps: int,
    spec_texts: tuple[str, ...] = COST_SPECS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Interleaved full train-step (forward, backward, update) timings on the char LM."""
    vocab, ctx, bs = 65, lm_kwargs["context"], lm_kwargs["batch_size"]
    init, apply = nnx_functional(
        lambda r: CharLM(vocab, lm_kwargs["d"], lm_kwargs["layers"], lm_kwargs["heads"], ctx, r)
    )
    tokens = jax.random.randint(jax.random.key(1), (bs, ctx + 1), 0, vocab)
    n_params = int(sum(x.size for x in jax.tree.leaves(init(jax.random.key(0)))))

    def loss(params, tok):
        logits = apply(params, tok[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()

    runners = {}
    for text in spec_texts:
        spec = specs_lib.parse_spec(text)
        why = specs_lib.check_available(spec)
        if why:
            log(f"SKIP train-step cost {text}: {why}")
            continue
        opt = specs_lib.build(spec, 1e-3, stats=False)

        def step(params, state, tok, opt=opt):
            grads = jax.grad(loss)(params, tok)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params = init(jax.random.key(0))
        runners[text] = {
            "step": jax.jit(step, donate_argnums=(0, 1)),
            "params": params,
            "state": opt.init(params),
            "batch": tokens,
        }

    times = interleave({t: (lambda r=r: advance(r)) for t, r in runners.items()}, reps)
    for t, r in runners.items():
        r["times"] = times[t]
    return [
        {
            "what": "train_step",
            "spec": t,
            "n_params": n_params,
            "reps": reps,
            "times_s": r["times"],
            **summary(r["times"]),
            "state_bytes": tree_bytes(r["state"]),
            "lm": dict(lm_kwargs),
        }
        for t, r in runners.items()
    ]
