"""The report's section for `tune --launch` searches: per search (its `study`), every trial's best level as tune
judged it, and goodput against P99 E2E as a scatter with vLLM's defaults marked and the Pareto front joined.

Read from the load rows alone (each level carries `study`, `trial`, `trial_config` and `trial_status`), so a
search's CSV is enough: a trial's goodput is the highest req/s of its levels whose `trial_status` is ok, as tune
itself scores it (serving/tune_trial.py).
"""
from __future__ import annotations

import html
import json
import math

import pandas as pd

from .serving.metrics import tail_text
from .serving.tune_trial import TrialResult, bracket
from .serving.tune_view import gain_bound

DEFAULT_COLOR, TRIAL_COLOR, FRONT_COLOR = "#d62728", "#1f77b4", "#2ca02c"
TAIL_HEADER = "slowest 1%: TTFT / decode / stalls s"  # the best level's split of its slowest requests' E2E


def trial_rows(levels: pd.DataFrame) -> pd.DataFrame:
    """One row per trial of one search: its step, configuration, levels, and its best level within the SLO."""
    out = []
    for trial, rows in levels.groupby("trial", sort=True):
        best, offered, missed = bracket(rows)
        gpus = pd.to_numeric(rows["gpus"], errors="coerce").max() if "gpus" in rows else math.nan
        config = json.loads(rows["trial_config"].dropna().iloc[0]) if rows["trial_config"].notna().any() else {}
        out.append({
            "trial": int(trial), "step": rows["search_step"].iloc[0],
            "configuration": ", ".join(f"{k} {v}" for k, v in config.items()) or "engine defaults",
            "levels": int((rows["status"] != "error").sum()),
            "gpus": int(gpus) if math.isfinite(gpus) else 1,
            "goodput_req_s": float(best["req_s"]) if best is not None else math.nan,
            "offered_req_s": offered,
            "missed_rate_req_s": missed,  # the limit lies between
            "latency_p99_s": float(best["latency_p99_s"]) if best is not None else math.nan,
            "status": "ok" if best is not None else str(rows["trial_status"].iloc[-1]),
            TAIL_HEADER: tail_text(best),
        })
    frame = pd.DataFrame(out)
    return frame if frame.empty or frame[TAIL_HEADER].astype(bool).any() else frame.drop(columns=[TAIL_HEADER])


def _result(trial: pd.Series) -> TrialResult:
    """A trial_rows row as the TrialResult fields tune's wording reads (rates per server, compared per GPU)."""
    return TrialResult(int(trial["trial"]), str(trial["step"]), {}, str(trial["status"]),
                       goodput_req_s=trial["goodput_req_s"], rate_req_s=trial["offered_req_s"],
                       missed_rate_req_s=trial["missed_rate_req_s"], gpus=int(trial["gpus"]))


def pareto(trials: pd.DataFrame) -> list[int]:
    """The trials no other beats on both goodput (higher) and P99 E2E (lower), by trial number: tune's own front."""
    from .serving.tune_online import pareto_front

    results = [TrialResult(int(r.trial), r.step, {}, r.status, goodput_req_s=r.goodput_req_s,
                           latency_p99_s=r.latency_p99_s) for r in trials.itertuples()]
    return [r.trial for r in pareto_front(results)]


def scatter_chart(trials: pd.DataFrame, front: list[int], slo_s: float | None = None,
                  width: int = 560, height: int = 320) -> str:
    """Goodput (y) against P99 E2E (x) per trial that met the SLO somewhere, labelled by trial number; the defaults
    (trial 0) in red, the Pareto front joined in green, the SLO as a dashed vertical line."""
    ok = trials[trials["status"] == "ok"]
    if ok.empty:
        return ""
    left, right, top, bottom = 60, 20, 20, 45
    x_top, y_top = max(ok["latency_p99_s"].max(), slo_s or 0) * 1.05, ok["goodput_req_s"].max() * 1.1
    x_step, y_step = _nice_step(x_top / 5), _nice_step(y_top / 5)
    x_ticks, y_ticks = math.ceil(x_top / x_step), math.ceil(y_top / y_step)
    x_max, y_max = x_ticks * x_step, y_ticks * y_step

    def px(x: float) -> float:
        return left + x / x_max * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - y / y_max * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<line x1="{left}" y1="{py(0)}" x2="{width - right}" y2="{py(0)}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{py(0)}" stroke="#444"/>']
    for i in range(x_ticks + 1):
        parts.append(f'<text x="{px(x_step * i):.1f}" y="{py(0) + 15}" text-anchor="middle">{x_step * i:g}</text>')
    for i in range(y_ticks + 1):
        parts.append(f'<text x="{left - 6}" y="{py(y_step * i) + 4:.1f}" text-anchor="end">{y_step * i:g}</text>')
    if slo_s:
        parts.append(f'<line x1="{px(slo_s):.1f}" y1="{top}" x2="{px(slo_s):.1f}" y2="{py(0)}" stroke="#888" '
                     f'stroke-dasharray="5,4"/><text x="{px(slo_s) - 4:.1f}" y="{top + 10}" text-anchor="end" '
                     f'fill="#666">SLO {slo_s:g} s</text>')
    on_front = ok[ok["trial"].isin(front)].sort_values("latency_p99_s")
    if len(on_front) > 1:
        path = " ".join(f"{px(r.latency_p99_s):.1f},{py(r.goodput_req_s):.1f}" for r in on_front.itertuples())
        parts.append(f'<polyline fill="none" stroke="{FRONT_COLOR}" stroke-width="1.5" points="{path}"/>')
    for r in ok.itertuples():
        color = DEFAULT_COLOR if r.trial == 0 else FRONT_COLOR if r.trial in front else TRIAL_COLOR
        x, y = px(r.latency_p99_s), py(r.goodput_req_s)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')
        parts.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" fill="{color}">{r.trial}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">P99 E2E s at the '
                 f'trial\'s best level</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 '
                 f'{(top + height - bottom) / 2})" text-anchor="middle">goodput req/s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `raw` (an axis step people read)."""
    if not raw > 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def tune_sections(load: pd.DataFrame, slo_p99_s: float | None = None) -> list[str]:
    """One section per `tune --launch` search among the load rows (none when no row has a study)."""
    from .report import table

    if "study" not in load or load["study"].isna().all():
        return []
    whole = load[load["study"].notna() & (load["class"].fillna("all") == "all")]
    body = ["<h2>Tune searches</h2>", "<p>Each trial is one server start measured at several loads; its goodput is "
            "the most req/s of a level whose P99 figures met the search's SLO (offered: the rate that level was "
            "given). Trial 0 is the engine's defaults (red); the Pareto front of goodput against P99 is joined in "
            "green.</p>"]
    for study, levels in whole.groupby("study", sort=False):
        trials = trial_rows(levels)
        first = levels.iloc[0]
        slo = first.get("slo")
        body.append(f"<h3>search {html.escape(str(study))}: {html.escape(str(first.get('regime')))}, "
                    f"{html.escape(str(first.get('workload')))}, SLO {html.escape(str(slo))}, {len(trials)} trials"
                    f"</h3>")
        ok = trials[trials["status"] == "ok"]
        if not ok.empty:
            best = ok.loc[ok["goodput_req_s"].idxmax()]
            base = trials[(trials["trial"] == 0) & (trials["status"] == "ok")]
            gain = (f"; {best['goodput_req_s'] / base['goodput_req_s'].iloc[0] - 1:+.1%} over the defaults"
                    if not base.empty and best["trial"] != 0 else " (the defaults)" if best["trial"] == 0 else "")
            if not base.empty and best["trial"] != 0:  # what the levels prove of it (tune's outcome says the same)
                bound = gain_bound(_result(best), _result(base.iloc[0]))
                gain += f"; {bound[1]}" if bound else ""
            body.append(f"<p>Most goodput: trial {int(best['trial'])}, {best['goodput_req_s']:.2f} req/s (offered "
                        f"{best['offered_req_s']:.2f}) at P99 {best['latency_p99_s']:.3f} s{html.escape(gain)}.</p>")
        body.append(scatter_chart(trials, pareto(trials), _e2e_s(slo) or slo_p99_s))
        body.append(table(trials))
    return body


def _e2e_s(slo) -> float | None:
    """The E2E limit in seconds of a row's slo text (e.g. 'e2e=2s'), if it has one."""
    if not isinstance(slo, str):
        return None
    from .errors import QwenoptError
    from .serving.metrics import parse_slo

    try:
        return parse_slo(slo).get("e2e")
    except QwenoptError:  # a text this version cannot read: no line drawn
        return None
