"""A self-contained HTML report from result files: throughput charts per workload, the cost matrix, every cell.

Running and reporting are separate steps: the report re-reads saved CSVs and needs no GPU, no network and
no plotting library (the charts are inline SVG).
"""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone

import pandas as pd

from .cost import config_label, cost_matrix
from .errors import QwenoptError

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
CELL_COLUMNS = ["config", "batch_size", "input_len", "output_len", "status", "output_tok_s", "latency_p50_s",
                "latency_p99_s", "ttft_p50_ms", "tpot_p50_ms", "gpu_mem_peak_gib", "roofline_eff", "samples"]


def line_chart(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               width: int = 640, height: int = 320) -> str:
    """An SVG line chart, x on a log2 axis (batch sizes), one line per series."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    left, right, top, bottom = 70, 170, 20, 45
    xs = [math.log2(x) for x, _ in points]
    x_min, x_max = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_max = max(y for _, y in points) * 1.1 or 1.0

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
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>')
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
}


def table(frame: pd.DataFrame) -> str:
    """An HTML table with numbers a person can read: no float noise, thousands separated, '-' for empty."""
    head = "".join(f"<th>{html.escape(SHORT_NAMES.get(c, c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def build_report(frame: pd.DataFrame, files: list[str], slo_p99_s: float | None = None,
                 gpu_hour_usd: float = 2.5) -> str:
    if frame.empty:
        raise QwenoptError("the result files hold no rows")
    frame = frame.copy()
    frame["config"] = [config_label(r) for r in frame.to_dict("records")]
    ok = frame[frame["status"] == "ok"]
    env = {c: ", ".join(sorted({str(v) for v in frame[c].dropna()})) or "-"
           for c in ("gpu_name", "driver", "torch", "transformers", "vllm", "weights")}
    body = [f"<h1>qwenopt report</h1><p>{len(frame)} cells from {', '.join(html.escape(f) for f in files)}; "
            f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
            "<p>" + "; ".join(f"<b>{k}</b> {html.escape(v)}" for k, v in env.items()) + "</p>"]
    if slo_p99_s is not None:
        body.append(f"<h2>Cost at P99 &le; {slo_p99_s:g} s, ${gpu_hour_usd:g} per GPU-hour</h2>")
        for (inp, outp), _ in ok.groupby(["input_len", "output_len"]):
            try:
                matrix = cost_matrix(frame, slo_p99_s, gpu_hour_usd, input_len=inp, output_len=outp)
            except QwenoptError as exc:
                body.append(f"<p>input {inp} / output {outp}: {html.escape(str(exc))}</p>")
                continue
            body.append(f"<h3>input {inp} / output {outp} tokens, relative to {html.escape(matrix.attrs['baseline'])}</h3>")
            body.append(table(matrix.drop(columns=["input_len", "output_len"])))
    body.append("<h2>Output throughput by batch size</h2>")
    for (inp, outp), group in ok.groupby(["input_len", "output_len"]):
        series = {name: list(zip(g["batch_size"], g["output_tok_s"])) for name, g in group.groupby("config")}
        body.append(f"<h3>input {inp} / output {outp} tokens</h3>")
        body.append(line_chart(series, "batch size", "output tokens/s"))
    body.append("<h2>Every cell</h2>")
    cells = frame[CELL_COLUMNS].sort_values(["config", "input_len", "output_len", "batch_size"])
    body.append(table(cells))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}h3{margin-top:1.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>qwenopt report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
