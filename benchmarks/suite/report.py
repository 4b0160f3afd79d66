"""REPORT.md and PNG plots from a suite's JSONL. Nothing here is typed by hand: every number and
every verdict is computed from the records."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import analysis as an  # noqa: E402
from benchmarks import data as data_lib  # noqa: E402
from benchmarks import metrics as metrics_lib  # noqa: E402
from benchmarks import records  # noqa: E402
from benchmarks.quadratic import VARIANTS  # noqa: E402
from benchmarks.suites import BF16_STORAGE_SPEC  # noqa: E402

Rec = dict[str, Any]


def _ms(xs: list[float | None], digits: int = 4) -> str:
    """``mean ± sd`` of the finite values (``n/a`` when none)."""
    v = np.array([x for x in xs if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return "n/a"
    f = f"{{:.{digits}g}}"
    return f"{f.format(v.mean())} ± {f.format(v.std(ddof=1) if v.size > 1 else 0.0)}"


def _lr(k: int) -> str:
    return f"{2.0**k:.3g} (2^{k})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- tables


def net_section(task: str, g: an.Group) -> tuple[str, dict[str, an.Tuned]]:
    """Markdown table for one network task; returns also the tuned LR per spec."""
    tuned = {s: an.tune(by_k, an.net_score) for s, by_k in g.items()}
    r0 = next(iter(next(iter(g.values())).values()))[0]
    metric = "val accuracy" if r0["higher_better"] else "val loss"
    tmetric = "test accuracy" if r0["higher_better"] else "test loss"
    base = tuned.get(an.BASELINE)
    rows = []
    for spec, t in sorted(tuned.items(), key=lambda kv: kv[1].scores[kv[1].k]):
        m = [r["metrics"] for r in t.runs]
        reached = [x["steps_to_target"] for x in m if x["steps_to_target"] is not None]
        d_test = d_steps = "—"
        if base is not None and spec != an.BASELINE:
            ci = an.paired(an.per_seed(t.runs, an.test_score), an.per_seed(base.runs,
                                                                            an.test_score))
            d_test = ci.fmt() if ci else "n/a"
            ci = an.paired(an.per_seed(t.runs, an.censored_steps),
                           an.per_seed(base.runs, an.censored_steps))
            d_steps = ci.fmt() if ci else "n/a"
        tested = sorted(t.scores)
        rows.append([
            f"`{spec}`", _lr(t.k) + (" **edge**" if t.edge else ""),
            f"2^{tested[0]}…2^{tested[-1]} ({len(tested)})",
            _ms([x["final_val_metric"] for x in m]), _ms([x["test_metric"] for x in m]),
            f"{np.median(reached):.0f} ({len(reached)}/{len(m)})" if reached else f"— (0/{len(m)})",
            d_steps, d_test,
            f"{np.mean([x['loss_spikes'] for x in m]):.1f}",
            f"{sum(x['diverged'] for x in m)}/{len(m)}",
        ])
    cfg = r0["task_config"]
    head = (f"### {task}\n\n{r0['n_params']:,} parameters, {r0['steps']} steps, "
            f"{len(base.runs) if base else len(r0)} seeds, data `{r0['data_id']}`"
            f"{data_note(task, r0['data_id'])}, "
            f"config `{cfg}`.\nTarget (fixed in code): {metric} "
            f"{'≥' if r0['higher_better'] else '≤'} {r0['target']}. LR tuned on {metric}.\n"
            f"Δ columns: paired difference (optimizer − adam) over seeds, mean [95 % t-CI]; "
            f"steps to target count a miss as steps + eval interval; Δ test is on "
            f"{'test error (1 − accuracy)' if r0['higher_better'] else 'test loss'} "
            f"(negative = better).\n\n")
    table = _table(["optimizer", "tuned LR", "LRs tested", f"final {metric}", tmetric,
                    "steps to target (median, reached)", "Δ steps vs adam", "Δ test vs adam",
                    "loss spikes", "diverged"], rows)
    return head + table + "\n", tuned


def data_note(task: str, data_id: str) -> str:
    """A warning when a task ran on other data than the shipped default, else ''."""
    shipped = data_lib.shipped_data_id(task)
    if shipped is None or shipped == data_id:
        return ""
    return (f" (**not the shipped data** `{shipped}`: not comparable with the committed "
            "report)")


def data_lines(recs: list[dict]) -> list[str]:
    """One line per task: the data its records ran on."""
    seen = {}
    for r in recs:
        if "data_id" in r and r["kind"] in ("net", "spike"):
            seen.setdefault(r["task"], r["data_id"])
    return [f"- {task}: `{d}`{data_note(task, d)}" for task, d in sorted(seen.items())]


def storage_section(nets: dict[str, an.Group], f32: str, bf16: str) -> str:
    """bfloat16 against float32 moment storage, paired over seeds at the same learning rate.

    The rate is the float32 spec's tuned one, so the difference isolates the storage dtype.
    """
    rows = []
    for task, g in sorted(nets.items()):
        if f32 not in g or bf16 not in g:
            continue
        k = an.tune(g[f32], an.net_score).k
        if k not in g[bf16]:
            rows.append([task, _lr(k), "not run at this LR", "", "", ""])
            continue
        a, b = g[bf16][k], g[f32][k]
        val = an.paired(an.per_seed(a, an.net_score), an.per_seed(b, an.net_score))
        test = an.paired(an.per_seed(a, an.test_score), an.per_seed(b, an.test_score))
        rows.append([task, _lr(k), _ms([r["metrics"]["test_metric"] for r in b]),
                     _ms([r["metrics"]["test_metric"] for r in a]),
                     val.fmt() if val else "n/a", test.fmt() if test else "n/a"])
    if not rows:
        return ""
    head = (f"`{bf16}` against `{f32}` (float32 storage), same seeds, at the float32 spec's "
            "tuned learning rate; arithmetic is float32 in both, only the stored moments are "
            "rounded. Δ = bfloat16 − float32 (negative = bfloat16 better), mean [95 % t-CI]; "
            "for classifiers the Δ columns are on error (1 − accuracy). Moment state bytes: "
            "half of float32's (tests/test_storage_dtypes.py).\n\n")
    return head + _table(["task", "LR", "test metric, float32 storage",
                          "test metric, bfloat16 storage", "Δ final val", "Δ test"], rows) + "\n"


def write_optimizers(recs: list[Rec], path: Path) -> int:
    """``OPTIMIZERS.md``: the resolved pipeline of every spec in the records (``fo.describe``).

    The exact configuration behind each row of the report, ready for a paper's appendix. The
    learning rate is shown as a placeholder: the tuned one is in the report's tables.
    """
    import filtered_optax as fo
    from benchmarks import specs as specs_lib

    texts = sorted({r["spec"] for r in recs if r["kind"] in ("net", "spike", "quad")})
    parts = ["# Optimizer configurations\n",
             "Every optimizer spec in `runs.jsonl`, built by `benchmarks/specs.py` and printed by "
             "`fo.describe` (hyperparameters with defaults filled in). `learning_rate=1.0` and "
             "`optax.scale(step_size=-1.0)` stand for the tuned rate (see REPORT.md); "
             "`stats=True` only logs the filter's spike fraction and mean gain.\n"]
    for text in texts:
        try:
            desc = fo.describe(specs_lib.build(text, 1.0))
        except specs_lib.SpecUnavailable as e:
            parts.append(f"## `{text}`\n\nnot available here: {e}\n")
            continue
        parts.append(f"## `{text}`\n\n```\n{desc}\n```\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return len(texts)


def spike_section(task: str, g: an.Group, clean: an.Group) -> str:
    """Corrupt-batch results for one task."""
    rows = []
    base = next(iter(g[an.BASELINE].values())) if an.BASELINE in g else None
    for spec, by_k in sorted(g.items()):
        k, runs = next(iter(by_k.items()))
        m = [r["metrics"] for r in runs]
        d_rec = d_clean = "—"
        if base is not None and spec != an.BASELINE:
            ci = an.paired(an.per_seed(runs, lambda r: r["metrics"]["recovery_steps"]),
                           an.per_seed(base, lambda r: r["metrics"]["recovery_steps"]))
            d_rec = ci.fmt() if ci else "n/a"
        if spec in clean and k in clean[spec]:
            ci = an.paired(an.per_seed(runs, an.net_score), an.per_seed(clean[spec][k],
                                                                         an.net_score))
            d_clean = ci.fmt() if ci else "n/a"
        rows.append([
            f"`{spec}`", _lr(k), _ms([x["loss_ratio"] for x in m]),
            _ms([x["recovery_steps"] for x in m], 3) + f" ({sum(x['recovered'] for x in m)}"
            f"/{len(m)} recovered)", _ms([x["sqrt_nu_ratio"] for x in m]), d_rec, d_clean,
        ])
    r0 = next(iter(next(iter(g.values())).values()))[0]
    head = (f"### {task}: one corrupt batch at step {r0['spike_step']}\n\n"
            f"Each optimizer at its tuned LR, same seeds as the sweep. Loss ratio = peak probe "
            f"loss after the spike / mean of the 5 steps before; recovery = steps from the "
            f"spike until, after that peak, the probe loss is back within "
            f"{int(round((metrics_lib.RECOVERY_TOL - 1) * 100))} % of that level (censored at "
            f"the probe window); max√ν ratio = largest √ν right after / right before (n/a: no ν). "
            f"Δ final vs clean = final val score (loss or error) of this run − the same "
            f"optimizer's clean run (same LR and seed).\n\n")
    return head + _table(["optimizer", "LR", "loss ratio", "recovery steps", "max√ν ratio",
                          "Δ recovery vs adam", "Δ final vs clean"], rows) + "\n"


def quad_section(quads: dict[str, an.Group]) -> str:
    """One table per quadratic variant."""
    parts = []
    for v in VARIANTS:
        g = quads.get(f"quad/{v}")
        if not g:
            continue
        tuned = {s: an.tune(by_k, an.quad_score) for s, by_k in g.items()}
        base = tuned.get(an.BASELINE)
        b1 = an.tuned_b1_adam(g, an.quad_score)
        tb1 = tuned.get(b1) if b1 else None
        rows = []
        for spec, t in sorted(tuned.items(), key=lambda kv: kv[1].scores[kv[1].k]):
            d_a = d_b1 = "—"
            if base is not None and spec != an.BASELINE:
                ci = an.paired(an.per_seed(t.runs, an.quad_score),
                               an.per_seed(base.runs, an.quad_score))
                d_a = ci.fmt() if ci else "n/a"
            if tb1 is not None and spec != b1:
                ci = an.paired(an.per_seed(t.runs, an.quad_score),
                               an.per_seed(tb1.runs, an.quad_score))
                d_b1 = ci.fmt() if ci else "n/a"
            lag = (_ms([r["metrics"].get("jump_lag") for r in t.runs], 3)
                   if v == "jump" else "—")
            mx, band = an.quad_band(t.scores, set(t.scores))
            rows.append([f"`{spec}`", _lr(t.k) + (" **edge**" if t.edge else ""),
                         _ms([an.quad_score(r) for r in t.runs]), d_a, d_b1, lag,
                         "none" if mx is None else f"2^{mx}", str(band)])
        n = len(base.runs) if base else 0
        parts.append(f"#### quad/{v}\n\nAdam with tuned b1 here: `{b1}`. {n} paired seeds.\n\n" +
                     _table(["optimizer", "tuned LR", "log10 final loss", "Δ vs adam",
                             "Δ vs adam tuned b1", "jump lag (steps)", "largest stable LR",
                             "LRs within 10 %"], rows) + "\n")
    return "\n".join(parts)


def cost_section(recs: list[Rec]) -> str:
    """Cost tables (ratios are within one interleaved run)."""
    rows_raw = an.cost_rows(recs)
    if not rows_raw:
        return "No cost records.\n"
    ratios = an.cost_ratios(rows_raw)
    rows = [[r["what"], f"{r['n_params']:,}", f"`{r['spec']}`",
             f"{r['median_s'] * 1e3:.3g} [{r['min_s'] * 1e3:.3g}, {r['max_s'] * 1e3:.3g}]",
             f"{r['time_ratio_vs_adam']:.2f}×",
             "—" if r["state_bytes"] is None else f"{r['state_bytes']:,}",
             "—" if r["gbps"] is None else f"{r['gbps']:.2f}"] for r in ratios]
    muon = {(r["what"], r["n_params"]): r for r in ratios if r["spec"] == "muon"}
    extra = []
    for r in ratios:
        m = muon.get((r["what"], r["n_params"]))
        if r["spec"] == "optax_muon" and m:
            extra.append(f"fo.muon / optax.contrib.muon time at {r['what']} "
                         f"{r['n_params']:,}: {m['median_s'] / r['median_s']:.2f}×")
    return ("Optimizer-step rows: params and state donated, interleaved repetitions after a "
            "warm-up; median [min, max] in ms. GB/s = nominal bytes moved (Adam family 7 × 4 B "
            "per parameter, Muon 5 × 4 B) / median time; `ref_op` is a fused memory-bound op "
            "with Adam's data flow, the attainable bandwidth in the same run. Train-step rows: "
            "forward + backward + update on the char LM.\n\n" +
            _table(["what", "params", "optimizer", "time ms", "time / adam", "state bytes",
                    "GB/s"], rows) + "\n\n" + "\n".join(f"- {e}" for e in extra) + "\n")


def claims_table(cl: list[an.Claim]) -> str:
    """The claims table (Markdown)."""
    rows = [[c.claim, c.mechanism, f"**{c.verdict}**", c.test,
             "<br>".join(c.evidence) or "—"] for c in cl]
    return _table(["claim", "mechanism", "verdict", "test", "numbers"], rows)


def claims_text(cl: list[an.Claim]) -> str:
    """Plain-text claims table for the terminal."""
    out = []
    for c in cl:
        out.append(f"[{c.verdict.upper():13s}] {c.claim} — {c.mechanism}")
        out += [f"      {e}" for e in c.evidence]
    return "\n".join(out)


# ---------------------------------------------------------------------------------- plots


def _color(i: int) -> Any:
    return plt.get_cmap("tab10")(i % 10)


def _style(i: int) -> str:
    """Line style distinguishing the 11th+ series, which reuse tab10's colours."""
    return ("-", "--", ":")[(i // 10) % 3]


def _clip_ylim(ax: Any, values: list[np.ndarray], factor: float = 30.0) -> None:
    """Keep a diverged run (1e20, inf) from flattening every other curve on a log axis."""
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values] or [np.ones(1)])
    if finite.size:
        lo, med = float(finite.min()), float(np.median(finite))
        ax.set_ylim(lo / 1.2, max(med * factor, lo * 2))


def plot_curves(task: str, tuned: dict[str, an.Tuned], path: Path) -> None:
    """Training loss and validation metric at each optimizer's tuned LR (band = seed min–max)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (spec, t) in enumerate(sorted(tuned.items())):
        r0 = t.runs[0]
        tl = np.array([r["curves"]["train_loss"] for r in t.runs], float)
        k = max(1, tl.shape[1] // 50)  # smooth the noisy per-step loss for readability
        tl = np.array([np.convolve(x, np.ones(k) / k, mode="valid") for x in tl])
        x = np.arange(tl.shape[1]) + k
        vm = np.array([r["curves"]["val_metric"] for r in t.runs], float)
        xe = (np.arange(vm.shape[1]) + 1) * r0["eval_every"]
        for ax, xs, ys in ((axes[0], x, tl), (axes[1], xe, vm)):
            ax.plot(xs, np.nanmean(ys, 0), color=_color(i), ls=_style(i),
                    label=f"{spec} lr={t.lr:.2g}", lw=1.2)
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=_color(i), alpha=0.15)
    axes[0].set(title=f"{task}: training loss (moving average)", xlabel="step", yscale="log")
    metric = "val accuracy" if tuned and next(iter(tuned.values())).runs[0]["higher_better"] \
        else "val loss"
    axes[1].set(title=f"{task}: {metric} (band: min–max over seeds)", xlabel="step")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_lr(title: str, scores: dict[str, dict[int, list[float]]], ylabel: str,
            path: Path) -> None:
    """Learning-rate sensitivity: mean score (and seed range) against LR per optimizer."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (spec, by_k) in enumerate(sorted(scores.items())):
        ks = sorted(by_k)
        vals = [np.array([v for v in by_k[k] if np.isfinite(v)]) for k in ks]
        keep = [j for j, v in enumerate(vals) if v.size]
        if not keep:
            continue
        x = [2.0 ** ks[j] for j in keep]
        ax.errorbar(x, [vals[j].mean() for j in keep],
                    yerr=[[vals[j].mean() - vals[j].min() for j in keep],
                          [vals[j].max() - vals[j].mean() for j in keep]],
                    color=_color(i), ls=_style(i), label=spec, marker="o", ms=3, capsize=2, lw=1)
    ax.set(xscale="log", xlabel="learning rate", ylabel=ylabel, title=title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_spikes(task: str, g: an.Group, path: Path) -> None:
    """Probe loss around the corrupt batch (mean over seeds) per optimizer."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    probes = []
    for i, (spec, by_k) in enumerate(sorted(g.items())):
        runs = next(iter(by_k.values()))
        r0 = runs[0]
        p = np.array([r["curves"]["probe_loss"] for r in runs], float)
        nu = np.array([r["curves"]["max_sqrt_nu"] for r in runs], float)
        x = np.arange(p.shape[1]) + r0["curves"]["window_start"]
        mean = np.nanmean(p, 0)
        probes.append(mean)
        axes[0].plot(x, mean, color=_color(i), ls=_style(i), label=spec, lw=1.2)
        if np.isfinite(nu).any():
            axes[1].plot(x, np.nanmean(nu, 0), color=_color(i), ls=_style(i), label=spec, lw=1.2)
    s = g[next(iter(g))]
    step = next(iter(s.values()))[0]["spike_step"]
    for ax in axes:
        ax.axvline(step, color="k", ls=":", lw=0.8)
    axes[0].set(title=f"{task}: probe loss around the corrupt batch (mean of seeds)",
                xlabel="step", yscale="log")
    _clip_ylim(axes[0], probes)
    axes[1].set(title="max √ν (optimizers with a second moment)", xlabel="step", yscale="log")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_quad_curves(recs: list[Rec], path: Path) -> None:
    """Loss curves at each optimizer's best LR for every quadratic variant."""
    curves = [r for r in recs if r["kind"] == "quad_curve"]
    variants = [v for v in VARIANTS if any(c["task"] == f"quad/{v}" for c in curves)]
    if not variants:
        return
    cols = 3
    rows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4 * rows), squeeze=False)
    specs = sorted({c["spec"] for c in curves})
    for ax, v in zip(axes.flat, variants, strict=False):
        for c in curves:
            if c["task"] != f"quad/{v}":
                continue
            i = specs.index(c["spec"])
            ax.plot(c["step"], c["log10_loss_mean"], color=_color(i), ls=_style(i), lw=1,
                    label=c["spec"])
            ax.fill_between(c["step"], c["log10_loss_p10"], c["log10_loss_p90"],
                            color=_color(i), alpha=0.1)
        ax.set(title=f"quad/{v} (best LR each; band 10–90 % of seeds)", xlabel="step",
               ylabel="log10 loss")
    axes.flat[0].legend(fontsize=5, ncol=2)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------- driver


def write_report(out_dir: Path, suite: str, command: str = "",
                 run_info: dict[str, Any] | None = None,
                 notes: tuple[str, ...] = ()) -> tuple[Path, list[an.Claim]]:
    """Write ``REPORT.md`` and the PNG plots for ``out_dir/runs.jsonl``."""
    out_dir = Path(out_dir)
    recs = [r for r in records.load(out_dir / "runs.jsonl") if r["suite"] == suite]
    nets, spikes, quads = (an.group(recs, k) for k in ("net", "spike", "quad"))
    parts = [f"# Benchmark report — suite `{suite}`\n"]
    if command:
        parts.append(f"Produced by: `{command}` (from the repository root).\n")
    env = next((r["env"] for r in recs if "env" in r), {})
    if env:
        parts.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".\n")
    n_runs = sum(r["kind"] in ("net", "spike", "quad") for r in recs)
    total = sum(r.get("time_s", 0.0) for r in recs if r["kind"] in ("net", "spike", "quad"))
    parts.append(f"{n_runs} runs in `runs.jsonl` (compute time recorded in them: "
                 f"{total / 60:.1f} min).\n")
    if run_info:
        ph = ", ".join(f"{k} {v:.0f} s" for k, v in run_info.get("phases", {}).items())
        parts.append(f"This invocation: {run_info.get('total_s', 0):.0f} s wall ({ph}); "
                     f"{run_info.get('units_run', 0)} units run, "
                     f"{run_info.get('units_skipped_done', 0)} already in the JSONL "
                     f"(resumed).\n")
        for s in run_info.get("skipped", []):
            parts.append(f"- **skipped**: {s}")
        for extra in run_info.get("extra_commands", []):
            parts.append(f"- later, into the same JSONL: `{extra['command']}` "
                         f"({extra['total_s']:.0f} s); the cost tables use the latest cost "
                         f"record of each (size, optimizer)")
        parts.append("")
    if data_lines(recs):
        parts.append("Data (name and sha256 prefix; shipped files are listed in "
                     "`benchmarks/data/SOURCES.md`):\n")
        parts.extend(data_lines(recs) + [""])
    for n in notes:
        parts.append(f"Note: {n}\n")
    parts.append("Protocol: learning rates on the lattice 2^k (×2 steps) for every optimizer; "
                 "each optimizer's window is extended while its best rate sits on an edge "
                 "(**edge** marks a best rate still on the edge of what was tested). Seeds are "
                 "paired across optimizers (same initialisation, batches and noise). A claim's "
                 "comparison is a *win* when the 95 % t-interval of the paired difference lies "
                 "entirely on the better side, a *loss* when entirely on the worse side.\n")

    parts.append("## Network tasks\n")
    edges: list[str] = []
    for task, g in sorted(nets.items()):
        text, tuned = net_section(task, g)
        parts.append(text)
        edges += [f"{task} `{s}` (best 2^{t.k}, tested 2^{min(t.scores)}…2^{max(t.scores)})"
                  for s, t in sorted(tuned.items()) if t.edge]
        plot_curves(task, tuned, out_dir / f"curves_{task}.png")
        plot_lr(f"{task}: LR sensitivity", {
            s: {k: [an.net_score(r) for r in rs] for k, rs in by_k.items()}
            for s, by_k in g.items()}, "final val loss" if task == "lm" else "final val error",
            out_dir / f"lr_{task}.png")
        parts.append(f"![curves](curves_{task}.png)\n![lr](lr_{task}.png)\n")
    parts.append("**Best learning rate on an edge of the tested range** (the window could not "
                 "be extended further, so the tuned rate may be off): "
                 + ("; ".join(edges) if edges else "none") + ".\n")
    storage = storage_section(nets, an.F_SPEC, an.canon(BF16_STORAGE_SPEC))
    if storage:
        parts.append("## Moment storage dtype\n")
        parts.append(storage)
    if spikes:
        parts.append("## Spike injection (one corrupt batch)\n")
        for task, g in sorted(spikes.items()):
            parts.append(spike_section(task, g, nets.get(task, {})))
            plot_spikes(task, g, out_dir / f"spike_{task}.png")
            parts.append(f"![spike](spike_{task}.png)\n")
    if quads:
        parts.append("## Noisy quadratics\n")
        parts.append("Score: log10 of the mean exact loss over the last 10 % of steps (lower "
                     "is better); Δ columns are paired over seeds, mean [95 % t-CI]. Jump lag = "
                     "steps after the optimum jumps until 90 % of the excess loss is gone.\n")
        parts.append(quad_section(quads))
        q_edges = [f"{v} `{sp}`" for v in VARIANTS
                   for sp, by_k in quads.get(f"quad/{v}", {}).items()
                   if an.tune(by_k, an.quad_score).edge]
        parts.append("Quadratics with the best LR on an edge of the fixed grid: "
                     + ("; ".join(q_edges) if q_edges else "none") + ".\n")
        plot_quad_curves(recs, out_dir / "quad_curves.png")
        fig_scores = {}
        for v in VARIANTS:
            g = quads.get(f"quad/{v}")
            if g:
                fig_scores[v] = {s: {k: [an.quad_score(r) for r in rs] for k, rs in by_k.items()}
                                 for s, by_k in g.items()}
        for v, sc in fig_scores.items():
            plot_lr(f"quad/{v}: LR sensitivity", sc, "log10 final loss",
                    out_dir / f"lr_quad_{v}.png")
        parts.append("![quad curves](quad_curves.png)\n")
        parts.append(" ".join(f"![lr {v}](lr_quad_{v}.png)" for v in fig_scores) + "\n")
    parts.append("## Cost\n")
    parts.append(cost_section(recs))
    cl = an.claims(recs)
    parts.append("## Claims (SPEC section C)\n")
    parts.append(f"Verdict rule: {an.stats.VERDICT_RULE}. The cost row has its own rule "
                 f"(stated in its test column). All verdicts are computed by "
                 f"`benchmarks/analysis.py` from the records above.\n")
    parts.append(claims_table(cl) + "\n")
    n_specs = write_optimizers(recs, out_dir / "OPTIMIZERS.md")
    parts.append(f"The exact configuration of each of the {n_specs} optimizer specs (every stage "
                 "and hyperparameter, from `fo.describe`): [OPTIMIZERS.md](OPTIMIZERS.md).\n")
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path, cl
