"""Where a level's slowest requests spent their time: first token, steady decoding, and stalls.

    python3 benchmarks/tail_breakdown.py SAMPLES.jsonl [--rows RESULT.csv] [--tail 0.01] [--stall 2.0]

For each open-loop level of a load run's samples (the `.samples.jsonl` that `load` and `tune` write next to their
CSV), take the requests at or above the level's (1 - tail) quantile of E2E latency and split each one's E2E into
  TTFT           the intended arrival to the first token,
  decode         the chunk gaps at up to --stall x the level's median gap, and
  stalls         the rest of each longer gap: the steps in which the engine did something other than decode this
                 request at its usual pace; with chunked prefill, mostly other requests' prefills sharing the step.
Why: E2E P99 is what the SLO judges, and a knob can only move it through one of these parts. A faster decode kernel
shortens `decode`; it cannot shorten stalls that come from the prefills of the arrivals during a request's life.
With vLLM's --stream-interval N above 1 a chunk carries N steps, so a stall hides among them: compare such levels by
their tail E2E and decode, not by their stall count.
With --rows (the run's CSV) each level also names its tune trial and configuration (or, in a plain load run,
its engine arguments). Rows are printed as markdown.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd


def breakdown(samples: list[dict], tail: float, stall: float) -> dict:
    """The tail requests' mean TTFT, decode and stall seconds, and their stall count, from one level's samples."""
    ok = [s for s in samples if not s["warmup"] and s["outcome"] == "ok" and len(s["token_times_s"]) > 1]
    if not ok:
        return {}
    e2e = np.array([s["e2e_s"] for s in ok])
    median_gap = float(np.median(np.concatenate([np.diff(s["token_times_s"]) for s in ok])))
    worst = [s for s, e in zip(ok, e2e) if e >= np.quantile(e2e, 1 - tail)]
    parts = []
    for s in worst:
        gaps = np.diff(s["token_times_s"])
        long = gaps > stall * median_gap
        parts.append((s["ttft_s"], gaps[~long].sum() + long.sum() * median_gap,
                      (gaps[long] - median_gap).sum(), long.sum(), s["e2e_s"]))
    ttft, decode, stalled, count, tail_e2e = np.mean(parts, axis=0)
    return {"requests": len(ok), "tail requests": len(worst), "median gap ms": median_gap * 1e3,
            "tail E2E s": tail_e2e, "TTFT s": ttft, "decode s": decode, "stalls s": stalled, "stalls": count}


def table(samples_path: str, rows_path: str | None, tail: float, stall: float) -> pd.DataFrame:
    rows = pd.read_csv(rows_path) if rows_path else None
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
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    print("| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns))
    for row in frame.itertuples(index=False):
        print("| " + " | ".join(cell(v) for v in row) + " |")


if __name__ == "__main__":
    main()
