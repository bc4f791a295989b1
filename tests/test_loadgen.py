"""The load generator's client and runner against a streaming test server of known timing (tests/stream_server.py)."""
import dataclasses
import functools
import json
import os
import time
from collections import Counter

import numpy as np
import pytest

from qwenopt.errors import QwenoptError
from qwenopt.serving.client import Target, default_prompts, discover, request_body
from qwenopt.serving.loadgen import Level, default_workers, run_level
from qwenopt.serving.samples import RequestPlan

from .stream_server import MODEL, serve_in_process, serve_in_thread


def constant(n: int, rate: float, output_len: int = 5, input_len: int = 16) -> list[RequestPlan]:
    """n plans at a constant rate (module-level, so worker processes can rebuild them)."""
    return [RequestPlan(i, i / rate, input_len, output_len) for i in range(n)]


def at_once(n: int, output_len: int = 5) -> list[RequestPlan]:
    return [RequestPlan(i, None, 16, output_len) for i in range(n)]


def target(url: str, dialect: str = "vllm", timeout_s: float = 10.0) -> Target:
    return Target(url, MODEL, dialect, timeout_s, vocab_size=1000)


def outcomes(records) -> Counter:
    return Counter(r.outcome for r in records)


def within(measured: float, truth: float, q: int = 50) -> bool:
    """Agreement with the server's truth, with room for the scheduler of a busy 2-CPU machine: a few ms at the
    median, more at P99, where any preemption of the client or the server lands (seen: +3.7 ms with two busy
    loops beside the test). How close the client gets is measured in benchmarks/loadgen_capacity.py."""
    return abs(measured - truth) <= (0.05 * truth + 4e-3 if q == 50 else 0.10 * truth + 10e-3)


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def _own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (the test server, once stopped)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def accuracy_misses() -> tuple[list[str], float]:
    """One measurement of the client against the server's truth: 100 req/s for 3 s of 10-token streams (1,000
    chunks/s) on one client process, the server in another; what fell outside the bounds (none: accurate), and the
    share of the machine's CPU time that other processes (or the hypervisor's steal) took meanwhile."""
    before, own_before = _cpu_ticks(), _own_cpu_s()
    with serve_in_process(ttft_s=0.05, gap_s=0.02, jitter=0.3, seed=7) as (url, stats):
        records = run_level(target(url), Level(functools.partial(constant, 300, 100.0, 10)))
        truth = stats()
    after, own = _cpu_ticks(), _own_cpu_s() - own_before
    others = ((after[0] - before[0] - own) / (after[1] - before[1])) if before and after and after[1] > before[1] \
        else 0.0
    assert outcomes(records) == {"ok": 300}
    ttft = [r.ttft_s for r in records]
    itl = [b - a for r in records for a, b in zip(r.token_times_s, r.token_times_s[1:])]
    misses = []
    for q in (50, 99):
        for name, measured, true in (("TTFT", ttft, truth["ttfts"]), ("ITL", itl, truth["gaps"])):
            got, want = np.percentile(measured, q), np.percentile(true, q)
            if not within(got, want, q):
                misses.append(f"{name} P{q} {got * 1e3:.2f} ms, truth {want * 1e3:.2f} ms")
    lag = np.percentile([r.send_lag_s for r in records], 99)
    if lag >= 0.02:
        misses.append(f"send-lag P99 {lag * 1e3:.1f} ms")
    return misses, others


BUSY_SHARE = 0.25  # other processes' share of the machine's CPU time that makes a measurement void


def test_ttft_and_itl_percentiles_match_the_servers_truth():
    # Up to three measurements: a client that mismeasures misses in every one; a shared 2-CPU machine that preempts
    # the client or the server during one (once in about ten suite runs here, at load average ~2) gets another. A
    # measurement during which other processes took over a quarter of the machine does not judge the client (a
    # fresh-clone CI run here missed TTFT P50 by 7-10 ms in all three, where quiet runs are 1.3-2 ms over): when
    # every miss was such a one, the test is skipped, saying so; a miss on a quiet machine fails it.
    if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1):
        pytest.skip("the machine is oversubscribed (load average over 1.5 per CPU): preempted processes, not the "
                    "client, would set the P99 here (seen: TTFT P99 5-40 ms over the truth at load 9 on 2 CPUs)")
    attempts = []
    for _ in range(3):
        misses, others = accuracy_misses()
        if not misses:
            return
        attempts.append((misses, round(others, 2)))
    if all(others > BUSY_SHARE for _, others in attempts):
        pytest.skip(f"every measurement that missed ran while other processes took over {BUSY_SHARE:.0%} of the "
                    f"CPU time: {attempts}")
    pytest.fail(f"outside the bounds in all three measurements (misses, others' CPU share): {attempts}")


def test_records_carry_intended_time_tokens_and_usage():
    with serve_in_thread(ttft_s=0.01, gap_s=0.002) as (url, server):
        records = run_level(target(url), Level(functools.partial(constant, 10, 100.0, 4)))
    records.sort(key=lambda r: r.index)
    assert [r.index for r in records] == list(range(10))
    for r in records:
        assert r.outcome == "ok" and r.output_tokens == 4 and len(r.token_times_s) == 4
        assert r.intended_s == pytest.approx(r.index / 100.0)
        assert r.send_lag_s < r.ttft_s < r.e2e_s and r.ttft_s == r.token_times_s[0]
        assert r.ttft_s >= 0.01  # the server's TTFT is a floor; a stalled client may see later tokens bunched


def test_worker_processes_split_the_requests_and_share_the_clock():
    with serve_in_process(ttft_s=0.01, gap_s=0.002) as (url, stats):
        records = run_level(target(url), Level(functools.partial(constant, 60, 100.0, 3), workers=2))
    assert sorted(r.index for r in records) == list(range(60)) and outcomes(records) == {"ok": 60}
    for r in records:  # every worker keeps to the one schedule: intended times are the plan's
        assert r.intended_s == pytest.approx(r.index / 100.0)
        assert r.send_lag_s < 0.5


def test_a_blocked_client_loop_shows_as_send_lag():
    def stalling():  # a plan stream that blocks the event loop, as a busy client would
        for plan in constant(30, 100.0, 2):
            if plan.index % 10 == 5:
                time.sleep(0.1)
            yield plan

    with serve_in_thread(ttft_s=0.005, gap_s=0.001) as (url, _):
        records = run_level(target(url), Level(stalling))
    lags = sorted(r.send_lag_s for r in records)
    assert lags[-1] >= 0.09  # the requests due during the stall went out late ...
    assert all(r.ttft_s >= r.send_lag_s + 0.005 for r in records)  # ... and their TTFT counts the wait


def test_closed_loop_keeps_exactly_c_requests_in_flight():
    # streams of ~90 ms, jittered so the users fall out of step; the server lets a stream end only while 4 are in
    # flight, one at a time (hold_until), so a client that keeps 4 users busy meets exactly 3 others at every arrival
    # after the first 4, on a busy machine too. One that let a user idle, or sent a 5th, would show other counts.
    with serve_in_process(ttft_s=0.05, gap_s=0.01, jitter=0.5, hold_until=4, hold_timeout_s=2.0) as (url, stats):
        records = run_level(target(url), Level(functools.partial(at_once, 32), mode="closed", concurrency=4))
        stats = stats()
    assert outcomes(records) == {"ok": 32}
    assert stats["max_in_flight"] == 4
    assert stats["others_at_arrival"][:4] == [0, 1, 2, 3] and set(stats["others_at_arrival"][4:]) == {3}
    for r in records:  # a closed-loop request is due when its user became free: no lag beyond the loop's own
        assert r.send_lag_s < 0.05


def test_gate_waiting_counts_in_the_latency():
    with serve_in_thread(ttft_s=0.02, gap_s=0.005) as (url, _):
        level = Level(functools.partial(constant, 5, 1e6, 5), max_concurrency=1)
        records = sorted(run_level(target(url), level), key=lambda r: r.ttft_s)
    # one at a time, each ~40 ms: the k-th to get through waited k streams at the gate, and its TTFT says so
    for k, r in enumerate(records):
        assert r.outcome == "ok" and r.ttft_s >= k * 0.04 * 0.9


def test_timeout_is_a_deadline_for_the_whole_request():
    with serve_in_thread(ttft_s=0.1, gap_s=0.5) as (url, _):  # a stream of about 4 s
        start = time.perf_counter()
        records = run_level(target(url, timeout_s=1.0), Level(functools.partial(constant, 1, 1.0, 8)))
        took = time.perf_counter() - start
    assert outcomes(records) == {"timeout": 1} and records[0].e2e_s is None
    assert took < 2.5  # cancelled at its deadline, not awaited to its end


@pytest.mark.parametrize("fault, outcome, error", [
    ({"truncate_after": 2}, "truncated", "without its end after 2 tokens"),
    ({"short_by": 1}, "short", "4 of 5 tokens"),
    ({"short_by": -1}, "overlong", "6 tokens, 5 asked"),
    ({"error_in_stream": True}, "failed", "error in stream: engine died"),
    ({"fail_every": 1}, "failed", "HTTP 500"),
    ({"garbage_chunk": True}, "failed", "malformed chunk"),
])
def test_faulty_streams_are_counted_apart_with_their_reason(fault, outcome, error):
    with serve_in_thread(ttft_s=0.002, gap_s=0.001, **fault) as (url, _):
        records = run_level(target(url), Level(functools.partial(constant, 3, 100.0, 5)))
    assert outcomes(records) == {outcome: 3}
    assert all(error in r.error for r in records)


def test_a_server_that_dies_mid_run_gives_counted_failures():
    with serve_in_thread(ttft_s=0.005, gap_s=0.02, die_after=5) as (url, _):
        records = run_level(target(url, timeout_s=3), Level(functools.partial(constant, 12, 50.0, 10)))
    counts = outcomes(records)
    assert len(records) == 12 and counts["ok"] == 0  # every stream open at the death broke; later ones cannot connect
    assert counts["truncated"] + counts["failed"] == 12 and counts["failed"] >= 7


def test_transformers_dialect_ends_with_the_usage_chunk_and_its_empty_choice_is_no_token():
    with serve_in_thread(ttft_s=0.002, gap_s=0.001, dialect="transformers") as (url, _):
        model, spoken = discover(url)
        ok = run_level(target(url, "transformers"), Level(functools.partial(constant, 3, 100.0, 4)))
        wrong = run_level(target(url, "vllm"), Level(functools.partial(constant, 1, 100.0, 4)))
    assert (model, spoken) == (MODEL, "openai")
    assert outcomes(ok) == {"ok": 3}
    assert all(r.output_tokens == 4 and len(r.token_times_s) == 4 for r in ok)
    assert wrong[0].outcome == "failed" and "HTTP 422" in wrong[0].error and "ignore_eos" in wrong[0].error


def test_request_bodies_per_dialect():
    plan = RequestPlan(3, 0.0, 6, 9)
    prompts = default_prompts(1000, seed=1)
    vllm = request_body(target("u"), plan, prompts)
    assert vllm["prompt"] == prompts.prompt(3, 6) and len(vllm["prompt"]) == 6
    assert vllm["min_tokens"] == vllm["max_tokens"] == 9 and vllm["ignore_eos"]
    text = request_body(target("u", "transformers"), plan, prompts)
    assert set(text) == {"model", "prompt", "max_tokens", "stream", "temperature", "generation_config"}
    assert json.loads(text["generation_config"]) == {"min_new_tokens": 9}  # plain transformers serve: forced length
    cb = request_body(dataclasses.replace(target("u", "transformers"), continuous_batching=True), plan, prompts)
    assert json.loads(cb["generation_config"]) == {"eos_token_id": -1}  # its CB path passes only max and EOS on
    openai = request_body(target("u", "openai"), plan, prompts)
    assert "generation_config" not in openai and "ignore_eos" not in openai  # a plain OpenAI server: standard fields
    assert isinstance(text["prompt"], str) and text["prompt"].startswith(" ") and len(text["prompt"].split()) == 6
    assert prompts.prompt(3, 6) != prompts.prompt(4, 6)  # distinct prompts: no prefix-cache hits between requests


@pytest.mark.parametrize("body, message", [
    ('{"data": []}', "did not list a model"),
    ('{"models": ["x"]}', "did not list a model"),
    ("<html>", "did not list a model"),
])
def test_malformed_models_answer_is_one_error_line(body, message):
    with serve_in_thread(models_body=body) as (url, _):
        with pytest.raises(QwenoptError, match=message) as caught:
            discover(url)
    assert "\n" not in str(caught.value)


def test_default_workers_follow_the_offered_chunks():
    assert default_workers(10, None, tokens=128, cpus=16) == 1
    assert default_workers(60, None, tokens=128, cpus=16) == 3  # 7,680 chunks/s
    assert default_workers(2000, None, tokens=4, cpus=16) == 3
    assert default_workers(1e6, None, tokens=128, cpus=16) == 8  # half the CPUs at most
    assert default_workers(None, 16, tokens=0, cpus=16) == 1 and default_workers(None, 256, tokens=0, cpus=16) == 4
    assert default_workers(1e6, None, tokens=128, cpus=2) == 1


def test_levels_refuse_impossible_settings():
    with pytest.raises(QwenoptError, match="--concurrency"):
        Level(lambda: [], mode="closed")
    with pytest.raises(QwenoptError, match="--workers"):
        Level(lambda: [], workers=0)


def test_worker_processes_split_closed_loop_users_and_the_gate():
    # hold_until=3: a stream ends only while 3 are in flight, so 3 users (or 3 gated slots) must overlap, on any
    # machine; without it a slow one could run the workers' streams one after another
    with serve_in_process(ttft_s=0.02, gap_s=0.005, hold_until=3, hold_timeout_s=2.0) as (url, stats):
        closed = run_level(target(url), Level(functools.partial(at_once, 30), mode="closed", concurrency=3, workers=2))
        first = stats()
        gated = run_level(target(url), Level(functools.partial(constant, 30, 1e6), max_concurrency=3, workers=5))
        second = stats()
    assert outcomes(closed) == {"ok": 30} and first["max_in_flight"] == 3
    assert outcomes(gated) == {"ok": 30} and second["max_in_flight"] == 3  # 5 workers asked, 3 used: a user each
