"""A load level's figures from its RequestRecords, named as `vllm bench serve` names them.

Every time in a record runs from the request's intended arrival (samples.py), so a request that waited in the
client counts as the user felt it. Warm-up requests are left out of everything here. Only ok requests enter the
latency and throughput figures; the others are counted by outcome. Definitions:

- TTFT: intended arrival -> first streamed token. E2E (latency_*): intended arrival -> end of the stream.
- TPOT: per request, (E2E - TTFT) / (tokens - 1), tokens from the server's usage; requests of 1 token have none.
- ITL: every gap between consecutive token-carrying chunks, pooled over the ok requests.
- elapsed_s: from the first measured request's intended arrival to the last measured request's end (ok or not);
  vllm bench serve's "benchmark duration" likewise runs from the start of sending to the end of all requests.
- req_s, output_tok_s, total_tok_s: ok requests and their tokens (usage counts) over elapsed_s.
- goodput_req_s: ok requests that met every SLO, over elapsed_s (DistServe). slo_met_pct: the share of all
  measured requests that met every SLO, failures counting as misses.
- concurrency_mean: Little's law, req_s x mean E2E of the ok requests (the matrix divides it by the GPUs).
- samples: the ok requests a latency percentile rests on; P99 from fewer than 100 is the maximum in disguise.
- tail_ttft_s, tail_decode_s, tail_stall_s: where the slowest 1% of ok requests (E2E at or above its 0.99 quantile)
  spent their E2E, averaged over them: the first token; the rest but stalls; and stalls, the part of each gap longer
  than twice the level's median gap (ITL P50) beyond that median. With chunked prefill a stall is mostly a step that
  also carried other requests' prefills, which no faster decode kernel shortens. The three add up to their mean E2E.
  With vLLM's --stream-interval N above 1 a chunk holds N steps, so stalls hide among them.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime, timezone

import numpy as np

from ..errors import QwenoptError
from ..schema import LOAD_COLUMNS, LOAD_SCHEMA_VERSION
from .samples import RequestRecord

ALL = "all"  # the class of a level's total row
MAX_SEND_LAG_MS = 10.0
TAIL, STALL = 0.01, 2.0  # tail_*: the slowest share of requests; a gap this many times the median is a stall
SLO_METRICS = ("ttft", "tpot", "e2e")
_UNITS = {"ms": 1e-3, "s": 1.0}
GPU_COLUMNS = ("gpu_mem_peak_gib", "gpu_util_pct", "power_w", "energy_j_per_tok")  # the level's, from context


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft=200ms,tpot=50ms,e2e=2s' (any subset) -> {"ttft": 0.2, "tpot": 0.05, "e2e": 2.0}, in seconds."""
    if text is None or not str(text).strip():
        return {}
    slo: dict[str, float] = {}
    for item in str(text).split(","):
        name, eq, value = item.strip().partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if not eq or name not in SLO_METRICS:
            raise QwenoptError(f"--slo items are {'|'.join(SLO_METRICS)}=VALUE with ms or s (e.g. ttft=200ms), "
                               f"got {item.strip()!r}")
        if name in slo:
            raise QwenoptError(f"--slo gives {name} twice")
        unit = next((u for u in ("ms", "s") if value.endswith(u)), None)
        try:
            number = float(value[: -len(unit)]) if unit else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise QwenoptError(f"--slo {name} must be a positive time in ms or s (e.g. {name}=200ms), got {value!r}")
        slo[name] = number * _UNITS[unit]
    return slo


def format_slo(slo: dict[str, float]) -> str:
    """The row's `slo` column: the SLOs in milliseconds, in a fixed order."""
    return ",".join(f"{name}={slo[name] * 1e3:g}ms" for name in SLO_METRICS if name in slo)


def _percentiles(values, scale: float, prefix: str, suffix: str, points=(50, 90, 99)) -> dict:
    """P50/P90/P99 (numpy's linear interpolation, as vllm bench serve uses) and the mean, NaN for no values."""
    values = np.asarray(values, dtype=float)
    found = np.percentile(values, points) * scale if values.size else [math.nan] * len(points)
    row = {f"{prefix}_p{p}_{suffix}": float(v) for p, v in zip(points, found)}
    row[f"{prefix}_mean_{suffix}"] = float(values.mean()) * scale if values.size else math.nan
    return row


def tpot_s(record: RequestRecord) -> float | None:
    """(E2E - TTFT) / (tokens - 1), tokens from usage; None where it is undefined (1 token, or no timings)."""
    tokens = record.output_tokens
    if record.e2e_s is None or record.ttft_s is None or tokens is None or tokens < 2:
        return None
    return (record.e2e_s - record.ttft_s) / (tokens - 1)


def itl_s(records: list[RequestRecord]) -> np.ndarray:
    """Every gap between consecutive token times, pooled over the given requests (vectorised: levels of 100,000
    requests carry millions of token times)."""
    counts = np.fromiter((len(r.token_times_s) for r in records), dtype=np.int64, count=len(records))
    times = np.fromiter(itertools.chain.from_iterable(r.token_times_s for r in records), dtype=float,
                        count=int(counts.sum()))
    gaps = np.diff(times)
    seams = np.cumsum(counts)[:-1] - 1  # the gap from one request's last token to the next one's first
    keep = np.ones(gaps.size, dtype=bool)
    keep[seams[(seams >= 0) & (seams < gaps.size)]] = False
    return gaps[keep]


def end_s(record: RequestRecord) -> float:
    """When the request ended, from the level's start: its stream's end, else its last sign of life."""
    last = record.e2e_s
    if last is None:
        last = max([record.send_lag_s, *(t for t in (record.ttft_s,) if t is not None), *record.token_times_s])
    return record.intended_s + last


def elapsed_s(records: list[RequestRecord]) -> float:
    """First measured intended arrival -> last measured end (see the module's docstring)."""
    measured = [r for r in records if not r.warmup]
    if not measured:
        return math.nan
    return max(end_s(r) for r in measured) - min(r.intended_s for r in measured)


def arrival_rate(records: list[RequestRecord]) -> float:
    """The rate the requests arrived at, (n - 1) / (last - first intended arrival): what the level really offered.
    A Poisson level's count strays from rate x duration; on the H200 an 8 s level at 26.16 req/s sent 188 requests,
    23.5 a second (results/h200/tune)."""
    times = [r.intended_s for r in records if r.intended_s is not None]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else math.nan


def meets_slo(record: RequestRecord, slo: dict[str, float]) -> bool:
    """An ok request within every given SLO; an undefined TPOT (1 token) cannot miss."""
    if record.outcome != "ok" or record.ttft_s is None or record.e2e_s is None:
        return False
    tpot = tpot_s(record)
    return ((("ttft" not in slo) or record.ttft_s <= slo["ttft"])
            and (("e2e" not in slo) or record.e2e_s <= slo["e2e"])
            and (("tpot" not in slo) or tpot is None or tpot <= slo["tpot"]))


def level_metrics(records: list[RequestRecord], elapsed: float, slo: dict[str, float] | None = None,
                  max_send_lag_ms: float = MAX_SEND_LAG_MS) -> dict:
    """Counts, latency figures, throughput, goodput and status of the given (measured) requests over `elapsed`."""
    slo = slo or {}
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.outcome == "ok"]
    outcomes = Counter(r.outcome for r in measured)
    e2e = [r.e2e_s for r in ok]
    gaps = itl_s(ok)
    lag = [r.send_lag_s for r in measured]
    tokens_out = sum(r.output_tokens or 0 for r in ok)
    tokens_in = sum(r.prompt_tokens if r.prompt_tokens is not None else r.input_len for r in ok)
    rate = (lambda n: n / elapsed) if elapsed and elapsed > 0 else (lambda n: math.nan)
    row = {
        "sent": len(measured), "arrived_req_s": arrival_rate(measured), "completed": outcomes["ok"],
        "failed": outcomes["failed"],
        "timeouts": outcomes["timeout"], "truncated": outcomes["truncated"], "short": outcomes["short"],
        "overlong": outcomes["overlong"], "elapsed_s": elapsed, "samples": len(ok),
        **_percentiles(e2e, 1.0, "latency", "s"),
        **_percentiles([r.ttft_s for r in ok], 1e3, "ttft", "ms"),
        **_percentiles([t for t in map(tpot_s, ok) if t is not None], 1e3, "tpot", "ms"),
        **_percentiles(gaps, 1e3, "itl", "ms"),
        "send_lag_p50_ms": float(np.percentile(lag, 50)) * 1e3 if lag else math.nan,
        "send_lag_p99_ms": float(np.percentile(lag, 99)) * 1e3 if lag else math.nan,
        "req_s": rate(len(ok)), "output_tok_s": rate(tokens_out), "total_tok_s": rate(tokens_in + tokens_out),
        "goodput_req_s": rate(sum(meets_slo(r, slo) for r in ok)) if slo else math.nan,
        "slo_met_pct": (100.0 * sum(meets_slo(r, slo) for r in ok) / len(measured)) if slo and measured else math.nan,
    }
    row["itl_max_ms"] = float(gaps.max()) * 1e3 if gaps.size else math.nan
    row.update(tail_split(ok, row["itl_p50_ms"] / 1e3))  # the median gap: ITL P50, computed above
    row["concurrency_mean"] = row["req_s"] * row["latency_mean_s"] if ok else math.nan
    row["status"], row["error"] = _status(measured, ok, row["send_lag_p99_ms"], max_send_lag_ms)
    return row


def slowest(ok: list[RequestRecord], tail: float = TAIL) -> list[RequestRecord]:
    """The requests whose E2E is at or above the level's (1 - tail) quantile."""
    timed = [r for r in ok if r.e2e_s is not None and r.ttft_s is not None]
    if not timed:
        return []
    cut = float(np.quantile([r.e2e_s for r in timed], 1 - tail))
    return [r for r in timed if r.e2e_s >= cut]


def stall_gaps(record: RequestRecord, median_gap_s: float, stall: float = STALL) -> np.ndarray:
    """The request's gaps between tokens longer than `stall` x the level's median gap."""
    gaps = np.diff(record.token_times_s)
    return gaps[gaps > stall * median_gap_s]


def tail_split(ok: list[RequestRecord], median_gap_s: float, tail: float = TAIL, stall: float = STALL) -> dict:
    """The slowest requests' mean TTFT, decode and stall seconds (tail_* in the module docstring)."""
    worst = slowest(ok, tail)
    if not worst or not math.isfinite(median_gap_s):
        return dict.fromkeys(TAIL_COLUMNS, math.nan)
    stalled = float(np.mean([(stall_gaps(r, median_gap_s, stall) - median_gap_s).sum() for r in worst]))
    ttft, e2e = float(np.mean([r.ttft_s for r in worst])), float(np.mean([r.e2e_s for r in worst]))
    return {"tail_ttft_s": ttft, "tail_decode_s": e2e - ttft - stalled, "tail_stall_s": stalled}


TAIL_COLUMNS = ("tail_ttft_s", "tail_decode_s", "tail_stall_s")


def tail_text(row) -> str:
    """A row's tail split as 'TTFT / decode / stalls' seconds, "" where it has none (rows from before the columns)."""
    values = [_number(row.get(k)) if row is not None else math.nan for k in TAIL_COLUMNS]
    return "" if any(math.isnan(v) for v in values) else " / ".join(f"{v:.3f}" for v in values)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _status(measured: list[RequestRecord], ok: list[RequestRecord], lag_p99_ms: float,
            max_send_lag_ms: float) -> tuple[str, str | None]:
    """failed (no ok request) > client-bound (send lag P99 over the limit) > ok; error says why, or the commonest error."""
    errors = Counter(r.error or r.outcome for r in measured if r.outcome != "ok")
    commonest = None
    if errors:
        text, count = errors.most_common(1)[0]
        commonest = f"{count} x {text}"[:300]
    if not ok:
        return "failed", commonest or "no measured request"
    if lag_p99_ms > max_send_lag_ms:
        why = (f"send lag P99 {lag_p99_ms:.1f} ms > --max-send-lag-ms {max_send_lag_ms:g}: the client, not the "
               f"server, set these latencies")
        return "client-bound", why if commonest is None else f"{why}; {commonest}"
    return "ok", commonest


def level_rows(records: list[RequestRecord], context: dict, *, classes: list[str] | None = None,
               elapsed: float | None = None) -> list[dict]:
    """One row per request class (in `classes` order, else as first seen) and the level's total (class "all").

    `context` carries the identity and fingerprint columns (endpoint, server, regime, rate, mode, workload, slo as
    text, the GPU columns, ...); these columns are the records' own and computed here: class, status, error,
    input_len and output_len (asked: exact when all requests agree, else their rounded mean), warmup_requests and
    every metric. `elapsed` is the runner's own clock for the level; None derives it from the records. Every class
    row uses the level's elapsed time, so the classes' counts and rates add up to the total's.
    """
    unknown = set(context) - set(LOAD_COLUMNS)
    if unknown:
        raise ValueError(f"context has columns outside the load schema: {sorted(unknown)}")
    slo = parse_slo(context.get("slo"))
    max_lag = context.get("max_send_lag_ms")
    max_lag = MAX_SEND_LAG_MS if max_lag is None else float(max_lag)
    elapsed = elapsed_s(records) if elapsed is None else elapsed
    names = list(classes or [])
    names += [c for c in dict.fromkeys(r.cls for r in records) if c not in names and c != ALL]
    groups = [(name, [r for r in records if r.cls == name]) for name in names] if len(names) > 1 else []
    base = {c: None for c in LOAD_COLUMNS}
    base.update(context)
    base["schema_version"] = LOAD_SCHEMA_VERSION
    base["timestamp"] = context.get("timestamp") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    base["slo"] = format_slo(slo) or None
    base["max_send_lag_ms"] = max_lag
    base["warmup_requests"] = sum(r.warmup for r in records)
    rows = []
    for name, group in groups + [(ALL, records)]:
        row = dict(base)
        measured = [r for r in group if not r.warmup]
        row["class"] = name
        row["input_len"] = _asked(r.input_len for r in measured)
        row["output_len"] = _asked(r.output_len for r in measured)
        row.update(level_metrics(group, elapsed, slo, max_lag))
        rows.append(row)
    total = rows[-1]
    for row in rows[:-1]:  # a client too slow for the level is too slow for each of its classes
        if total["status"] == "client-bound" and row["status"] == "ok":
            row["status"], row["error"] = total["status"], total["error"]
    return rows


def _asked(lengths) -> int | None:
    values = list(lengths)
    if not values:
        return None
    return values[0] if all(v == values[0] for v in values) else round(sum(values) / len(values))


def sidecar_record(rows: list[dict], records: list[RequestRecord]) -> dict:
    """One level's raw samples for results.append_samples: the total row's key columns and every request."""
    total = next((r for r in rows if r["class"] == ALL), rows[-1])
    keys = ("run_id", "timestamp", "level", "endpoint", "server", "regime", "mode", "rate", "concurrency",
            "workload", "seed", "status")
    return {**{k: total.get(k) for k in keys}, "schema_version": LOAD_SCHEMA_VERSION,
            "samples": [r.to_json() for r in records]}
