"""A self-contained HTML report from result files of any kind: the offline throughput charts, the online
load-latency and goodput curves with the SLO line, the cost matrices (offline and online apart), each `tune
--launch` search's trials (report_tune.py), every row.

Running and reporting are separate steps: the report re-reads saved CSVs and needs no GPU, no network and
no plotting library (the charts are inline SVG).
"""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone

import pandas as pd

from .collect import Collection
from .matrix import UNUSABLE_STATUSES, config_label, cost_tables, online_label, title, workload_label
from .errors import QwenoptError

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
CELL_COLUMNS = ["config", "batch_size", "input_len", "output_len", "status", "output_tok_s", "latency_p50_s",
                "latency_p99_s", "ttft_p50_ms", "tpot_p50_ms", "gpu_mem_peak_gib", "roofline_eff", "samples"]


def _tick(value: float, top: float) -> str:
    return f"{value:,.0f}" if top >= 20 else f"{value:.3g}"


def line_chart(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               width: int = 640, height: int = 320, hline: tuple[float, str] | None = None) -> str:
    """An SVG line chart, x on a log2 axis (batch sizes, offered loads), one line per series, and an optional
    dashed horizontal line (the SLO)."""
    series = {k: [(x, y) for x, y in v if x > 0 and y == y] for k, v in series.items()}
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    left, right, top, bottom = 70, 170, 20, 45
    legend = max(int(6.5 * max(len(name) for name in series)) + 16, right)  # ~6.5 px a character at font-size 11
    width, right = width + legend - right, legend  # the plot keeps its size; a long legend widens the figure
    xs = [math.log2(x) for x, _ in points]
    x_min, x_max = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_max = max([y for _, y in points] + [hline[0] if hline else 0]) * 1.1 or 1.0

    def px(x: float) -> float:
        return left + (math.log2(x) - x_min) / (x_max - x_min) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - y / y_max * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<line x1="{left}" y1="{py(0)}" x2="{width - right}" y2="{py(0)}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{py(0)}" stroke="#444"/>']
    for x in sorted({x for x, _ in points}):
        parts.append(f'<text x="{px(x):.1f}" y="{py(0) + 15}" text-anchor="middle">{x:g}</text>')
    for i in range(5):
        y = y_max * i / 4
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_tick(y, y_max)}</text>')
    if hline:
        parts.append(f'<line x1="{left}" y1="{py(hline[0]):.1f}" x2="{width - right}" y2="{py(hline[0]):.1f}" '
                     f'stroke="#888" stroke-dasharray="5,4"/>')
        parts.append(f'<text x="{width - right - 4}" y="{py(hline[0]) - 4:.1f}" text-anchor="end" fill="#666">'
                     f'{html.escape(hline[1])}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 * i + 10}" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


SHORT_NAMES = {
    "meets_slo": "meets SLO", "batch_size": "batch", "gpus": "GPUs", "requests_per_gpu": "req/GPU",
    "latency_mean_s": "mean s", "latency_p50_s": "P50 s", "latency_p99_s": "P99 s", "gpu_util_pct": "util %",
    "req_s": "req/s", "requests_per_day": "req/day", "output_tok_s": "out tok/s", "relative_unit_cost": "unit cost",
    "usd_per_1m_output_tokens": "$/1M out tok", "input_len": "in", "output_len": "out", "ttft_p50_ms": "TTFT P50 ms",
    "tpot_p50_ms": "TPOT P50 ms", "gpu_mem_peak_gib": "GPU peak GiB", "roofline_eff": "roofline eff",
    "ttft_p99_ms": "TTFT P99 ms", "goodput_req_s": "goodput req/s", "send_lag_p99_ms": "send lag P99 ms",
    "concurrency_mean": "in flight", "latency_mean_s": "mean s", "offered_req_s": "offered req/s",
    "missed_rate_req_s": "missed at req/s",
}
LEVEL_COLUMNS = ["config", "workload", "class", "status", "rate", "concurrency", "sent", "completed", "req_s",
                 "goodput_req_s", "latency_p50_s", "latency_p99_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
                 "send_lag_p99_ms", "concurrency_mean", "gpu_util_pct", "error"]


def table(frame: pd.DataFrame) -> str:
    """An HTML table with numbers a person can read: no float noise, thousands separated, '-' for empty."""
    head = "".join(f"<th>{html.escape(SHORT_NAMES.get(c, c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"




def text_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _matrices(found: Collection, slo_p99_s: float, slo_ttft_s: float | None, gpu_hour_usd: float) -> list[str]:
    from .matrix import DEFINITIONS, display_rows

    slo = f"P99 &le; {slo_p99_s:g} s" + (f", TTFT P99 &le; {slo_ttft_s:g} s" if slo_ttft_s else "")
    body = [f"<h2>Cost at {slo}, ${gpu_hour_usd:g} per GPU-hour</h2>"]
    try:
        tables = cost_tables(found.bench, found.load, slo_p99_s, gpu_hour_usd, slo_ttft_s=slo_ttft_s)
    except QwenoptError as exc:
        return body + [f"<p>{html.escape(str(exc))}</p>"]
    for matrix in tables:
        body.append(f"<h3>{html.escape(title(matrix, slo_p99_s, slo_ttft_s, gpu_hour_usd))}</h3>")
        body.append(text_table(*display_rows(matrix, target=False)))
    body.append("<ul>" + "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(d)}</li>" for t, d in DEFINITIONS) + "</ul>")
    return body


def _series(rows: pd.DataFrame) -> pd.Series:
    """Each row's curve: its config, and its run where the config was measured in several (a search's trial and the
    fresh starts of `qwenopt confirm`): one line through the levels of different server starts would zigzag between
    them, and two levels at one rate would be one point."""
    runs = rows.groupby("config")["run_id"].transform("nunique")
    return pd.Series([c if n <= 1 else f"{c} · run {r}" for c, n, r in zip(rows["config"], runs, rows["run_id"])],
                     index=rows.index)


def _online(load: pd.DataFrame, slo_p99_s: float | None) -> list[str]:
    """Per workload and load axis: each config's latency percentiles against offered load, then everyone's goodput."""
    usable = load[~load["status"].isin(UNUSABLE_STATUSES)]
    whole = usable["class"].fillna("all") == "all"
    levels, classes = usable[whole], usable[~whole]
    body = ["<h2>Online: latency and goodput against offered load</h2>",
            "<p>Levels of class <i>all</i>; client-bound and errored levels are left out of the curves "
            "(they are in the table of every level).</p>"]
    slo_line = (slo_p99_s, f"SLO {slo_p99_s:g} s") if slo_p99_s else None
    for workload, group in levels.groupby("workload"):
        for axis, x_label in (("rate", "offered req/s"), ("concurrency", "concurrent users (closed loop)")):
            on_axis = group[pd.to_numeric(group[axis], errors="coerce") > 0]
            if on_axis.empty:
                continue
            body.append(f"<h3>{html.escape(str(workload))}: by {html.escape(x_label)}</h3>")
            goodput = {}
            for config, rows in on_axis.groupby(_series(on_axis)):
                x = pd.to_numeric(rows[axis], errors="coerce")
                curves = {"E2E P50 s": list(zip(x, rows["latency_p50_s"].astype(float))),
                          "E2E P99 s": list(zip(x, rows["latency_p99_s"].astype(float))),
                          "TTFT P50 s": list(zip(x, rows["ttft_p50_ms"].astype(float) / 1000)),
                          "TTFT P99 s": list(zip(x, rows["ttft_p99_ms"].astype(float) / 1000))}
                stalls = pd.to_numeric(rows.get("tail_stall_s", pd.Series(dtype=float)), errors="coerce")
                if stalls.notna().any():  # how much of the slowest requests' E2E other requests' steps took
                    curves["slowest 1%: stalls s"] = list(zip(x, stalls))
                body.append(f"<h4>{html.escape(config)}</h4>")
                body.append(line_chart(curves, x_label, "seconds", hline=slo_line))
                measured = rows["goodput_req_s"].astype(float)
                goodput[config] = list(zip(x, measured if measured.notna().any() else rows["req_s"].astype(float)))
            body.append("<h4>goodput (requests/s that met every SLO of the run; completed req/s where the rows "
                        "carry no goodput)</h4>")
            body.append(line_chart(goodput, x_label, "requests/s"))
            body += _per_class(classes[classes["workload"] == workload], axis, x_label)
    return body


CLASS_CURVES = (("ttft_p99_ms", 1e-3, "TTFT P99 s"), ("goodput_req_s", 1.0, "goodput req/s"))  # column, scale, axis


def _per_class(rows: pd.DataFrame, axis: str, x_label: str) -> list[str]:
    """For a --mix workload (its usable rows of classes other than all): each class's TTFT P99 and goodput, every
    config one line, so scheduling that favours one class over another shows (the gateway's priority classes, say)."""
    rows = rows[pd.to_numeric(rows[axis], errors="coerce") > 0]
    body = []
    if rows["class"].nunique() < 2:  # one class is the level itself
        return body
    for klass, group in rows.groupby("class", sort=False):
        for column, scale, y_label in CLASS_CURVES:
            series = {config: list(zip(pd.to_numeric(r[axis], errors="coerce"), r[column].astype(float) * scale))
                      for config, r in group.groupby(_series(group))}
            body.append(f"<h4>class {html.escape(str(klass))}: {html.escape(y_label)}</h4>")
            body.append(line_chart(series, x_label, y_label))
    return body


def build_report(found: Collection, slo_p99_s: float | None = None, gpu_hour_usd: float = 2.5,
                 slo_ttft_s: float | None = None) -> str:
    if found.bench.empty and found.load.empty and found.quality.empty and found.matrix.empty:
        raise QwenoptError("the files hold no qwenopt result rows")
    bench, load = found.bench.copy(), found.load.copy()
    if not bench.empty:
        bench["config"] = [config_label(r) for r in bench.to_dict("records")]
    if not load.empty:
        load["config"] = [online_label(r) for r in load.to_dict("records")]
        load["workload"] = [workload_label(r) for r in load.to_dict("records")]
    both = pd.concat([bench, load], ignore_index=True)
    env = {c: ", ".join(sorted({str(v) for v in both[c].dropna()})) or "-" if c in both else "-"
           for c in ("gpu_name", "driver", "torch", "transformers", "vllm", "weights")}
    if "gpu_uuid" in both and both["gpu_uuid"].notna().any():  # compare figures within one card (README, A/A run)
        env["cards"] = str(len(set(",".join(both["gpu_uuid"].dropna()).split(","))))
    kinds = "; ".join(f"{kind}: {', '.join(html.escape(f) for f in found.files(kind))}"
                      for kind in ("bench", "tune", "load", "quality", "matrix") if found.files(kind))
    body = [f"<h1>qwenopt report</h1><p>{len(bench)} offline cells and {len(load)} load rows. {kinds}. "
            f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
            "<p>" + "; ".join(f"<b>{k}</b> {html.escape(v)}" for k, v in env.items()) + "</p>"]
    body += [f"<p>{html.escape(w)}</p>" for w in found.warnings]
    if slo_p99_s is not None and not (bench.empty and load.empty):
        body += _matrices(found, slo_p99_s, slo_ttft_s, gpu_hour_usd)
    if not load.empty:
        from .report_tune import tune_sections

        body += tune_sections(load, slo_p99_s)
        body += _online(load, slo_p99_s)
    ok = bench[bench["status"] == "ok"] if not bench.empty else bench
    if not ok.empty:
        body.append("<h2>Offline: output throughput by batch size</h2>")
        for (inp, outp), group in ok.groupby(["input_len", "output_len"]):
            series = {name: list(zip(g["batch_size"], g["output_tok_s"])) for name, g in group.groupby("config")}
            body.append(f"<h3>input {inp} / output {outp} tokens</h3>")
            body.append(line_chart(series, "batch size", "output tokens/s"))
    if not found.quality.empty:
        body.append("<h2>Quality (perplexity on the bundled text)</h2>")
        body.append(table(found.quality.drop(columns=["file"])))
    for path, saved in (found.matrix.groupby("file") if not found.matrix.empty else []):
        body.append(f"<h2>Saved matrix {html.escape(str(path))}</h2>")
        body.append(table(saved.drop(columns=["file"]).dropna(axis=1, how="all")))
    if not load.empty:
        body.append("<h2>Every load level</h2>")
        body.append(table(load.reindex(columns=LEVEL_COLUMNS).sort_values(["config", "workload", "rate", "concurrency"])))
    if not bench.empty:
        body.append("<h2>Every offline cell</h2>")
        body.append(table(bench[CELL_COLUMNS].sort_values(["config", "input_len", "output_len", "batch_size"])))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}h3{margin-top:1.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>qwenopt report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
