"""One row per request from a load run's samples file (.samples.jsonl), gzipped: small enough to commit where the
samples themselves (every token's time) are not.

    python3 benchmarks/requests_table.py results/h200/tune/v2/tune_int4-fast.samples.jsonl OUT.requests.csv.gz \
        [--rows results/h200/tune/v2/tune_int4-fast.csv]

With --rows (the run's result CSV) each request also names its tune trial. A level is keyed by run_id and
timestamp: one `tune` process keeps its run_id across trials and numbers each trial's levels from 1 again.
"""
from __future__ import annotations

import argparse
import json

import pandas as pd

LEVEL = ("run_id", "timestamp", "level", "mode", "rate", "concurrency", "seed")
REQUEST = ("index", "cls", "warmup", "intended_s", "send_lag_s", "input_len", "output_len", "outcome", "ttft_s",
           "e2e_s")


def table(samples_path: str, rows_path: str | None = None) -> pd.DataFrame:
    records = [json.loads(line) for line in open(samples_path) if line.strip()]
    frame = pd.DataFrame([{**{k: r.get(k) for k in LEVEL}, **{k: s.get(k) for k in REQUEST}}
                          for r in records for s in r["samples"]])
    if rows_path:
        rows = pd.read_csv(rows_path, dtype={"run_id": str})
        if "trial" in rows:
            trials = rows[["run_id", "timestamp", "trial"]].drop_duplicates(["run_id", "timestamp"])
            frame = trials.merge(frame, on=["run_id", "timestamp"], how="right")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("out")
    parser.add_argument("--rows", help="the run's result CSV, for each request's tune trial")
    args = parser.parse_args()
    frame = table(args.samples, args.rows)
    frame.to_csv(args.out, index=False, float_format="%.6g")
    levels = frame[["run_id", "timestamp"]].drop_duplicates().shape[0]
    print(f"{len(frame)} requests from {levels} levels -> {args.out}")


if __name__ == "__main__":
    main()
