"""Run a suite: network LR sweeps, corrupt-batch spikes, the noisy quadratics and the cost
benchmark, appending one JSON line per run to ``<out>/runs.jsonl`` and resuming from it.

A run is (task, optimizer spec, learning rate, seed, steps). Seeds of one (task, spec, lr)
share one call of a program compiled once per (task, spec); finished runs (matched by key,
which includes the data id and the task configuration) are never redone.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks import data as data_lib
from benchmarks import metrics as metrics_lib
from benchmarks import quadratic, records
from benchmarks import specs as specs_lib
from benchmarks.suites import PROBE_UPPER, NetPlan, Suite, lr_window
from benchmarks.tasks import TASK_BUILDERS, NetTask
from benchmarks.train import PROBE_AFTER, PROBE_BEFORE, make_train_fn

BAND = 1.1  # "within 10 % of the best" for LR bands and upward probing


def log(msg: str) -> None:
    """Print a progress message without breaking tqdm bars."""
    tqdm.write(msg)


def library_commit() -> str:
    """Git commit of the repository, with ``+dirty`` when ``filtered_optax/`` has local edits."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "filtered_optax"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty.strip() else "")


def env_info() -> dict[str, Any]:
    """Versions and machine facts stored with every record."""
    import flax
    import optax

    return {
        "python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
        "flax": flax.__version__, "backend": jax.default_backend(),
        "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
        "commit": library_commit(),
    }


def score(metrics: dict[str, Any], higher_better: bool) -> float:
    """Lower-is-better score for LR tuning: val loss, or 1 − val accuracy; ∞ when diverged."""
    v = metrics.get("final_val_metric")
    if metrics.get("diverged") or v is None:
        return math.inf
    return 1.0 - v if higher_better else v


def next_lr_exp(scores: dict[int, float], window: tuple[int, int], max_extend: int,
                probe_upper: bool) -> int | None:
    """Next LR exponent to run, or None when the search is done (pure, deterministic).

    Fill the initial window; then extend by one point past an edge that holds the best score
    (at most ``max_extend`` points per side); with ``probe_upper``, keep going up while the top
    rate is still within 10 % of the best.
    """
    lo, hi = window
    for k in range(lo, hi + 1):
        if k not in scores:
            return k
    ks = sorted(scores)
    finite = [k for k in ks if math.isfinite(scores[k])]
    can_down, can_up = ks[0] > lo - max_extend, ks[-1] < hi + max_extend
    if not finite:
        return ks[0] - 1 if can_down else None
    best = min(finite, key=lambda k: scores[k])
    if best == ks[0] and can_down:
        return ks[0] - 1
    if best == ks[-1] and can_up:
        return ks[-1] + 1
    top = scores[ks[-1]]
    if probe_upper and can_up and math.isfinite(top) and top <= BAND * scores[best]:
        return ks[-1] + 1
    return None


class Runner:
    """Executes a :class:`Suite` into ``out_dir`` (see module docstring)."""

    def __init__(self, suite: Suite, out_dir: Path, data_path: str | None = None,
                 mnist1d_path: str | None = None, fashion_dir: str | None = None,
                 only_tasks: tuple[str, ...] | None = None, run_cost: bool = True) -> None:
        self.suite = suite
        self.out = Path(out_dir)
        self.jsonl = self.out / "runs.jsonl"
        self.paths = {"lm": data_path, "mnist1d_mlp": mnist1d_path,
                      "mnist1d_cnn": mnist1d_path, "fashion_mlp": fashion_dir}
        self.only = only_tasks
        self.run_cost = run_cost
        self.done = records.by_key(records.load(self.jsonl))
        self.env = env_info()
        self.skipped: list[str] = []
        self.stats = {"units_run": 0, "units_skipped_done": 0}

    # ------------------------------------------------------------------ bookkeeping
    def _write(self, recs: list[dict[str, Any]]) -> None:
        records.append(self.jsonl, recs)
        for r in recs:
            self.done[r["key"]] = r

    def _skip(self, msg: str) -> None:
        if msg not in self.skipped:
            self.skipped.append(msg)
            log(f"SKIP {msg}")

    def _available(self, spec_text: str) -> specs_lib.OptSpec | None:
        spec = specs_lib.parse_spec(spec_text)
        why = specs_lib.check_available(spec)
        if why:
            self._skip(f"{spec.text}: {why}")
            return None
        return spec

    # ------------------------------------------------------------------ network tasks
    def build_task(self, plan: NetPlan) -> NetTask | None:
        """Build a task, or record why it is skipped."""
        try:
            return TASK_BUILDERS[plan.task](self.paths.get(plan.task), **plan.kwargs)
        except data_lib.DataUnavailable as e:
            self._skip(f"task {plan.task}: {e}")
            return None

    def _net_key(self, kind: str, task: NetTask, spec: str, k: int, seed: int) -> str:
        cfg = records.config_hash([task.config, task.steps, task.eval_every, task.target])
        return records.make_key(kind, self.suite.name, task.name, task.data_id, cfg, spec, k,
                                seed, task.steps)

    def _run_net_unit(self, task: NetTask, spec: specs_lib.OptSpec, fn: Callable, k: int,
                      kind: str, spike_step: int | None) -> list[dict[str, Any]]:
        seeds = list(range(self.suite.seeds))
        keys = [self._net_key(kind, task, spec.text, k, s) for s in seeds]
        if all(key in self.done for key in keys):
            self.stats["units_skipped_done"] += 1
            return [self.done[key] for key in keys]
        t0 = time.perf_counter()
        out = fn(2.0**k, np.asarray(seeds), spike_step)
        dt = time.perf_counter() - t0
        self.stats["units_run"] += 1
        recs = []
        for i, s in enumerate(seeds):
            one = {name: v[i] for name, v in out.items()}
            m = metrics_lib.net_metrics(one, task.eval_every, task.target, task.higher_better)
            curves = {"train_loss": one["train_loss"], "val_loss": one["val_loss"],
                      "val_metric": one["val_metric"]}
            if "spike_fraction" in one:
                curves["spike_fraction"] = one["spike_fraction"]
                curves["mean_gain"] = one["mean_gain"]
            if "max_sqrt_nu" in one and np.isfinite(one["max_sqrt_nu"]).any():
                m["final_max_sqrt_nu"] = float(one["max_sqrt_nu"][-1])
            rec = {
                "schema": records.SCHEMA, "kind": kind, "key": keys[i], "suite": self.suite.name,
                "task": task.name, "data_id": task.data_id, "task_config": task.config,
                "spec": spec.text, "lr": 2.0**k, "lr_exp": k, "seed": s, "steps": task.steps,
                "eval_every": task.eval_every, "metric": task.metric,
                "higher_better": task.higher_better, "target": task.target,
                "n_params": task.n_params, "metrics": m, "curves": curves,
                "time_s": dt / len(seeds), "compile_mode":
                    "static_lr" if fn.mode["static"] else "traced_lr",  # type: ignore[attr-defined]
                "env": self.env,
            }
            if spike_step is not None:
                rec["spike_step"] = spike_step
                rec["metrics"].update(metrics_lib.spike_metrics(
                    one["probe_loss"], one["max_sqrt_nu"], spike_step,
                    min(PROBE_AFTER, task.steps - spike_step)))
                lo = max(0, spike_step - PROBE_BEFORE)
                hi = min(task.steps, spike_step + PROBE_AFTER)
                rec["curves"]["probe_loss"] = one["probe_loss"][lo:hi]
                rec["curves"]["max_sqrt_nu"] = one["max_sqrt_nu"][lo:hi]
                rec["curves"]["window_start"] = lo
            recs.append(rec)
        self._write(recs)
        return recs

    def sweep(self, task: NetTask, spec: specs_lib.OptSpec, fn: Callable,
              bar: tqdm) -> dict[int, float]:
        """Adaptive LR search for one (task, spec); returns {lr exponent: mean score}."""
        window = lr_window(task.name, spec.family, self.suite.window)
        scores: dict[int, float] = {}
        while (k := next_lr_exp(scores, window, self.suite.max_extend,
                                spec.text in PROBE_UPPER)) is not None:
            if k not in range(window[0], window[1] + 1):
                bar.total += 1
            bar.set_postfix_str(f"{task.name} {spec.text} lr=2^{k}")
            recs = self._run_net_unit(task, spec, fn, k, "net", None)
            scores[k] = float(np.mean([score(r["metrics"], task.higher_better) for r in recs]))
            bar.update(1)
        return scores

    def run_nets(self) -> None:
        """LR sweeps on every network task, then corrupt-batch runs at each tuned LR."""
        plans = [p for p in self.suite.nets if not self.only or p.task in self.only]
        all_specs = [s for s in (self._available(t) for t in self.suite.net_specs) if s]

        def plan_specs(plan: NetPlan) -> list[specs_lib.OptSpec]:
            if plan.specs is None:
                return all_specs
            wanted = {specs_lib.parse_spec(t).text for t in plan.specs}
            return [s for s in all_specs if s.text in wanted]

        n_units = sum(len(plan_specs(p)) * (self.suite.window + (p.spike_step is not None))
                      for p in plans)
        with tqdm(total=n_units, desc="networks", unit="lr", dynamic_ncols=True) as bar:
            for plan in plans:
                specs = plan_specs(plan)
                task = self.build_task(plan)
                if task is None:
                    bar.total -= len(specs) * (self.suite.window + (plan.spike_step is not None))
                    continue
                log(f"task {task.name}: {task.n_params} params, data {task.data_id}, "
                    f"{task.steps} steps × {self.suite.seeds} seeds")
                best: dict[str, int] = {}
                fns: dict[str, Callable] = {}
                for spec in specs:
                    t0 = time.perf_counter()
                    fns[spec.text] = make_train_fn(task, spec, self.suite.stepwise)
                    scores = self.sweep(task, spec, fns[spec.text], bar)
                    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
                    best[spec.text] = min(finite, key=finite.get) if finite else min(scores)
                    log(f"  {task.name:12s} {spec.text:36s} best lr=2^{best[spec.text]} "
                        f"score={scores[best[spec.text]]:.4g} ({time.perf_counter() - t0:.0f}s)")
                if plan.spike_step is not None:
                    for spec in specs:
                        bar.set_postfix_str(f"{task.name} spike {spec.text}")
                        self._run_net_unit(task, spec, fns[spec.text], best[spec.text],
                                           "spike", plan.spike_step)
                        bar.update(1)

    # ------------------------------------------------------------------ quadratics
    def run_quads(self) -> None:
        """Every quadratic variant × LR × seed for each spec, one compile per spec."""
        if self.only and "quad" not in self.only:
            return
        s = self.suite
        names = list(quadratic.VARIANTS)
        seeds = list(range(s.quad_seeds))
        specs = [sp for sp in (self._available(t) for t in s.quad_specs) if sp]
        with tqdm(total=len(specs), desc="quadratics", unit="spec", dynamic_ncols=True) as bar:
            for spec in specs:
                bar.set_postfix_str(spec.text)
                keys = {(v, k, sd): records.make_key("quad", s.name, f"quad/{v}", spec.text, k,
                                                     sd, s.quad_steps)
                        for v in names for k in s.quad_lr_exps for sd in seeds}
                if all(key in self.done for key in keys.values()):
                    self.stats["units_skipped_done"] += 1
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                fn = quadratic.make_quad_fn(spec, s.quad_steps, s.stepwise)
                lrs = [2.0**k for k in s.quad_lr_exps]
                out = fn(lrs, names, seeds)
                dt = time.perf_counter() - t0
                self.stats["units_run"] += 1
                self._write(self._quad_records(spec, names, seeds, out, keys, dt))
                bar.update(1)

    def _quad_records(self, spec: specs_lib.OptSpec, names: list[str], seeds: list[int],
                      out: dict[str, np.ndarray], keys: dict, dt: float) -> list[dict[str, Any]]:
        s = self.suite
        recs: list[dict[str, Any]] = []
        n_runs = len(s.quad_lr_exps) * len(names) * len(seeds)
        for li, k in enumerate(s.quad_lr_exps):
            for vi, v in enumerate(names):
                for si, sd in enumerate(seeds):
                    m = quadratic.quad_metrics(out["loss"][li, vi, si], v == "jump")
                    m["max_sqrt_nu"] = float(out["max_sqrt_nu"][li, vi, si])
                    if "spike_fraction" in out:
                        m["mean_spike_fraction"] = float(out["spike_fraction"][li, vi, si])
                    recs.append({
                        "schema": records.SCHEMA, "kind": "quad", "key": keys[(v, k, sd)],
                        "suite": s.name, "task": f"quad/{v}", "data_id": "synthetic",
                        "spec": spec.text, "lr": 2.0**k, "lr_exp": k, "seed": sd,
                        "steps": s.quad_steps, "metrics": m, "time_s": dt / n_runs,
                    })
        # One aggregate curve per (variant, spec) at its best LR, for plots.
        idx = np.unique(np.linspace(0, s.quad_steps - 1, 120).astype(int))
        for vi, v in enumerate(names):
            finals = np.array([[r["metrics"]["final_loss"] or np.inf for r in recs
                                if r["task"] == f"quad/{v}" and r["lr_exp"] == k]
                               for k in s.quad_lr_exps])
            li = int(np.argmin(np.mean(np.log10(finals), axis=1)))
            logs = np.log10(np.maximum(out["loss"][li, vi][:, idx], 1e-30))
            recs.append({
                "schema": records.SCHEMA, "kind": "quad_curve", "suite": s.name,
                "key": records.make_key("quad_curve", s.name, f"quad/{v}", spec.text,
                                        s.quad_steps, len(seeds)),
                "task": f"quad/{v}", "spec": spec.text, "lr": 2.0 ** s.quad_lr_exps[li],
                "lr_exp": s.quad_lr_exps[li], "steps": s.quad_steps, "step": idx,
                "log10_loss_mean": logs.mean(0), "log10_loss_p10": np.percentile(logs, 10, 0),
                "log10_loss_p90": np.percentile(logs, 90, 0),
            })
        return recs

    # ------------------------------------------------------------------ everything
    def run(self) -> dict[str, Any]:
        """Run every phase of the suite; returns timing and skip information."""
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        for name, fn in (("networks", self.run_nets), ("quadratics", self.run_quads)):
            t = time.perf_counter()
            fn()
            phases[name] = time.perf_counter() - t
        if self.run_cost and (not self.only or "cost" in self.only):
            from benchmarks import cost

            t = time.perf_counter()
            cost.run_cost(self.suite, self.jsonl, self.done, self.env, self._write)
            phases["cost"] = time.perf_counter() - t
        return {"phases": phases, "total_s": time.perf_counter() - t0, "skipped": self.skipped,
                **self.stats}
