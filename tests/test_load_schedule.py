"""Arrival schedules: lazy, seeded, bounded, with warm-up; rate and concurrency lists; the sweep's levels; limits."""
import itertools
import statistics
import tracemalloc

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.serving.schedule import (
    MAX_REQUESTS, SWEEP, closed_loop, open_loop, parse_concurrency, parse_rates, sweep_rates,
)
from qwenopt.workload import make_workload

WORKLOAD = make_workload("16", "8")


def intervals(plans):
    times = [p.intended_s for p in plans]
    return [b - a for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("arrival, burstiness, cv", [("poisson", 1.0, 1.0), ("gamma", 4.0, 0.5),
                                                     ("gamma", 0.25, 2.0), ("constant", 1.0, 0.0)])
def test_gap_statistics(arrival, burstiness, cv):
    """Mean gap 1/rate; coefficient of variation 1/sqrt(B) (gamma), 1 (Poisson), 0 (constant). Seeded: exact reruns."""
    plans = list(open_loop(WORKLOAD, 50.0, arrival=arrival, burstiness=burstiness, num_requests=20000, seed=5))
    gaps = intervals(plans)
    mean = statistics.fmean(gaps)
    assert abs(mean * 50.0 - 1) < 0.01 + 4 * cv / len(gaps) ** 0.5  # 4 standard errors of the mean
    assert abs(statistics.pstdev(gaps) / mean - cv) < 0.05
    assert plans[0].intended_s == 0.0
    again = list(open_loop(WORKLOAD, 50.0, arrival=arrival, burstiness=burstiness, num_requests=20000, seed=5))
    assert again == plans


def test_seed_changes_the_poisson_schedule():
    a = [p.intended_s for p in open_loop(WORKLOAD, 10, num_requests=20, seed=1)]
    b = [p.intended_s for p in open_loop(WORKLOAD, 10, num_requests=20, seed=2)]
    assert a != b


def test_constant_arrivals_are_exact():
    plans = list(open_loop(WORKLOAD, 4.0, arrival="constant", duration_s=2.0))
    assert [p.intended_s for p in plans] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [p.index for p in plans] == list(range(8))


def test_warmup_comes_on_top_of_the_bound():
    plans = list(open_loop(WORKLOAD, 10.0, arrival="constant", num_requests=5, warmup=3))
    assert [p.warmup for p in plans] == [True] * 3 + [False] * 5
    timed = list(open_loop(WORKLOAD, 10.0, arrival="constant", duration_s=0.5, warmup=2))
    measured = [p.intended_s for p in timed if not p.warmup]
    assert len(timed) == 7 and measured[0] == pytest.approx(0.2) and measured[-1] < 0.2 + 0.5


def test_duration_and_num_requests_both_bound():
    assert len(list(open_loop(WORKLOAD, 100.0, arrival="constant", duration_s=10, num_requests=7))) == 7
    assert len(list(open_loop(WORKLOAD, 100.0, arrival="constant", duration_s=0.1, num_requests=70))) == 10


def test_plans_carry_the_workload_classes():
    mixed = make_workload(mix="s=0.5:8:4,l=0.5:64:16", seed=2)
    plans = list(open_loop(mixed, 100.0, num_requests=200, seed=2))
    assert {p.cls for p in plans} == {"s", "l"}
    assert all(mixed.sample(p.index) == (p.cls, p.input_len, p.output_len) for p in plans)


def test_a_huge_rate_is_refused_by_the_request_cap():
    with pytest.raises(QwenoptError) as error:
        open_loop(WORKLOAD, 1e9, duration_s=60)
    message = str(error.value)
    assert f"{MAX_REQUESTS:,}" in message and "--rate" in message and "QWENOPT_MAX_REQUESTS" in message


def test_the_schedule_is_lazy_at_a_huge_rate(monkeypatch):
    monkeypatch.setenv("QWENOPT_MAX_REQUESTS", str(10 ** 12))
    tracemalloc.start()
    try:
        plans = open_loop(WORKLOAD, 1e9, duration_s=60)
        first = list(itertools.islice(plans, 10000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(first) == 10000 and first[-1].intended_s < 1e-4
    assert peak < 20 * 2 ** 20  # the 10,000 plans kept here; 6e10 planned would need terabytes


def test_num_requests_cap_and_env_override(monkeypatch):
    with pytest.raises(QwenoptError, match="--num-requests 2000000"):
        open_loop(WORKLOAD, 1.0, num_requests=2_000_000)
    monkeypatch.setenv("QWENOPT_MAX_REQUESTS", "5")
    with pytest.raises(QwenoptError, match="over the limit of 5 per level"):
        open_loop(WORKLOAD, 1.0, num_requests=3, warmup=3)
    monkeypatch.setenv("QWENOPT_MAX_REQUESTS", "lots")
    with pytest.raises(QwenoptError, match="QWENOPT_MAX_REQUESTS must be a positive integer"):
        open_loop(WORKLOAD, 1.0, num_requests=3)


def test_closed_loop_plans_have_no_time_and_a_count():
    plans = list(closed_loop(WORKLOAD, num_requests=4, warmup=2))
    assert [p.intended_s for p in plans] == [None] * 6 and [p.warmup for p in plans] == [True, True] + [False] * 4
    endless = closed_loop(WORKLOAD)
    assert len(list(itertools.islice(endless, 1000))) == 1000


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0, "num_requests": 1}, "--rate must be a positive number"),
    ({"rate": -2, "num_requests": 1}, "--rate must be a positive number"),
    ({"rate": float("inf"), "num_requests": 1}, "--rate must be a positive number"),
    ({"rate": 1}, "give --duration or --num-requests"),
    ({"rate": 1, "duration_s": 0}, "--duration must be a positive number"),
    ({"rate": 1, "num_requests": 0}, "--num-requests must be a positive integer"),
    ({"rate": 1, "num_requests": 1, "warmup": -1}, "--warmup must be a whole number"),
    ({"rate": 1, "num_requests": 1, "arrival": "uniform"}, "--arrival must be one of poisson, constant, gamma"),
    ({"rate": 1, "num_requests": 1, "arrival": "poisson", "burstiness": 2}, "--burstiness shapes --arrival gamma"),
    ({"rate": 1, "num_requests": 1, "arrival": "gamma", "burstiness": 0}, "--burstiness must be a positive number"),
])
def test_bad_schedule_options_fail_before_any_plan(kwargs, message):
    with pytest.raises(QwenoptError, match=message.replace("(", r"\(")):
        open_loop(WORKLOAD, **kwargs)  # raises on the call itself, not at the first next()


def test_parse_rates_and_concurrency():
    assert parse_rates("1,2,4,8") == [1.0, 2.0, 4.0, 8.0]
    assert parse_rates("0.5") == [0.5]
    assert parse_rates("sweep") == SWEEP and parse_rates(" Sweep ") == SWEEP
    assert parse_concurrency("1,4,16") == [1, 4, 16]
    for bad in ("0", "1,0", "-1", "fast", "", "nan"):
        with pytest.raises(QwenoptError, match="--rate"):
            parse_rates(bad)
    for bad in ("0", "2.5", "x"):
        with pytest.raises(QwenoptError, match="--concurrency"):
            parse_concurrency(bad)


def test_sweep_rates_are_guidellms_linspace():
    # GuideLLM: np.linspace(synchronous, throughput, sweep_size - 1)[1:]; levels = sweep_size - 2
    assert sweep_rates(1.0, 9.0, 4) == [3.0, 5.0, 7.0, 9.0]
    rates = sweep_rates(0.7, 30.0)
    assert len(rates) == 8 and rates[-1] == 30.0 and rates == sorted(rates) and rates[0] > 0.7
    with pytest.raises(QwenoptError, match="not above the low rate"):
        sweep_rates(5.0, 5.0)
    with pytest.raises(QwenoptError, match="saturation throughput must be a positive number"):
        sweep_rates(1.0, 0.0)
    with pytest.raises(QwenoptError, match="at least 1 level"):
        sweep_rates(1.0, 2.0, 0)


def test_expected_requests_for_budgets_and_progress():
    from qwenopt.serving.schedule import expected_requests

    assert expected_requests(10.0, 6.0, None) == 60.0
    assert expected_requests(10.0, 6.0, 20) == 20
    assert expected_requests(None, None, 7) == 7  # closed loop by count
    assert expected_requests(None, 30.0, None) == float("inf")  # closed loop by time: unknown ahead
