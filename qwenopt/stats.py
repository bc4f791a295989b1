"""Latency and throughput from raw per-request samples (the samples are kept; these are derived)."""
from __future__ import annotations

import math

import numpy as np

from .engines.base import RequestSample

RELIABLE_P99_SAMPLES = 100  # fewer samples than this and P99 is just the maximum in disguise


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), NaN for no values."""
    return float(np.percentile(values, q)) if values else math.nan


def cell_metrics(iterations: list[list[RequestSample]], walls: list[float], input_len: int, output_len: int,
                 static_batch: bool = False) -> dict:
    """Row metrics from the timed iterations of one cell.

    Latencies come from the per-request samples; throughput is the tokens of all iterations over the
    host wall-clock time of the engine calls that produced them (`walls`, one per iteration).
    `samples` counts the requests measured; `timings` the independent timings under the percentiles:
    a static batch (every request in it has the batch's latency) gives one per iteration.
    """
    samples = [s for batch in iterations for s in batch]
    e2e = [s.e2e_s for s in samples]
    ttft = [s.ttft_s for s in samples]
    tpot = [(s.e2e_s - s.ttft_s) / (output_len - 1) for s in samples] if output_len > 1 else []
    wall = sum(walls)
    requests = len(samples)
    return {
        "samples": requests,
        "timings": len(iterations) if static_batch else requests,
        "latency_p50_s": percentile(e2e, 50),
        "latency_p90_s": percentile(e2e, 90),
        "latency_p99_s": percentile(e2e, 99),
        "latency_mean_s": float(np.mean(e2e)) if e2e else math.nan,
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "tpot_p50_ms": percentile(tpot, 50) * 1e3,
        "tpot_p99_ms": percentile(tpot, 99) * 1e3,
        "output_tok_s": requests * output_len / wall,
        "total_tok_s": requests * (input_len + output_len) / wall,
        "req_s": requests / wall,
    }


def count_mismatches(iterations: list[list[RequestSample]], output_len: int) -> int:
    """Requests whose produced token count is not the forced output length."""
    return sum(1 for batch in iterations for s in batch if s.output_tokens != output_len)
