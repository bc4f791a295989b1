"""The CI gate: compare a new result file with a baseline, cell by cell, and fail on a regression.

Cells match on what was run (regime, model, weights, quant, parallelism, decode mode, batch, lengths); where
a file holds several runs of a cell, its last row counts. A cell that was ok in the baseline and is missing or
failed in the new file is a regression too.
"""
from __future__ import annotations

import pandas as pd

from .errors import QwenoptError

KEY = ["regime", "model", "weights", "quant", "tp", "pp", "decode_mode", "batch_size", "input_len", "output_len"]
# metric -> +1 when higher is better, -1 when lower is better
METRICS = {"output_tok_s": +1, "req_s": +1, "latency_p50_s": -1, "latency_p99_s": -1, "ttft_p50_ms": -1,
           "tpot_p50_ms": -1}
DEFAULT_METRICS = ("output_tok_s", "latency_p50_s", "tpot_p50_ms")


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise QwenoptError(f"--max-regression must be a fraction or a percentage, got {text!r}") from None
    if not 0 <= value < 1:
        raise QwenoptError(f"--max-regression must be between 0% and 100%, got {text!r}")
    return value


def compare(base: pd.DataFrame, new: pd.DataFrame, max_regression: float,
            metrics: tuple[str, ...] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per (cell, metric): base and new values, the change in the metric's good direction, and a verdict."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise QwenoptError(f"cannot gate on {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    base, new = _keyed(base), _keyed(new)
    base_ok = base[base["status"] == "ok"].drop_duplicates(KEY, keep="last")
    if base_ok.empty:
        raise QwenoptError("the baseline file has no ok cell to compare against")
    latest = new.drop_duplicates(KEY, keep="last").set_index(KEY)
    out = []
    for cell in base_ok.to_dict("records"):
        key = tuple(cell[k] for k in KEY)
        found = latest.loc[key] if key in latest.index else None
        for metric in metrics:
            entry = {**{k: cell[k] for k in KEY}, "metric": metric, "base": cell[metric]}
            if found is None or found["status"] != "ok":
                entry.update(new=None, change=None, verdict="missing" if found is None else f"new {found['status']}")
            else:
                change = METRICS[metric] * (found[metric] - cell[metric]) / cell[metric]
                entry.update(new=found[metric], change=change,
                             verdict="regression" if change < -max_regression else "ok")
            out.append(entry)
    return pd.DataFrame(out)


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns as text, so a missing value matches a missing value and 8 matches 8.0."""
    frame = frame.copy()
    for column in KEY:
        frame[column] = [("" if pd.isna(v) else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
                         for v in frame[column]]
    return frame


def failed(report: pd.DataFrame) -> bool:
    return bool((report["verdict"] != "ok").any())
