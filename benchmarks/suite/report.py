"""REPORT.md, summary.json and plots from a suite's JSONL. Nothing here is typed by hand: every
number and verdict is computed from the records, and records from more than one version of the
code (or without a commit stamp) are refused (:func:`benchmarks.core.records.check_provenance`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import filtered_optax as fo  # noqa: E402
from benchmarks.core import data as data_lib  # noqa: E402
from benchmarks.core import records, stats  # noqa: E402
from benchmarks.core import specs as specs_lib  # noqa: E402
from benchmarks.core.provenance import describe_stamp  # noqa: E402
from benchmarks.core.tables import censored, lr_text, mean_sd, table  # noqa: E402
from benchmarks.suite import analysis as an  # noqa: E402
from benchmarks.suite.tasks import ngram_loss  # noqa: E402

Rec = dict[str, Any]


def data_note(task: str, data_id: str) -> str:
    """A warning when a task ran on other data than the shipped default, else ''."""
    shipped = data_lib.shipped_data_id(task)
    if shipped is None or shipped == data_id:
        return ""
    return f" (**not the shipped data** `{shipped}`: not comparable with the committed report)"


def data_lines(recs: list[Rec]) -> list[str]:
    """One line per task: the data its records ran on."""
    seen: dict[str, str] = {}
    for r in recs:
        if "data_id" in r and r["kind"] in ("tune", "eval", "spike"):
            seen.setdefault(r["task"], r["data_id"])
    return [f"- {task}: `{d}`{data_note(task, d)}" for task, d in sorted(seen.items())]


def lm_references(data_id: str) -> str:
    """Bigram and trigram test losses of the shipped text (same split as the LM)."""
    if data_id != data_lib.shipped_data_id("lm"):
        return "reference n-gram losses: computed for the shipped text only"
    t = data_lib.load_text(None)
    v = len(t.vocab)
    return (
        f"reference losses on the same test split (add-0.1 smoothing): bigram "
        f"{ngram_loss(t.train, t.test, v, 2):.3f}, trigram "
        f"{ngram_loss(t.train, t.test, v, 3):.3f} nats/char"
    )


def test_ci(rs: list[Rec]) -> tuple[float | None, list[float | None]]:
    """Mean test value over evaluation seeds and its 95 % t-interval."""
    v = np.array([x for x in (an.test_value(r) for r in rs) if x is not None], float)
    if v.size == 0:
        return None, [None, None]
    if v.size < 2:
        return float(v.mean()), [None, None]
    half = stats.t_crit(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()), [float(v.mean() - half), float(v.mean() + half)]


def net_section(
    task: str, tuned: dict[str, an.Tuned], evals: dict[str, list[Rec]], tune_seeds: list[int]
) -> str:
    """Markdown table of one network task: tuned configs and their evaluation-seed results."""
    r0 = next(iter(evals.values()))[0]
    what = "test error" if r0["higher_better"] else "test loss"
    rows = []
    for spec, t in sorted(tuned.items(), key=lambda kv: kv[1].score):
        rs = evals.get(spec, [])
        steps = (
            [
                censored(
                    float(
                        np.median(
                            [
                                s if s is not None else math.inf
                                for s in [r["metrics"]["steps_to_target"][i] for r in rs]
                            ]
                        )
                    ),
                    r0["steps"],
                )
                for i in range(len(r0["targets"]))
            ]
            if rs
            else []
        )
        rows.append(
            [
                f"`{spec}`",
                lr_text(t.lr) + (" **edge**" if t.edge else ""),
                f"{len(t.tested)}",
                f"{t.score:.4g}",
                mean_sd([an.test_value(r) for r in rs]),
                " / ".join(steps),
                f"{sum(r['metrics']['diverged'] for r in rs)}/{len(rs)}",
                f"{np.mean([r['step_time_s'] for r in rs]) * 1e3:.3g}" if rs else "—",
            ]
        )
    head = (
        f"### {task}\n\n{r0['n_params']:,} parameters, {r0['steps']} steps (warmup "
        f"{r0['warmup']} + cosine), data `{r0['data_id']}`{data_note(task, r0['data_id'])}, "
        f"config `{r0['task_config']}`. Tuning seeds {tune_seeds}; evaluation "
        f"seeds {sorted({r['seed'] for rs in evals.values() for r in rs})}. Targets (fixed "
        f"in code): {r0['metric']} {'≥' if r0['higher_better'] else '≤'} "
        f"{', '.join(f'{x:g}' for x in r0['targets'])}; steps-to-target resolution "
        f"{r0['eval_every']} steps, `> N`: not reached (censored).\n"
    )
    if task == "lm":
        head += f"\nThe LM: {lm_references(r0['data_id'])}.\n"
    return (
        head
        + "\n"
        + table(
            [
                "optimizer",
                "tuned LR",
                "LRs tried",
                "tuning score (val)",
                f"{what} (eval seeds)",
                "median steps to targets",
                "diverged",
                "ms/step",
            ],
            rows,
        )
        + "\n"
    )


def spike_section(task: str, spikes: dict[str, list[Rec]]) -> str:
    """Final validation score and recovery per injection and optimizer (evaluation seeds)."""
    by: dict[str, dict[str, list[Rec]]] = {}
    for spec, rs in spikes.items():
        for r in rs:
            by.setdefault(an.injection_name(r["injection"]), {}).setdefault(spec, []).append(r)
    specs = sorted(spikes)
    rows = []
    for name, g in sorted(by.items()):
        cells = []
        for s in specs:
            rs = g.get(s, [])
            rec = [
                r["metrics"]["recovery_steps"] if r["metrics"]["recovered"] else math.inf
                for r in rs
                if "recovered" in r["metrics"]
            ]
            cap = min(an_window(r) for r in rs) if rs else 0
            cells.append(
                f"{mean_sd([an.score(r) for r in rs], 3)}; recovery "
                f"{censored(float(np.median(rec)), cap) if rec else '—'}"
            )
        rows.append([name, *cells])
    return (
        f"### {task}\n\nFinal validation score (loss or error; mean ± sd) and median "
        f"recovery steps (probe loss back within 10 % of its pre-spike level; `> N`: not "
        f"recovered inside the window) per injection, at each optimizer's tuned "
        f"configuration.\n\n" + table(["injection", *[f"`{s}`" for s in specs]], rows) + "\n"
    )


def an_window(r: Rec) -> int:
    """Length of the recovery window of a spike record."""
    return int(min(100, r["steps"] - r["injection"]["step"]))


def quad_section(qt: dict[str, dict[str, tuple[an.Tuned, dict[int, float]]]]) -> str:
    """One row per quadratic variant: each spec's log10 final loss on the evaluation seeds."""
    specs = sorted({s for g in qt.values() for s in g})
    rows = []
    for v, g in sorted(qt.items()):
        cells = []
        for s in specs:
            if s not in g:
                cells.append("—")
                continue
            t, ev = g[s]
            cells.append(
                f"{mean_sd(list(ev.values()), 3)} @ {t.lr:.2g}" + (" **edge**" if t.edge else "")
            )
        rows.append([f"quad/{v}", *cells])
    return (
        "log10 of the mean exact loss over the last 10 % of steps (mean ± sd over the "
        "evaluation seeds) @ the constant LR chosen on the tuning seeds.\n\n"
        + table(["variant", *[f"`{s}`" for s in specs]], rows)
        + "\n"
    )


def claim_rows(cl: list[an.Claim]) -> list[dict[str, Any]]:
    """summary.json's ``claims``: one row per comparison, naming its baseline and config."""
    return [
        {
            "claim": c.claim,
            "method": k.method,
            "comparison": k.label,
            "baseline": k.baseline,
            "baseline_config": k.baseline_config,
            "verdict": k.verdict,
            "claim_verdict": c.verdict,
            "delta": None if k.delta is None else k.delta.mean,
            "ci": None if k.delta is None else [k.delta.lo, k.delta.hi],
            "p_holm": k.p_holm,
            "n": k.n,
            "censored": list(k.censored),
            "zero_variance": k.zero_variance,
            "margin": k.margin,
            "resolution": k.resolution,
        }
        for c in cl
        for k in c.comparisons
    ]


def claims_table(cl: list[an.Claim]) -> str:
    """The claims table (Markdown): one row per comparison, grouped by claim."""
    rows = [
        [
            c.claim,
            f"`{k.method}`",
            k.label,
            f"`{k.baseline_config}`",
            f"**{k.verdict}**",
            k.delta_text(),
            f"{k.p_holm:.3g}",
            f"**{c.verdict}**",
        ]
        for c in cl
        for k in c.comparisons
    ]
    rows += [
        [c.claim, f"`{c.method}`", "—", "—", "no data", "—", "—", "**no data**"]
        for c in cl
        if not c.comparisons
    ]
    return table(
        [
            "claim",
            "method",
            "comparison",
            "strongest baseline (config)",
            "verdict",
            "Δ = method − baseline [95 % CI]",
            "Holm p",
            "claim verdict",
        ],
        rows,
    )


def claims_text(cl: list[an.Claim]) -> str:
    """Plain-text claims summary for the terminal."""
    out = []
    for c in cl:
        out.append(f"[{c.verdict.upper():12s}] {c.method}: {c.claim}")
        out += [
            f"      {k.label}: {k.verdict} vs {k.baseline_config} (Δ {k.delta_text()}, "
            f"Holm p {k.p_holm:.3g})"
            for k in c.comparisons
        ]
    return "\n".join(out)


def summary(
    recs: list[Rec], prov: dict[str, Any], wall_s: float | None, cl: list[an.Claim]
) -> dict[str, Any]:
    """The machine-readable summary (see benchmarks/README.md for its fields)."""
    tuning, evals = an.net_tuning(recs), an.runs(recs, "eval")
    tasks: dict[str, Any] = {}
    for task, g in sorted(evals.items()):
        r0 = next(iter(g.values()))[0]
        best = {}
        for spec, rs in sorted(g.items()):
            mean, ci = test_ci(rs)
            t = tuning[task][spec]
            best[spec] = {
                "config": {
                    "spec": spec,
                    "lr": t.lr,
                    "warmup": r0["warmup"],
                    "schedule": "linear warmup + cosine",
                },
                "test_mean": mean,
                "test_ci": ci,
            }
        tasks[task] = {
            "params": r0["n_params"],
            "steps": r0["steps"],
            "tuning_seeds": sorted(
                {r["seed"] for r in recs if r["kind"] == "tune" and r["task"] == task}
            ),
            "eval_seeds": sorted({r["seed"] for rs in g.values() for r in rs}),
            "test_metric": "test loss" if not r0["higher_better"] else "test error",
            "best": best,
        }
    for v, gq in an.quad_tuning(recs).items():
        r0 = next(r for r in recs if r["kind"] == "quad" and r["task"] == f"quad/{v}")
        tasks[f"quad/{v}"] = {
            "params": 64,
            "steps": r0["steps"],
            "tuning_seeds": r0["tune_seeds"],
            "eval_seeds": r0["eval_seeds"],
            "test_metric": "log10 final loss",
            "best": {
                s: {
                    "config": {"spec": s, "lr": t.lr, "schedule": "constant"},
                    "test_mean": float(np.mean(list(ev.values()))),
                    "test_ci": None,
                }
                for s, (t, ev) in gq.items()
            },
        }
    return {
        "commit": prov["commit"],
        "fo_commit": prov["fo_commit"],
        "bench_commit": prov["bench_commit"],
        "dirty": prov["dirty"],
        "wall_s": wall_s,
        "tasks": tasks,
        "claims": claim_rows(cl),
    }


def plot_curves(task: str, evals: dict[str, list[Rec]], path: Path) -> None:
    """Validation metric against steps and against wall-clock seconds (mean over eval seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (spec, rs) in enumerate(sorted(evals.items())):
        vm = np.array([r["curves"]["val_metric"] for r in rs], float)
        steps = (np.arange(vm.shape[1]) + 1) * rs[0]["eval_every"]
        wall = steps * float(np.mean([r["step_time_s"] for r in rs]))
        color, ls = plt.get_cmap("tab10")(i % 10), ("-", "--", ":")[(i // 10) % 3]
        for ax, x in ((axes[0], steps), (axes[1], wall)):
            ax.plot(x, np.nanmean(vm, 0), color=color, ls=ls, lw=1.2, label=spec)
    metric = rs[0]["metric"] if evals else ""
    axes[0].set(title=f"{task}: {metric} (mean of eval seeds)", xlabel="step")
    axes[1].set(title=f"{task}: {metric} against wall-clock time", xlabel="seconds (this machine)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_optimizers(recs: list[Rec], path: Path) -> int:
    """``OPTIMIZERS.md``: the resolved pipeline of every spec in the records (``fo.describe``)."""
    texts = sorted({r["spec"] for r in recs if r["kind"] in ("tune", "eval", "spike", "quad")})
    parts = [
        "# Optimizer configurations\n",
        "Every optimizer spec in `runs.jsonl`, built by `benchmarks/core/specs.py` and "
        "printed by `fo.describe`. `learning_rate=1.0` and `optax.scale(step_size=-1.0)` "
        "stand for the tuned rate and schedule (see REPORT.md).\n",
    ]
    for text in texts:
        parts.append(f"## `{text}`\n\n```\n{fo.describe(specs_lib.build(text, 1.0))}\n```\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return len(texts)


def cost_section(recs: list[Rec]) -> str:
    """Optimizer-step and train-step timings, ratios against Adam within one interleaved run."""
    rows, by = [], {}
    for r in recs:
        if r["kind"] == "cost":
            by.setdefault((r["what"], r["n_params"]), {})[r["spec"]] = r
    for (what, n), d in sorted(by.items()):
        base = d.get("adam")
        for spec, r in sorted(d.items()):
            ratio = f"{r['median_s'] / base['median_s']:.2f}×" if base else "—"
            rows.append(
                [
                    what,
                    f"{n:,}",
                    f"`{spec}`",
                    f"{r['median_s'] * 1e3:.3g}",
                    ratio,
                    "—" if r.get("state_bytes") is None else f"{r['state_bytes']:,}",
                ]
            )
    if not rows:
        return "No cost records.\n"
    return (
        "Median of interleaved repetitions (ms); ratios within the same run.\n\n"
        + table(["what", "params", "optimizer", "time ms", "time / adam", "state bytes"], rows)
        + "\n"
    )


def parts_run(recs: list[Rec]) -> set[str]:
    """The suite parts ``recs`` hold records of (network task names, ``quad``, ``cost``)."""
    return {r["kind"] if r["kind"] in ("quad", "cost") else r["task"] for r in recs}


def _header(
    suite: str,
    command: str,
    prov: dict[str, Any],
    run_info: dict[str, Any] | None,
    indicative: bool,
    notes: tuple[str, ...],
    not_run: list[str],
) -> list[str]:
    parts = [f"# Benchmark report — suite `{suite}`\n"]
    if indicative:
        parts.append(
            "> **Indicative only**: a small-size run of the full protocol. Its "
            "verdicts are not evidence; the full suite's report is.\n"
        )
    parts.append(
        f"Built from one version of the code: {describe_stamp(prov)} (repository "
        f"commit `{prov['commit']}`); jax {prov['jax']}, optax {prov['optax']}, "
        f"filtered_optax {prov['filtered_optax']}, {prov['cpus']} CPUs "
        f"({prov['backend']}).\n"
    )
    if command:
        parts.append(f"Produced by: `{command}` (from the repository root).\n")
    if run_info:
        ph = ", ".join(f"{k} {v:.0f} s" for k, v in run_info.get("phases", {}).items())
        parts.append(
            f"Wall time of this invocation: {run_info.get('total_s', 0):.0f} s ({ph}); "
            f"{run_info.get('units_run', 0)} units run, "
            f"{run_info.get('units_skipped_done', 0)} resumed from the JSONL.\n"
        )
        parts += [f"- **skipped**: {s}" for s in run_info.get("skipped", [])]
        parts.append("")
    if not_run:
        parts.append(
            f"**Not in this run**: {', '.join(not_run)}. Every claim that rests on "
            f"{'it' if len(not_run) == 1 else 'them'} has no data here: missing, not "
            f"negative.\n"
        )
    parts += [f"Note: {n}\n" for n in notes]
    parts.append(
        "Protocol: every spec's learning rate (2^k lattice, window extended until the "
        "optimum is interior; **edge** marks one that is not) is tuned on the tuning "
        "seeds' validation split; the chosen configuration runs on disjoint evaluation "
        "seeds, whose test numbers are reported. Networks: linear warmup + cosine "
        "decay; quadratics: constant LR. Verdicts: " + stats.VERDICT_RULE + ".\n"
    )
    return parts


def write_report(
    out_dir: Path,
    suite: str,
    command: str = "",
    run_info: dict[str, Any] | None = None,
    notes: tuple[str, ...] = (),
    indicative: bool = False,
    planned: tuple[str, ...] = (),
) -> tuple[Path, list[an.Claim]]:
    """Write ``REPORT.md``, ``summary.json``, ``OPTIMIZERS.md`` and the plots.

    ``planned`` names the parts a complete run of the suite has; those without records (a run
    restricted with ``--only``) are listed as not run, in the report and in summary.json.

    Raises :class:`records.ProvenanceError` when the records lack a commit stamp or come from
    more than one version of the code.
    """
    out_dir = Path(out_dir)
    recs = [r for r in records.load(out_dir / "runs.jsonl") if r["suite"] == suite]
    prov = records.check_provenance(recs)
    not_run = [p for p in planned if p not in parts_run(recs)]
    parts = _header(suite, command, prov, run_info, indicative, notes, not_run)
    if data_lines(recs):
        parts += [
            "Data (name and sha256 prefix; `benchmarks/data/SOURCES.md`):\n",
            *data_lines(recs),
            "",
        ]
    tuning, evals, spikes = an.net_tuning(recs), an.runs(recs, "eval"), an.runs(recs, "spike")
    cl = an.claims(recs)
    parts += [
        "## Claims\n",
        "Each row: the method against the **strongest** baseline of its "
        "family on that task (best tuning score), named with its configuration.\n",
        claims_table(cl) + "\n",
        "## Network tasks\n",
    ]
    for task, g in sorted(evals.items()):
        tune_seeds = sorted({r["seed"] for r in recs if r["kind"] == "tune" and r["task"] == task})
        parts.append(net_section(task, tuning.get(task, {}), g, tune_seeds))
        plot_curves(task, g, out_dir / f"curves_{task}.png")
        parts.append(f"![curves](curves_{task}.png)\n")
    if spikes:
        parts.append("## Spike sweeps and natural instability\n")
        parts += [spike_section(task, g) for task, g in sorted(spikes.items())]
    qt = an.quad_tuning(recs)
    if qt:
        parts += ["## Noisy quadratics\n", quad_section(qt)]
    parts += ["## Cost\n", cost_section(recs)]
    n = write_optimizers(recs, out_dir / "OPTIMIZERS.md")
    parts.append(
        f"The exact configuration of each of the {n} optimizer specs: "
        "[OPTIMIZERS.md](OPTIMIZERS.md). Machine-readable: "
        "[summary.json](summary.json).\n"
    )
    wall = run_info.get("total_s") if run_info else None
    summ = records.clean({**summary(recs, prov, wall, cl), "not_run": not_run})
    (out_dir / "summary.json").write_text(json.dumps(summ, indent=1))
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path, cl
