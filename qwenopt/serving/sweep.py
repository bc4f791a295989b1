"""Load levels back to back on one server: each level's rows appended as soon as it finishes.

A run is a list of levels (`--rate 1,2,4`, `--concurrency 1,4,16`) or a sweep (`--rate sweep`): first one user
at a time (the synchronous rate, GuideLLM's low end), then a closed-loop burst of many users (the saturation
throughput), then open-loop rates placed between the two (schedule.sweep_rates). Every level, the measuring
ones included, is a row. Ctrl-C writes the rows of the finished part of the level that was running.
"""
from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QwenoptError
from .client import Target
from .loadgen import Level, default_workers, run_level
from .samples import RequestRecord

SWEEP_USERS = 256  # the burst's users: vLLM 0.26 schedules at most 256 sequences at once by default


@dataclass
class LoadRun:
    target: Target
    workload: object  # workload.Workload: lengths, classes and prompts
    mode: str  # open | closed
    values: list | str  # rates (open), users (closed), or "sweep"
    out: Path
    context: dict = field(default_factory=dict)  # identity columns of every row (endpoint, server, regime, ...)
    arrival: str = "poisson"
    burstiness: float = 1.0
    duration_s: float | None = None
    num_requests: int | None = None
    warmup: int = 0
    seed: int = 0
    max_concurrency: int | None = None
    workers: int | None = None  # None: by the offered load
    slo: str | None = None
    max_send_lag_ms: float = 10.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    columns: list[str] | None = None  # the CSV's columns; None: the load schema's (tune adds its trial columns)
    annotate: Callable[[dict], dict] | None = None  # extra columns of a row from its figures (tune's SLO verdict)

    def level(self, mode: str, value: float | int, number: int = 0) -> Level:
        """Level `number`'s runner settings (its own prompts: Workload.for_level); the plan stream checks its options
        now, before anything is sent."""
        from .schedule import closed_loop, open_loop

        prompts = self.workload.for_level(number) if number else self.workload
        if mode == "open":
            plans = functools.partial(open_loop, self.workload, value, arrival=self.arrival,
                                      burstiness=self.burstiness, duration_s=self.duration_s,
                                      num_requests=self.num_requests, warmup=self.warmup, seed=self.seed)
            workers = self.workers or default_workers(value, None, self.mean_output_len())
            level = Level(plans, "open", max_concurrency=self.max_concurrency, workers=workers, prompts=prompts)
        else:
            plans = functools.partial(closed_loop, self.workload, num_requests=self.num_requests, warmup=self.warmup)
            level = Level(plans, "closed", concurrency=int(value), duration_s=self.duration_s,
                          workers=self.workers or default_workers(None, int(value), 0), prompts=prompts)
        plans()  # eager checks (bounds, request budget) raise here
        return level

    def mean_output_len(self) -> float:
        """Tokens per request, from the workload's first 200 requests: what a worker's chunk rate depends on."""
        return sum(self.workload.sample(i)[2] for i in range(200)) / 200

    def expected(self, mode: str, value) -> float | None:
        """About how many requests the level sends, warm-up included; None when only time bounds a closed loop."""
        from .schedule import expected_requests

        count = expected_requests(value if mode == "open" else None, self.duration_s, self.num_requests)
        return None if math.isinf(count) else math.ceil(count) + self.warmup

    def context_of(self, number: int, mode: str, value) -> dict:
        return {**self.context, "run_id": self.run_id, "level": number, "mode": mode,
                "arrival": self.arrival if mode == "open" else None,
                "burstiness": self.burstiness if mode == "open" else None,
                "rate": value if mode == "open" else None, "concurrency": value if mode == "closed" else None,
                "duration_s": self.duration_s, "num_requests": self.num_requests,
                "workload": self.workload.describe(), "timeout_s": self.target.timeout_s, "seed": self.seed,
                "slo": self.slo, "max_send_lag_ms": self.max_send_lag_ms}


def write_level(run: LoadRun, number: int, mode: str, value, records: list[RequestRecord],
                extra: dict | None = None, interrupted: bool = False) -> list[dict]:
    """The level's rows (per class, then the total) appended to the CSV, its samples to the sidecar."""
    from ..results import append_csv, append_samples
    from ..schema import LOAD_COLUMNS
    from .metrics import level_rows, sidecar_record

    extra = dict(extra or {})
    energy_j = extra.pop("energy_j", math.nan)
    rows = level_rows(records, {**run.context_of(number, mode, value), **extra}, classes=run.workload.class_names)
    for row in rows:
        if row["class"] == "all":  # the GPU's energy counter over the level, per ok output token (no class split)
            tokens = sum(r.output_tokens or 0 for r in records if r.outcome == "ok" and not r.warmup)
            row["energy_j_per_tok"] = energy_j / tokens if tokens and math.isfinite(energy_j) else math.nan
        if interrupted:  # a level cut short by Ctrl-C: its figures are of the requests that finished
            row["error"] = "interrupted (Ctrl-C)" + (f"; {row['error']}" if row["error"] else "")
        if run.annotate:
            row.update(run.annotate(row))
        append_csv(run.out, row, run.columns or LOAD_COLUMNS)
    append_samples(run.out, sidecar_record(rows, records))
    return rows


def run_levels(run: LoadRun, begin: Callable[[int, str, object, float | None], Callable[[RequestRecord], None]],
               finish: Callable[[list[dict]], None], measure: Callable[[], object] | None = None) -> list[dict]:
    """Every level in turn; `begin(number, mode, value, expected requests or None)` announces a level and returns
    its per-record callback, `finish` gets its rows.

    `measure` is a context manager factory whose object has `summary()` (the GPU sampler): its columns join the row.
    """
    todo = [(run.mode, v) for v in run.values] if run.values != "sweep" else [("closed", 1), ("closed", SWEEP_USERS)]
    levels = [run.level(mode, value, n) for n, (mode, value) in enumerate(todo, 1)]  # all checked before the first
    done: list[dict] = []
    number = 0
    while todo:
        (mode, value), level = todo.pop(0), levels.pop(0)
        number += 1
        done += run_one(run, number, mode, value, begin, finish, measure, level)
        if run.values == "sweep" and number == 2:  # the synchronous rate and the saturation throughput are known
            low, high = done_total(done, 1)["req_s"], done_total(done, 2)["req_s"]
            if not (math.isfinite(low) and math.isfinite(high)):
                raise QwenoptError("the sweep could not measure the server's rates (no request succeeded); "
                                   "see the rows written")
            from .schedule import sweep_rates

            todo = [("open", rate) for rate in sweep_rates(low, high)]
            levels = [run.level(m, v, n) for n, (m, v) in enumerate(todo, number + 1)]
    return done


def run_one(run: LoadRun, number: int, mode: str, value, begin, finish, measure=None,
            level: Level | None = None) -> list[dict]:
    """One level on the run's target: announced with `begin`, measured (under `measure`, the GPU sampler), its
    rows appended and passed to `finish`; Ctrl-C writes the finished part of the level, then propagates."""
    import contextlib

    from .server_metrics import prefix_cache_counters, prefix_cache_hit_rate

    level = level or run.level(mode, value, number)
    # the server's own counters, also when a gateway stands in front of it (the endpoint column is the server's)
    url = run.context.get("endpoint") or getattr(run.target, "base_url", None)
    cache_before = prefix_cache_counters(url)  # read before the level's clock starts, and after it drained
    on_record = begin(number, mode, value, run.expected(mode, value))
    sampler = measure() if measure else contextlib.nullcontext()
    with sampler as gpu:
        try:
            records = run_level(run.target, level, on_record, inline=False)
        except KeyboardInterrupt as interrupt:
            partial = getattr(interrupt, "records", [])
            if partial:
                finish(write_level(run, number, mode, value, partial, _gpu(gpu), interrupted=True))
            raise
    cache = prefix_cache_hit_rate(cache_before, prefix_cache_counters(url))
    rows = write_level(run, number, mode, value, records, {**_gpu(gpu), **cache})
    finish(rows)
    return rows


def done_total(rows: list[dict], number: int) -> dict:
    return next(r for r in rows if r["level"] == number and r["class"] == "all")


def _gpu(sampler) -> dict:
    """The sampler's columns, plus its energy-counter joules over the level (write_level turns them into J/token)."""
    if sampler is None or not hasattr(sampler, "summary"):
        return {}
    return {**sampler.summary(), "energy_j": getattr(sampler, "energy_j", math.nan)}
