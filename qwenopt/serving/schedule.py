"""When each request of a load level should arrive: the plan stream the runner sends from, generated lazily.

Open loop (`open_loop`): arrivals follow the clock whatever the server does, at `--rate` requests/s with gaps
drawn from `--arrival`: poisson (exponential gaps), constant (exactly 1/rate), or gamma with shape `--burstiness`
B and mean gap 1/rate (vllm bench serve's definition: B=1 is Poisson, B<1 burstier, B>1 more even). The first
request arrives at 0 s, the level's start. Closed loop (`closed_loop`): C users, each sending its next request
when its last one ends; the plans carry no time, the runner stamps each with the moment its user became free.

Unlike vllm bench serve, which draws every gap first and rescales them so the last arrival falls exactly at
N/rate, the gaps here are drawn one at a time and not rescaled (a true renewal process, and nothing held in
memory); the achieved rate is measured, not assumed, so the rows still compare.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator

from ..errors import QwenoptError
from ..limits import LIMITS, limit
from ..workload import Workload, parse_sizes
from .samples import RequestPlan

ARRIVALS = ("poisson", "constant", "gamma")
MAX_REQUESTS_ENV, MAX_REQUESTS = LIMITS["requests"]  # per level, warm-up included
SWEEP = "sweep"
SWEEP_LEVELS = 8  # GuideLLM's default sweep is 10 benchmarks: synchronous, throughput and 8 rates between


def max_requests() -> int:
    """The most requests one level may plan: MAX_REQUESTS, or QWENOPT_MAX_REQUESTS when set (limits.py)."""
    return limit("requests")


def _positive_float(value, option: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise QwenoptError(f"{option} must be a positive number, got {value!r}")
    return number


def parse_rates(text: str | float | list, option: str = "--rate", sweep: bool = True) -> list[float] | str:
    """'1,2,4,8' -> [1.0, 2.0, 4.0, 8.0] requests/s; 'sweep' -> SWEEP (the runner measures saturation first), where
    `sweep` allows it."""
    if sweep and isinstance(text, str) and text.strip().lower() == SWEEP:
        return SWEEP
    items = text if isinstance(text, list) else str(text).split(",")
    rates = [_positive_float(str(item).strip(), option) for item in items if str(item).strip()]
    if not rates:
        raise QwenoptError(f"{option} must be positive numbers (1,2,4){f' or {SWEEP}' if sweep else ''}, got {text!r}")
    return rates


def parse_concurrency(text: str | int | list) -> list[int]:
    """'1,4,16' -> [1, 4, 16] users (closed loop)."""
    return parse_sizes(text, "--concurrency")


def check_request_budget(count: float, asked: str) -> None:
    """Refuse a level that would plan more requests than max_requests(); `asked` says which options asked."""
    cap = max_requests()
    if count > cap:
        raise QwenoptError(f"{asked} asks for about {count:,.0f} requests, over the limit of {cap:,} per level; "
                           f"lower them, or raise the limit with {MAX_REQUESTS_ENV}=N")


def _check_bounds(duration_s: float | None, num_requests: int | None, warmup: int, need_one: bool) -> None:
    if need_one and duration_s is None and num_requests is None:
        raise QwenoptError("give --duration or --num-requests (or both) to bound the level")
    if duration_s is not None:
        _positive_float(duration_s, "--duration")
    if num_requests is not None and (isinstance(num_requests, bool) or int(num_requests) != num_requests
                                     or num_requests < 1):
        raise QwenoptError(f"--num-requests must be a positive integer, got {num_requests!r}")
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
        raise QwenoptError(f"--warmup must be a whole number of requests (0 or more), got {warmup!r}")


def expected_requests(rate: float | None, duration_s: float | None, num_requests: int | None) -> float:
    """About how many measured requests a level plans (warm-up not included): for budgets and progress bars.

    Open loop: rate x duration, or num_requests if fewer; closed loop (rate None): num_requests, or inf when only
    --duration bounds it.
    """
    by_time = rate * duration_s if rate is not None and duration_s is not None else math.inf
    return min(by_time, num_requests if num_requests is not None else math.inf)


def gaps(arrival: str, rate: float, burstiness: float, seed: int) -> Iterator[float]:
    """Endless seconds between consecutive arrivals, mean 1/rate; the same stream for the same seed."""
    rng = random.Random(f"qwenopt-arrivals-{seed}")
    if arrival == "poisson":
        while True:
            yield rng.expovariate(rate)
    elif arrival == "gamma":
        scale = 1.0 / (rate * burstiness)
        while True:
            yield rng.gammavariate(burstiness, scale)
    else:
        while True:
            yield 1.0 / rate


def check_arrival(arrival: str, burstiness: float) -> float:
    if arrival not in ARRIVALS:
        raise QwenoptError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    burstiness = _positive_float(burstiness, "--burstiness")
    if arrival != "gamma" and burstiness != 1.0:
        raise QwenoptError(f"--burstiness shapes --arrival gamma (poisson is gamma with burstiness 1); "
                           f"got --arrival {arrival} --burstiness {burstiness:g}")
    return burstiness


def open_loop(workload: Workload, rate: float, *, arrival: str = "poisson", burstiness: float = 1.0,
              duration_s: float | None = None, num_requests: int | None = None, warmup: int = 0,
              seed: int = 0) -> Iterator[RequestPlan]:
    """Plans with intended arrival times, lazily, until the level's bound.

    The first `warmup` plans are marked warmup=True and come on top of the bound: `num_requests` counts measured
    requests, and `duration_s` is the window of measured arrivals, from the first measured request's arrival.
    Checks every option (and the request budget) now, before the first plan is asked for.
    """
    rate = _positive_float(rate, "--rate")
    burstiness = check_arrival(arrival, burstiness)
    _check_bounds(duration_s, num_requests, warmup, need_one=True)
    measured = expected_requests(rate, duration_s, num_requests)
    asked = " x ".join(filter(None, [f"--rate {rate:g}", duration_s and f"--duration {duration_s:g}"]))
    if num_requests is not None and measured == num_requests:
        asked = f"--num-requests {num_requests}"
    check_request_budget(measured + warmup, asked + (f" + --warmup {warmup}" if warmup else ""))
    return _open_loop_plans(workload, rate, arrival, burstiness, duration_s, num_requests, warmup, seed)


def _open_loop_plans(workload, rate, arrival, burstiness, duration_s, num_requests, warmup, seed):
    steps = gaps(arrival, rate, burstiness, seed)
    at, window_start, index = 0.0, 0.0, 0
    while True:
        if arrival == "constant":
            at = index / rate  # no accumulated rounding
        if index == warmup:
            window_start = at
        if index >= warmup:
            if num_requests is not None and index - warmup >= num_requests:
                return
            if duration_s is not None and at >= window_start + duration_s:
                return
        cls, input_len, output_len = workload.sample(index)
        yield RequestPlan(index, at, input_len, output_len, cls, index < warmup)
        at += next(steps)
        index += 1


def closed_loop(workload: Workload, *, num_requests: int | None = None, warmup: int = 0) -> Iterator[RequestPlan]:
    """Plans without times (intended_s None) for C users: each takes the next plan when its last request ends.

    Ends after warmup + num_requests plans; with num_requests None it never ends and the runner stops at
    --duration. The runner records each request's intended time as the moment its user became free.
    """
    _check_bounds(None, num_requests, warmup, need_one=False)
    if num_requests is not None:
        check_request_budget(num_requests + warmup, f"--num-requests {num_requests}")
    return _closed_loop_plans(workload, num_requests, warmup)


def _closed_loop_plans(workload, num_requests, warmup):
    index = 0
    while num_requests is None or index < warmup + num_requests:
        cls, input_len, output_len = workload.sample(index)
        yield RequestPlan(index, None, input_len, output_len, cls, index < warmup)
        index += 1


def sweep_rates(low_rate: float, saturation_rate: float, levels: int = SWEEP_LEVELS) -> list[float]:
    """`levels` evenly spaced rates above `low_rate`, the last at `saturation_rate` (both in requests/s).

    GuideLLM's sweep does the same: it measures the synchronous rate (one request at a time) and the throughput
    rate (everything at once), then runs np.linspace(synchronous, throughput, sweep_size - 1)[1:]; `levels` here
    is its sweep_size - 2. The low rate itself is not rerun.
    """
    low = _positive_float(low_rate, "the sweep's low rate")
    high = _positive_float(saturation_rate, "the measured saturation throughput")
    if isinstance(levels, bool) or int(levels) != levels or levels < 1:
        raise QwenoptError(f"a sweep needs at least 1 level, got {levels!r}")
    if high <= low:
        raise QwenoptError(f"the measured saturation throughput {high:.3g} req/s is not above the low rate "
                           f"{low:.3g} req/s: nothing to sweep between them")
    step = (high - low) / levels
    return [low + step * k for k in range(1, levels)] + [high]
