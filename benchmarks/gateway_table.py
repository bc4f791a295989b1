"""The gateway proof's table (issue 12): per configuration, load level and class, from the recorded samples.

Each request is re-judged from its sidecar record, so goodput can be read at more than one SLO without another
GPU run: the one the proof was run with (TTFT 200 ms) and a web-service one for whole answers (E2E 3 s).

    python3 benchmarks/gateway_table.py results/h100/gateway > results/h100/gateway/summary.md
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qwenopt.results import read_load, read_samples  # noqa: E402
from qwenopt.serving.metrics import level_rows  # noqa: E402
from qwenopt.serving.samples import RequestRecord  # noqa: E402

CONFIGS = {"a_fcfs": "(a) FCFS, direct", "b_priority": "(b) priority via gateway",
           "c_admission": "(c) priority + admission", "d_priority_chunk2048": "(d) as (b), 2,048-token chunks",
           "e_classcap_chunk2048": "(e) (d) + low class capped"}
SLOS = ("ttft=200ms", "e2e=3s")


def main(folder: Path) -> None:
    rates = [float(r) for r in (folder / "rates.txt").read_text().split(",")]
    names = {rate: name for rate, name in zip(rates, ("0.8x", "1.0x", "1.5x"))}
    print("| config | load | class | ok / sent | shed (429) | timeouts | TTFT P50 / P99 ms | E2E P50 / P99 s "
          "| TPOT P50 ms | " + " | ".join(f"goodput {s} req/s" for s in SLOS) + " |")
    print("|---" * (9 + len(SLOS)) + "|")
    for stem, label in CONFIGS.items():
        csv = folder / f"{stem}.csv"
        if not csv.is_file():
            continue
        gateway = read_load(csv)["gateway"].dropna()
        if len(gateway):
            print(f"<!-- {label}: gateway {gateway.iloc[0]} -->")
        for level in read_samples(csv):
            records = [RequestRecord(**s) for s in level["samples"]]
            judged = {slo: {r["class"]: r for r in level_rows(records, {"slo": slo})} for slo in SLOS}
            for klass, row in judged[SLOS[0]].items():
                measured = [r for r in records if not r.warmup and (klass == "all" or r.cls == klass)]
                shed = Counter("429" in (r.error or "") for r in measured)[True]
                goodputs = " | ".join(f"{judged[slo][klass]['goodput_req_s']:.2f}" for slo in SLOS)
                print(f"| {label} | {names.get(level['rate'], level['rate'])} ({level['rate']:g} req/s) | {klass} "
                      f"| {row['completed']} / {row['sent']} | {shed} | {row['timeouts']} "
                      f"| {row['ttft_p50_ms']:.0f} / {row['ttft_p99_ms']:.0f} "
                      f"| {row['latency_p50_s']:.2f} / {row['latency_p99_s']:.2f} | {row['tpot_p50_ms']:.1f} "
                      f"| {goodputs} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/h100/gateway"))
