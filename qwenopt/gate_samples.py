"""The independent timings behind a compared cell, and the bootstrap over them, for the CI gate (compare.py).

A cell's units come from its samples sidecar: one unit per repeat for a bench cell (a static batch's requests share
their batch's timing), one per ok request for a load level. A side may hold several runs of the cell (a folder of
run files; within one file the last run of a cell counts): then the bootstrap is hierarchical, runs first and the units of
each picked run second, so the drift between runs (a busy machine, another process start) widens the interval
instead of passing for a change.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def bootstrap(runs: list[np.ndarray], statistic, resamples: int, rng) -> np.ndarray:
    """The statistic of `resamples` resamples: runs picked with replacement, then each picked run's rows (one row
    per timing) with replacement, pooled. One run is the plain bootstrap over its rows."""
    if len(runs) == 1:
        units = runs[0]
        picks = rng.integers(0, len(units), size=(resamples, len(units)))
        return statistic_of(units[picks], statistic)
    out = np.empty(resamples)
    for i in range(resamples):
        chosen = [runs[j] for j in rng.integers(0, len(runs), size=len(runs))]
        pooled = np.concatenate([u[rng.integers(0, len(u), size=len(u))] for u in chosen])
        out[i] = statistic_of(pooled[None], statistic)[0]
    return out


def pooled_point(runs: list[np.ndarray], statistic) -> float:
    """The statistic over every run's timings together."""
    return float(statistic_of(np.concatenate(runs)[None], statistic)[0])


def statistic_of(resampled: np.ndarray, statistic) -> np.ndarray:
    flat = resampled.reshape(len(resampled), -1)
    if statistic == "mean":
        return flat.mean(axis=1)
    return np.percentile(flat, statistic, axis=1)


def units(kind: str, row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """The row's independent timings from its sidecar: arrays of shape (units, values per unit) per series."""
    return _bench_units(row, records) if kind == "bench" else _load_units(row, records)


def _bench_units(row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """One unit per repeat: a static batch's requests share one timing, so the repeat is what was measured."""
    match = [r for r in records if r.get("status") == "ok" and all(
        same(r.get(k), row.get(k)) for k in ("run_id", "regime", "batch_size", "input_len", "output_len"))]
    samples = match[-1].get("samples") if match else None
    batch = int(float(row["batch_size"]))
    if not samples or len(samples) % batch:
        return None
    output_len = int(float(row["output_len"]))
    e2e = np.array([s["e2e_s"] for s in samples], dtype=float).reshape(-1, batch)
    ttft = np.array([s["ttft_s"] for s in samples], dtype=float).reshape(-1, batch)
    tokens = np.array([s["output_tokens"] for s in samples], dtype=float).reshape(-1, batch)
    units = {"e2e": e2e, "ttft": ttft, "tok_s": (tokens.sum(axis=1) / e2e.max(axis=1))[:, None]}
    if output_len > 1:
        units["tpot"] = (e2e - ttft) / (output_len - 1)
    return units


def _load_units(row: dict, records: list[dict]) -> dict[str, np.ndarray] | None:
    """One unit per ok request of the level (and class); throughput has one timing per run, so it stays a point.

    A load sidecar record belongs to a row by run_id (and level, where both have one) and holds its requests
    under `requests` (or `samples`), each a RequestRecord as JSON (outcome, cls, warmup, ttft_s, e2e_s, tokens).
    """
    match = [r for r in records if same(r.get("run_id"), row.get("run_id"))
             and ("level" not in r or row.get("level") is None or same(r["level"], row["level"]))]
    if not match:
        return None
    requests = match[-1].get("requests", match[-1].get("samples")) or []
    cls = row.get("class")
    ok = [q for q in requests if q.get("outcome", "ok") == "ok" and not q.get("warmup")
          and (cls in (None, "", "all") or q.get("cls", q.get("class")) == cls)
          and q.get("e2e_s") is not None and q.get("ttft_s") is not None]
    if not ok:
        return None
    e2e = np.array([q["e2e_s"] for q in ok], dtype=float)[:, None]
    ttft = np.array([q["ttft_s"] for q in ok], dtype=float)[:, None]
    tokens = np.array([q.get("output_tokens") or 0 for q in ok], dtype=float)[:, None]
    units = {"e2e": e2e, "ttft": ttft}
    if (tokens > 1).all():
        units["tpot"] = (e2e - ttft) / (tokens - 1)
    return units


def same(a, b) -> bool:
    return text(a) == text(b)


def text(value) -> str:
    """Key values as text, so a missing value matches a missing value and 8 matches 8.0 and '8'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return str(int(number)) if number.is_integer() else value
    return str(value)
