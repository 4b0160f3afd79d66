"""From JSONL records to tables and claim verdicts. Every number in REPORT.md comes from here."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks import stats
from benchmarks.runner import BAND, score
from benchmarks.specs import parse_spec

Rec = dict[str, Any]
# spec -> lr exponent -> records sorted by seed
Group = dict[str, dict[int, list[Rec]]]

BASELINE = "adam"
F_SPEC = "filtered_adam"
SMOOTH_SPECS = ("filtered_adam(eta=0.5, gamma=inf)", "filtered_adam(eta=0.9)")
MUON_SPECS = ("muon", "optax_muon")
COST_RATIO_LIMIT = 1.25  # "similar cost": optimizer-step time within 25 % of Adam's
TRAIN_RATIO_LIMIT = 1.10  # ... and LM train-step time within 10 %


def canon(text: str) -> str:
    """Canonical spec text (so hand-written names in this module match the records)."""
    return parse_spec(text).text


def group(recs: Iterable[Rec], kind: str) -> dict[str, Group]:
    """``{task: {spec: {lr_exp: [records by seed]}}}`` for records of ``kind``."""
    out: dict[str, Group] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in recs:
        if r["kind"] == kind:
            out[r["task"]][r["spec"]][r["lr_exp"]].append(r)
    for g in out.values():
        for by_k in g.values():
            for k in by_k:
                by_k[k].sort(key=lambda r: r["seed"])
    return out


def net_score(r: Rec) -> float:
    """Lower-is-better tuning score of a network record."""
    return score(r["metrics"], r["higher_better"])


def quad_score(r: Rec) -> float:
    """Lower-is-better tuning score of a quadratic record: log10 final loss (∞ if diverged)."""
    f = r["metrics"].get("final_loss")
    if r["metrics"].get("diverged") or f is None or f <= 0:
        return math.inf
    return math.log10(f)


def mean_scores(by_k: dict[int, list[Rec]], fn: Callable[[Rec], float]) -> dict[int, float]:
    """Mean score per LR exponent (∞ if any seed is ∞)."""
    return {k: float(np.mean([fn(r) for r in rs])) for k, rs in sorted(by_k.items())}


@dataclass
class Tuned:
    """The tuned learning rate of one (task, spec) and what the sweep looked like."""

    k: int
    scores: dict[int, float]
    edge: bool
    runs: list[Rec] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return 2.0**self.k


def tune(by_k: dict[int, list[Rec]], fn: Callable[[Rec], float]) -> Tuned:
    """Best LR exponent by mean score; ``edge`` when it is the smallest or largest tested."""
    sc = mean_scores(by_k, fn)
    finite = {k: v for k, v in sc.items() if math.isfinite(v)}
    k = min(finite, key=finite.get) if finite else min(sc)
    edge = len(sc) > 1 and k in (min(sc), max(sc))
    return Tuned(k, sc, edge, by_k[k])


def per_seed(runs: list[Rec], fn: Callable[[Rec], float | None]) -> dict[int, float | None]:
    """``{seed: value}`` for a list of runs."""
    return {r["seed"]: fn(r) for r in runs}


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> stats.PairedCI | None:
    """Paired CI of ``a − b`` over common seeds."""
    seeds = sorted(set(a) & set(b))
    return stats.paired_ci([a[s] for s in seeds], [b[s] for s in seeds])


def censored_steps(r: Rec) -> float:
    """Steps to target, or steps + eval_every when never reached (a conservative penalty)."""
    s = r["metrics"].get("steps_to_target")
    return float(s) if s is not None else float(r["steps"] + r["eval_every"])


def test_score(r: Rec) -> float | None:
    """Lower-is-better test metric: test loss (LM) or test error (classifiers)."""
    v = r["metrics"].get("test_metric")
    if v is None:
        return None
    return 1.0 - v if r["higher_better"] else v


def stable_band(scores: dict[int, float], common: set[int]) -> tuple[int | None, int]:
    """(largest non-divergent LR exponent, number of rates within 10 % of the best)."""
    ks = sorted(k for k in scores if k in common)
    ok = [k for k in ks if math.isfinite(scores[k])]
    if not ok:
        return None, 0
    best = min(scores[k] for k in ok)
    # band on the raw loss/error scale; quadratic scores are log10 losses
    return max(ok), sum(1 for k in ok if scores[k] <= best + abs(best) * (BAND - 1))


def quad_band(scores: dict[int, float], common: set[int]) -> tuple[int | None, int]:
    """:func:`stable_band` for log10-loss scores (10 % band on the loss itself)."""
    lin = {k: (10**v if math.isfinite(v) else math.inf) for k, v in scores.items()}
    return stable_band(lin, common)


def tuned_b1_adam(g: Group, fn: Callable[[Rec], float]) -> str | None:
    """Among ``adam`` and ``adam(b1=…)`` specs, the one with the best tuned score."""
    cands = [s for s in g if s == "adam" or (s.startswith("adam(") and "b1=" in s
                                               and "b2=" not in s and "eps=" not in s)]
    if not cands:
        return None
    return min(cands, key=lambda s: tune(g[s], fn).scores[tune(g[s], fn).k])


@dataclass
class Claim:
    """One row of the claims table."""

    claim: str
    mechanism: str
    test: str
    outcomes: list[str]
    evidence: list[str]
    verdict: str = ""
    rule: str = stats.VERDICT_RULE

    def finish(self) -> Claim:
        if not self.verdict:
            self.verdict = stats.verdict(self.outcomes)
        return self


def _cmp(label: str, ci: stats.PairedCI | None, unit: str = "") -> tuple[str, str]:
    o = stats.outcome(ci)
    txt = f"{label}: Δ={ci.fmt()}{unit} → {o}" if ci else f"{label}: no paired data"
    return o, txt


def _pick(g: Group, names: Iterable[str]) -> str | None:
    for n in names:
        if n in g:
            return n
    return None


def _vs_baselines(c: Claim, nets: dict[str, Group], spec: str,
                  metric: Callable[[Rec], float | None], unit: str = "") -> Claim:
    """``c`` with ``spec`` against Adam and SGD+M on every network task, each at its tuned LR,
    paired over seeds on ``metric``."""
    for task, g in sorted(nets.items()):
        if spec not in g:
            continue
        a = tune(g[spec], net_score)
        for base in ("adam", "sgd"):
            if base in g:
                b = tune(g[base], net_score)
                o, t = _cmp(f"{task} vs {base}",
                            paired(per_seed(a.runs, metric), per_seed(b.runs, metric)), unit)
                c.outcomes.append(o)
                c.evidence.append(t)
    return c.finish()


def claims(recs: list[Rec]) -> list[Claim]:
    """Compute every claim of SPEC section C from the records."""
    nets = group(recs, "net")
    spikes = group(recs, "spike")
    quads = group(recs, "quad")
    out: list[Claim] = []
    movers = [(F_SPEC, "F (filtered_adam defaults)")]
    movers += [(m, f"Muon ({m})") for m in MUON_SPECS if any(m in g for g in nets.values())]

    # 1. faster convergence: steps to target at tuned LR, vs Adam and vs SGD+M
    for spec, mech in movers:
        out.append(_vs_baselines(
            Claim("converges in fewer steps than Adam / SGD+M", mech,
                  "steps to the task's fixed target at each optimizer's tuned LR", [], []),
            nets, spec, censored_steps, " steps"))

    # 2. generalization: test metric at equal budget
    for spec, mech in movers:
        out.append(_vs_baselines(
            Claim("generalizes better", mech,
                  "test loss (LM) / test error (classifiers) at tuned LR, equal steps", [], []),
            nets, spec, test_score))

    # 3. robustness to noise and spikes (gamma clip)
    c = Claim("robust to noise and gradient spikes", "γ clip (filtered_adam defaults)",
              "heavy-tailed / spiky quadratics (log10 final loss); one corrupt batch on "
              "networks (recovery steps, final val score)", [], [])
    for v in ("student_t3", "coord_spikes", "global_spikes"):
        g = quads.get(f"quad/{v}", {})
        if F_SPEC in g and BASELINE in g:
            a, b = tune(g[F_SPEC], quad_score), tune(g[BASELINE], quad_score)
            o, t = _cmp(f"quad/{v} log10 loss vs adam",
                        paired(per_seed(a.runs, quad_score), per_seed(b.runs, quad_score)))
            c.outcomes.append(o)
            c.evidence.append(t)
    for task, g in sorted(spikes.items()):
        if F_SPEC in g and BASELINE in g:
            a = next(iter(g[F_SPEC].values()))
            b = next(iter(g[BASELINE].values()))
            for name, fn in (("recovery steps", lambda r: r["metrics"]["recovery_steps"]),
                             ("final val score", net_score)):
                o, t = _cmp(f"{task} corrupt batch {name} vs adam",
                            paired(per_seed(a, fn), per_seed(b, fn)))
                c.outcomes.append(o)
                c.evidence.append(t)
            for lab, rs in ((F_SPEC, a), (BASELINE, b)):
                lr_ = np.mean([r["metrics"]["loss_ratio"] or np.nan for r in rs])
                nu = [r["metrics"].get("sqrt_nu_ratio") for r in rs]
                nu_s = (f"{np.mean([x for x in nu if x is not None]):.3g}"
                        if any(x is not None for x in nu) else "n/a")
                c.evidence.append(f"{task} {lab}: loss ratio {lr_:.3g}, max√ν ratio {nu_s}")
    out.append(c.finish())

    # 4. smoothing keeps important changes: vs Adam with tuned b1
    for spec in SMOOTH_SPECS:
        c = Claim("smooths noise but keeps important changes", f"η, K ({spec})",
                  "noisy quadratics vs Adam with tuned b1 (and tuned LR): log10 final loss "
                  "(gauss, student_t3), lag after the optimum jumps", [], [])
        for v in ("gauss", "student_t3", "jump"):
            g = quads.get(f"quad/{v}", {})
            base = tuned_b1_adam(g, quad_score)
            if spec not in g or base is None:
                continue
            a, b = tune(g[spec], quad_score), tune(g[base], quad_score)
            o, t = _cmp(f"quad/{v} log10 loss vs {base}",
                        paired(per_seed(a.runs, quad_score), per_seed(b.runs, quad_score)))
            c.outcomes.append(o)
            c.evidence.append(t)
            if v == "jump":
                def lag(r: Rec) -> float:
                    return float(r["metrics"]["jump_lag"])
                o, t = _cmp(f"quad/jump lag vs {base}",
                            paired(per_seed(a.runs, lag), per_seed(b.runs, lag)), " steps")
                c.outcomes.append(o)
                c.evidence.append(t)
        out.append(c.finish())

    # 5. stability at large learning rates
    c = Claim("stable at larger learning rates", "γ clip (filtered_adam defaults)",
              "largest non-divergent LR and number of ×2 LRs within 10 % of the best, on the "
              "LRs tested for both (no CI: one sweep per task)", [], [])
    for task, g in sorted(nets.items()):
        if F_SPEC in g and BASELINE in g:
            _band_cmp(c, task, tune(g[F_SPEC], net_score).scores,
                      tune(g[BASELINE], net_score).scores, stable_band)
    for v in ("gauss", "student_t3", "coord_spikes", "global_spikes"):
        g = quads.get(f"quad/{v}", {})
        if F_SPEC in g and BASELINE in g:
            _band_cmp(c, f"quad/{v}", tune(g[F_SPEC], quad_score).scores,
                      tune(g[BASELINE], quad_score).scores, quad_band)
    out.append(c.finish())

    # 6. early-step bias
    c = Claim("less early-step bias", "— (F is the identity before warm-up)",
              "mean training loss over steps 1–100 at Adam's tuned LR", [], [])
    for task, g in sorted(nets.items()):
        if F_SPEC in g and BASELINE in g:
            kb = tune(g[BASELINE], net_score).k
            runs_f = g[F_SPEC].get(kb) or tune(g[F_SPEC], net_score).runs
            o, t = _cmp(f"{task} vs adam", paired(
                per_seed(runs_f, lambda r: r["metrics"]["early_loss"]),
                per_seed(g[BASELINE][kb], lambda r: r["metrics"]["early_loss"])))
            c.outcomes.append(o)
            c.evidence.append(t)
    g = quads.get("quad/gauss", {})
    if F_SPEC in g and BASELINE in g:
        kb = tune(g[BASELINE], quad_score).k
        if kb in g[F_SPEC]:
            def early(r: Rec) -> float | None:
                e = r["metrics"].get("early_loss")
                return math.log10(e) if e else None
            o, t = _cmp("quad/gauss log10 early loss vs adam",
                        paired(per_seed(g[F_SPEC][kb], early), per_seed(g[BASELINE][kb], early)))
            c.outcomes.append(o)
            c.evidence.append(t)
    out.append(c.finish())

    out.append(cost_claim(recs))
    return out


def _band_cmp(c: Claim, task: str, sf: dict[int, float], sb: dict[int, float],
              band_fn: Callable) -> None:
    common = set(sf) & set(sb)
    mf, bf = band_fn(sf, common)
    mb, bb = band_fn(sb, common)
    top = max(common) if common else None
    cmp_max = 0 if mf is None or mb is None else (mf > mb) - (mf < mb)
    cmp_band = (bf > bb) - (bf < bb)
    if cmp_max >= 0 and cmp_band >= 0 and (cmp_max + cmp_band) > 0:
        o = "win"
    elif cmp_max <= 0 and cmp_band <= 0 and (cmp_max + cmp_band) < 0:
        o = "loss"
    else:
        o = "tie"

    def fmt(m: int | None) -> str:
        if m is None:
            return "none"
        return f"2^{m}" + (" (top tested)" if m == top else "")

    c.outcomes.append(o)
    c.evidence.append(f"{task}: largest stable LR F {fmt(mf)} vs adam {fmt(mb)}; "
                      f"10 % band F {bf} vs adam {bb} rates → {o}")


def cost_rows(recs: list[Rec]) -> list[Rec]:
    """Latest cost record per (what, n_params, spec)."""
    latest: dict[tuple, Rec] = {}
    for r in recs:
        if r["kind"] == "cost":
            latest[(r["what"], r["n_params"], r["spec"])] = r
    return list(latest.values())


def cost_ratios(rows: list[Rec]) -> list[dict[str, Any]]:
    """Time ratios against Adam (and fo.muon vs optax.contrib.muon) within one run."""
    out = []
    by = defaultdict(dict)
    for r in rows:
        by[(r["what"], r["n_params"], r["run_id"])][r["spec"]] = r
    for (what, n, _), d in sorted(by.items(), key=lambda x: (x[0][0], x[0][1])):
        if "adam" not in d:
            continue
        base = d["adam"]
        for spec, r in d.items():
            out.append({"what": what, "n_params": n, "spec": spec,
                        "time_ratio_vs_adam": r["median_s"] / base["median_s"],
                        "state_ratio_vs_adam": (r["state_bytes"] / base["state_bytes"]
                                                if r.get("state_bytes") else None),
                        "median_s": r["median_s"], "min_s": r["min_s"], "max_s": r["max_s"],
                        "gbps": r.get("gbps"), "state_bytes": r.get("state_bytes")})
    return out


def cost_claim(recs: list[Rec]) -> Claim:
    """"Cost similar to Adam": equal state bytes and time ratios under fixed limits."""
    ratios = [r for r in cost_ratios(cost_rows(recs)) if r["spec"] == F_SPEC]
    c = Claim("cost similar to Adam", "stateless F",
              f"state bytes equal to Adam's; optimizer-step time ≤ {COST_RATIO_LIMIT}× Adam at "
              f"every size; LM train-step time ≤ {TRAIN_RATIO_LIMIT}× Adam", [], [],
              rule="supported: all three conditions hold; not supported: none holds; "
                   "mixed: otherwise (ratios measured interleaved in the same run)")
    if not ratios:
        c.verdict = "no data"
        return c
    opt = [r for r in ratios if r["what"] == "opt_step"]
    train = [r for r in ratios if r["what"] == "train_step"]
    conds = []
    if opt:
        same = all(r["state_ratio_vs_adam"] == 1.0 for r in opt)
        conds.append(same)
        c.evidence.append("state bytes F/adam: " + ", ".join(
            f"{r['n_params']:.0e}: {r['state_ratio_vs_adam']:.6g}×" for r in opt))
        fast = all(r["time_ratio_vs_adam"] <= COST_RATIO_LIMIT for r in opt)
        conds.append(fast)
        c.evidence.append("optimizer-step time F/adam: " + ", ".join(
            f"{r['n_params']:.0e}: {r['time_ratio_vs_adam']:.2f}×" for r in opt))
    if train:
        ok = all(r["time_ratio_vs_adam"] <= TRAIN_RATIO_LIMIT for r in train)
        conds.append(ok)
        c.evidence.append("LM train-step time F/adam: " + ", ".join(
            f"{r['time_ratio_vs_adam']:.3f}×" for r in train))
    c.outcomes = ["win" if x else "loss" for x in conds]
    c.verdict = ("supported" if all(conds) else "not supported" if not any(conds) else "mixed")
    return c
