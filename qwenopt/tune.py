"""Tuning: the batch size with the most throughput whose P99 latency still meets an SLO.

Every probe is a real bench cell on one loaded engine (warm-up, timed repeats, a result row). The
search doubles the batch until a cell misses the SLO (or fails: out of memory is an upper bound too),
then bisects between the last batch that met it and the first that did not. It assumes latency grows
with batch size, which holds for static batches on one engine.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .workload import Cell


@dataclass(frozen=True)
class BatchSearch:
    slo_p99_s: float
    input_len: int
    output_len: int
    max_batch: int


def meets_slo(row: dict, slo_p99_s: float) -> bool:
    return row.get("status") == "ok" and row.get("latency_p99_s") is not None and row["latency_p99_s"] <= slo_p99_s


def next_batch(verdicts: dict[int, bool], max_batch: int) -> int | None:
    """The next batch to measure given {batch: met the SLO}, or None when the boundary is found."""
    if not verdicts:
        return 1
    passed = [b for b, ok in verdicts.items() if ok]
    if not passed:
        return None  # even batch 1 misses the SLO
    low = max(passed)
    above = [b for b, ok in verdicts.items() if not ok and b > low]
    if not above:
        return min(low * 2, max_batch) if low < max_batch else None
    high = min(above)
    return (low + high) // 2 if high - low > 1 else None


@dataclass
class Searcher:
    """Feeds cells to the sweep runner one at a time, choosing each from the rows before it."""

    search: BatchSearch
    verdicts: dict[int, bool] = field(default_factory=dict)

    def cells(self) -> Iterator[Cell]:
        while (batch := next_batch(self.verdicts, self.search.max_batch)) is not None:
            yield Cell(batch, self.search.input_len, self.search.output_len)

    def record(self, row: dict) -> None:
        self.verdicts[int(row["batch_size"])] = meets_slo(row, self.search.slo_p99_s)


def best_row(rows: list[dict], slo_p99_s: float) -> dict | None:
    """The row with the highest output throughput among those that meet the SLO."""
    within = [r for r in rows if meets_slo(r, slo_p99_s)]
    return max(within, key=lambda r: r["output_tok_s"]) if within else None
