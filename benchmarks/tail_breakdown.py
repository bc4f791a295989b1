"""Where a level's slowest requests spent their time: first token, steady decoding, and stalls.

    python3 benchmarks/tail_breakdown.py SAMPLES.jsonl [--rows RESULT.csv] [--tail 0.01] [--stall 2.0]

For each open-loop level of a load run's samples (the `.samples.jsonl` that `load` and `tune` write next to their
CSV): the tail_ttft_s / tail_decode_s / tail_stall_s split that every load row now carries (its definition is in
qwenopt/serving/metrics.py, the one place for it), with the slowest requests' count, mean E2E and number of stalls.
This script splits runs recorded before those columns existed, from their samples, and at other --tail / --stall.
Why: E2E P99 is what the SLO judges, and a knob can only move it through one of these parts. A faster decode kernel
shortens `decode`; it cannot shorten stalls that come from the prefills of the arrivals during a request's life.
With vLLM's --stream-interval N above 1 a chunk carries N steps, so a stall hides among them: compare such levels by
their tail E2E and decode, not by their stall count.
With --rows (the run's CSV) each level also names its tune trial and configuration (or, in a plain load run,
its engine arguments). Rows are printed as markdown.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qwenopt.console import pipe_table  # noqa: E402
from qwenopt.serving.metrics import itl_s, slowest, stall_gaps, tail_split  # noqa: E402
from qwenopt.serving.samples import RequestRecord  # noqa: E402

FIELDS = {f.name for f in dataclasses.fields(RequestRecord)}


def breakdown(samples: list[dict], tail: float, stall: float) -> dict:
    """One level's split, from its samples (dicts of RequestRecord fields)."""
    ok = [RequestRecord(**{k: v for k, v in s.items() if k in FIELDS}) for s in samples
          if not s["warmup"] and s["outcome"] == "ok" and len(s["token_times_s"]) > 1]
    if not ok:
        return {}
    median_gap = float(np.median(itl_s(ok)))
    worst = slowest(ok, tail)
    split = tail_split(ok, median_gap, tail, stall)
    return {"requests": len(ok), "tail requests": len(worst), "median gap ms": median_gap * 1e3,
            "tail E2E s": float(np.mean([r.e2e_s for r in worst])), "TTFT s": split["tail_ttft_s"],
            "decode s": split["tail_decode_s"], "stalls s": split["tail_stall_s"],
            "stalls": float(np.mean([stall_gaps(r, median_gap, stall).size for r in worst]))}


def table(samples_path: str, rows_path: str | None, tail: float, stall: float) -> pd.DataFrame:
    rows = pd.read_csv(rows_path, dtype={"run_id": str}) if rows_path else None
    out = []
    for line in open(samples_path):
        level = json.loads(line)
        if level.get("mode") != "open":
            continue
        name = {"rate": level["rate"]}
        match = None if rows is None else rows[(rows["run_id"] == level["run_id"])
                                               & (rows["timestamp"] == level["timestamp"])]
        if match is not None and len(match) and "trial" in rows:
            name = {"trial": int(match["trial"].iloc[0]), "config": match["trial_config"].iloc[0], **name}
        elif match is not None and len(match):  # a plain load run (qwenopt confirm's): its engine arguments
            name = {"engine_args": match["engine_args"].iloc[0], **name}
        out.append({**name, **breakdown(level["samples"], tail, stall)})
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("--rows", help="the run's result CSV, to name each level's tune trial")
    parser.add_argument("--tail", type=float, default=0.01, help="the slowest fraction of requests (0.01: P99 up)")
    parser.add_argument("--stall", type=float, default=2.0, help="a gap this many times the median is a stall")
    args = parser.parse_args()
    frame = table(args.samples, args.rows, args.tail, args.stall)
    print(pipe_table(list(frame.columns), [[f"{v:.3g}" if isinstance(v, float) else v for v in row]
                                           for row in frame.itertuples(index=False)]))


if __name__ == "__main__":
    main()
