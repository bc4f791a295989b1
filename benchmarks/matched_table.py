"""The matched cross-check's table (benchmarks/online_h100.py matched): vllm bench serve and qwenopt load, the same
rate, request count and temperature, three seeds each, on one vllm serve.

    python3 benchmarks/matched_table.py results/h200/matched     # prints the table and writes summary.md there

Per run: request and output-token throughput, TTFT / TPOT / E2E as each tool reports them. Then per tool the mean
over its seeds and the seeds' spread (min-max), and qwenopt's mean against vllm bench's with a two-sample t statistic
(Welch), so a difference can be read against how far one tool's own seeds already fall apart. The figures are the
tools' own outputs (vllm bench's JSON, qwenopt's rows); nothing is computed here but means, spreads and ratios.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

METRICS = ("req_s", "output_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "itl_p99_ms", "e2e_p50_s",
           "e2e_p99_s")
VLLM_KEYS = {"req_s": "request_throughput", "output_tok_s": "output_throughput", "ttft_p50_ms": "median_ttft_ms",
             "ttft_p99_ms": "p99_ttft_ms", "tpot_p50_ms": "median_tpot_ms", "itl_p99_ms": "p99_itl_ms",
             "e2e_p50_s": "median_e2el_ms", "e2e_p99_s": "p99_e2el_ms"}
QWENOPT_KEYS = {"req_s": "req_s", "output_tok_s": "output_tok_s", "ttft_p50_ms": "ttft_p50_ms",
                "ttft_p99_ms": "ttft_p99_ms", "tpot_p50_ms": "tpot_p50_ms", "itl_p99_ms": "itl_p99_ms",
                "e2e_p50_s": "latency_p50_s", "e2e_p99_s": "latency_p99_s"}


def runs(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("vllm-bench*.json")):
        data = json.loads(path.read_text())
        tool = "vllm bench (temperature 0)" if "-t0_" in path.name else "vllm bench (server default)"
        row = {"tool": tool, "seed": int(path.stem.rsplit("seed", 1)[1])}
        for name, key in VLLM_KEYS.items():
            row[name] = data[key] / (1e3 if name.endswith("_s") and name.startswith("e2e") else 1)
        rows.append(row)
    for _, r in pd.read_csv(folder / "load_matched_text.csv").iterrows():
        rows.append({"tool": "qwenopt load (text)", "seed": int(r["seed"]),
                     **{name: float(r[key]) for name, key in QWENOPT_KEYS.items()},
                     "send_lag_p99_ms": float(r["send_lag_p99_ms"]), "status": r["status"]})
    return pd.DataFrame(rows)


def welch_t(a: pd.Series, b: pd.Series) -> float:
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return (a.mean() - b.mean()) / se if se > 0 else math.nan


def table(frame: pd.DataFrame) -> str:
    lines = ["| tool | seed | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for _, r in frame.iterrows():
        lines.append(f"| {r['tool']} | {r['seed']} | " + " | ".join(f"{r[m]:,.3g}" if r[m] < 100 else f"{r[m]:,.0f}"
                                                                   for m in METRICS) + " |")
    ours = frame[frame.tool.str.startswith("qwenopt")]
    anchor = frame[frame.tool == "vllm bench (temperature 0)"]
    lines += ["", "| metric | vllm bench t=0: mean (seeds' min-max) | qwenopt: mean (min-max) | qwenopt / vllm bench "
              "| Welch t |", "|---|---|---|---|---|"]
    for m in METRICS:
        a, b = ours[m], anchor[m]
        lines.append(f"| {m} | {b.mean():.4g} ({b.min():.4g}-{b.max():.4g}) | {a.mean():.4g} ({a.min():.4g}-"
                     f"{a.max():.4g}) | {a.mean() / b.mean() - 1:+.1%} | {welch_t(a, b):+.2f} |")
    if "send_lag_p99_ms" in ours:
        lines.append(f"\nqwenopt's send-lag P99: {ours.send_lag_p99_ms.max():.2f} ms at most; statuses: "
                     f"{', '.join(sorted(set(ours.status)))}")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    text = table(runs(folder))
    (folder / "summary.md").write_text(text + "\n")
    print(text)
