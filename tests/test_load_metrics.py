"""A load level's figures from hand-made RequestRecords, checked against hand-computed values."""
import math

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.schema import LOAD_COLUMNS, LOAD_SCHEMA_VERSION
from qwenopt.serving.metrics import (
    elapsed_s, format_slo, itl_s, level_metrics, level_rows, parse_slo, sidecar_record, tail_split, tail_text, tpot_s,
)
from qwenopt.serving.samples import RequestRecord


def record(index, intended, ttft, gaps, *, cls="all", lag=0.001, outcome="ok", warmup=False, tokens=None,
           input_len=10, output_len=None, error=None):
    """An ok request whose tokens arrive at ttft, ttft + gaps[0], ...; E2E is the last token's time."""
    times, t = [], ttft
    for gap in [0.0, *gaps]:
        t += gap
        times.append(round(t, 9))
    n = len(times)
    return RequestRecord(index=index, cls=cls, warmup=warmup, intended_s=intended, send_lag_s=lag,
                         input_len=input_len, output_len=output_len or n, outcome=outcome, ttft_s=ttft,
                         e2e_s=times[-1], token_times_s=times, output_tokens=n if tokens is None else tokens,
                         error=error)


def failed(index, intended, *, cls="all", lag=0.001, outcome="failed", error="HTTP 500: boom", warmup=False):
    return RequestRecord(index=index, cls=cls, warmup=warmup, intended_s=intended, send_lag_s=lag, input_len=10,
                         output_len=4, outcome=outcome, error=error)


def test_tpot_and_itl_definitions():
    r = record(0, 0.0, 0.1, [0.02, 0.04, 0.06])  # 4 tokens, E2E 0.22
    assert tpot_s(r) == pytest.approx((0.22 - 0.1) / 3)
    assert itl_s([r]) == pytest.approx([0.02, 0.04, 0.06])
    assert tpot_s(record(1, 0.0, 0.1, [])) is None  # one token: no TPOT


def test_itl_pooling_skips_the_seams_between_requests():
    def times(*t):
        return RequestRecord(0, "all", False, 0.0, 0.0, 1, 1, token_times_s=list(t))

    records = [times(1.0, 2.0, 4.0), times(), times(10.0), times(20.0, 21.5)]
    assert itl_s(records).tolist() == [1.0, 2.0, 1.5]
    assert itl_s([]).tolist() == [] and itl_s([times(), times(5.0)]).tolist() == []
    assert itl_s([times(), times(1.0, 3.0), times()]).tolist() == [2.0]


def test_the_slowest_requests_e2e_splits_into_first_token_decode_and_stalls_by_hand():
    records = [record(0, 0.0, 0.1, [0.01, 0.01, 0.01]), record(1, 0.5, 0.1, [0.01, 0.01, 0.01]),
               record(2, 1.0, 0.2, [0.01, 0.05, 0.01])]  # E2E 0.13, 0.13, 0.27
    row = level_metrics(records, elapsed=2.0)
    # pooled gaps: eight of 10 ms and one of 50: median 10 ms, so a stall is a gap over 20 ms. The slowest 1% (E2E
    # at or above its 0.99 quantile, 0.13 + 0.98 x 0.14 = 0.2672 s) is request 2: TTFT 0.2 s, one stall of 50 - 10 =
    # 40 ms, and decode the rest, 0.27 - 0.2 - 0.04 = 0.03 s
    assert row["tail_ttft_s"] == pytest.approx(0.2) and row["tail_stall_s"] == pytest.approx(0.04)
    assert row["tail_decode_s"] == pytest.approx(0.03)
    even = level_metrics(records[:2], elapsed=2.0)  # no gap over twice the median: no stall; both are the tail
    assert (even["tail_ttft_s"], even["tail_stall_s"]) == (pytest.approx(0.1), 0.0)
    assert even["tail_decode_s"] == pytest.approx(0.03)
    assert all(math.isnan(v) for v in tail_split([], math.nan).values())
    none_ok = level_metrics([failed(0, 0.0)], elapsed=1.0)  # no ok request: nothing to split
    assert all(math.isnan(none_ok[k]) for k in ("tail_ttft_s", "tail_decode_s", "tail_stall_s"))
    # as the tables print it: a row from a CSV, one from before the columns, one without a measured request
    assert tail_text(row) == "0.200 / 0.030 / 0.040" and tail_text({"tail_ttft_s": "0.2"}) == ""
    assert tail_text(none_ok) == "" and tail_text(None) == ""


def test_percentiles_and_itl_pooling_by_hand():
    records = [record(0, 0.0, 0.1, [0.01, 0.01]), record(1, 1.0, 0.2, [0.03]), record(2, 2.0, 0.3, [0.05, 0.05, 0.05])]
    row = level_metrics(records, elapsed=4.0)
    # TTFT 100, 200, 300 ms: numpy linear percentiles
    assert row["ttft_p50_ms"] == pytest.approx(200) and row["ttft_p90_ms"] == pytest.approx(280)
    assert row["ttft_p99_ms"] == pytest.approx(298) and row["ttft_mean_ms"] == pytest.approx(200)
    # ITL pooled: 10, 10, 30, 50, 50, 50 ms
    assert row["itl_p50_ms"] == pytest.approx(40) and row["itl_max_ms"] == pytest.approx(50)
    assert row["itl_mean_ms"] == pytest.approx(200 / 6) and row["itl_p90_ms"] == pytest.approx(50)
    # TPOT per request: 10 ms, 30 ms, 50 ms
    assert row["tpot_p50_ms"] == pytest.approx(30) and row["tpot_mean_ms"] == pytest.approx(30)
    # E2E 0.12, 0.23, 0.45 s
    assert row["latency_p50_s"] == pytest.approx(0.23) and row["latency_mean_s"] == pytest.approx(0.8 / 3)
    # 3 ok requests, 3 + 2 + 4 = 9 output tokens and 30 prompt tokens over 4 s
    assert row["req_s"] == pytest.approx(0.75) and row["output_tok_s"] == pytest.approx(9 / 4)
    assert row["total_tok_s"] == pytest.approx(39 / 4)
    assert row["concurrency_mean"] == pytest.approx(0.75 * 0.8 / 3)
    assert row["samples"] == 3 and row["completed"] == 3 and row["sent"] == 3 and row["status"] == "ok"


def test_outcomes_are_counted_apart_and_stay_out_of_latency():
    records = [record(0, 0.0, 0.1, [0.1]), failed(1, 0.5), failed(2, 0.6, outcome="timeout", error="deadline"),
               failed(3, 0.7, outcome="truncated", error=None), failed(4, 0.8, outcome="short", error=None),
               failed(5, 0.9, outcome="overlong", error=None), failed(6, 1.0)]
    row = level_metrics(records, elapsed=2.0)
    assert (row["sent"], row["completed"], row["failed"], row["timeouts"], row["truncated"], row["short"],
            row["overlong"]) == (7, 1, 2, 1, 1, 1, 1)
    assert row["samples"] == 1 and row["ttft_p99_ms"] == pytest.approx(100)
    assert row["status"] == "ok" and row["error"] == "2 x HTTP 500: boom"


def test_warmup_is_excluded_everywhere():
    records = [record(0, 0.0, 5.0, [5.0], warmup=True, lag=1.0), record(1, 1.0, 0.1, [0.1]),
               record(2, 2.0, 0.1, [0.1])]
    row = level_metrics(records, elapsed=elapsed_s(records))
    assert row["sent"] == 2 and row["ttft_p99_ms"] == pytest.approx(100) and row["send_lag_p99_ms"] == pytest.approx(1)
    assert elapsed_s(records) == pytest.approx(2.2 - 1.0)  # first measured arrival -> last measured end


def test_elapsed_counts_failed_requests_last_sign_of_life():
    records = [record(0, 0.0, 0.1, [0.1]), failed(1, 3.0, lag=0.5)]
    assert elapsed_s(records) == pytest.approx(3.5)


def test_goodput_against_hand_computed_samples():
    # SLO: TTFT 200 ms, TPOT 50 ms, E2E 1 s
    records = [
        record(0, 0.0, 0.1, [0.04, 0.04]),  # meets all
        record(1, 0.1, 0.3, [0.01]),  # TTFT 300 ms: miss
        record(2, 0.2, 0.1, [0.06, 0.06]),  # TPOT 60 ms: miss
        record(3, 0.3, 0.15, [0.045] * 20),  # TPOT 45 ms but E2E 1.05 s: miss
        record(4, 0.4, 0.19, []),  # 1 token: no TPOT, meets TTFT and E2E
        failed(5, 0.5),  # a failure is a miss
    ]
    slo = parse_slo("ttft=200ms,tpot=50ms,e2e=1s")
    row = level_metrics(records, elapsed=2.0, slo=slo)
    assert row["goodput_req_s"] == pytest.approx(2 / 2.0)
    assert row["slo_met_pct"] == pytest.approx(100 * 2 / 6)
    assert row["req_s"] == pytest.approx(5 / 2.0)
    only_ttft = level_metrics(records, elapsed=2.0, slo=parse_slo("ttft=0.2s"))
    assert only_ttft["goodput_req_s"] == pytest.approx(4 / 2.0)
    no_slo = level_metrics(records, elapsed=2.0)
    assert math.isnan(no_slo["goodput_req_s"]) and math.isnan(no_slo["slo_met_pct"])


def test_client_bound_and_failed_status():
    slow_client = [record(i, i * 0.1, 0.1, [0.1], lag=0.002 if i < 90 else 0.05) for i in range(100)]
    row = level_metrics(slow_client, elapsed=10.0)
    assert row["status"] == "client-bound" and "send lag P99" in row["error"] and "--max-send-lag-ms 10" in row["error"]
    assert level_metrics(slow_client, elapsed=10.0, max_send_lag_ms=100)["status"] == "ok"
    quick = [record(i, i * 0.1, 0.1, [0.1], lag=0.002) for i in range(100)]
    assert level_metrics(quick, elapsed=10.0)["status"] == "ok"
    dead = [failed(0, 0.0), failed(1, 0.1, error="connection refused")]
    row = level_metrics(dead, elapsed=1.0)
    assert row["status"] == "failed" and row["completed"] == 0 and row["failed"] == 2 and row["samples"] == 0
    assert row["req_s"] == 0 and math.isnan(row["ttft_p50_ms"]) and "2 x" not in row["error"]


def mixed_level():
    return [
        record(0, 0.0, 0.05, [0.01], cls="short"), record(1, 0.1, 0.06, [0.01, 0.01], cls="short"),
        record(2, 0.2, 0.5, [0.02] * 9, cls="long", input_len=100), failed(3, 0.3, cls="long"),
        record(4, 0.4, 0.07, [0.01], cls="short", lag=0.5), record(5, 0.0, 0.2, [0.1], cls="short", warmup=True),
    ]


def test_level_rows_have_exactly_the_schema_columns():
    context = {"run_id": "r1", "level": 2, "endpoint": "http://x/v1", "mode": "open", "rate": 8.0,
               "workload": "mix short=0.5:10:2,long=0.5:100:10", "slo": "e2e=2s,ttft=200ms", "gpu_util_pct": 50.0}
    rows = level_rows(mixed_level(), context, classes=["short", "long"])
    assert [r["class"] for r in rows] == ["short", "long", "all"]
    for row in rows:
        assert list(row) == LOAD_COLUMNS
        assert row["schema_version"] == LOAD_SCHEMA_VERSION and row["run_id"] == "r1" and row["gpu_util_pct"] == 50.0
        assert row["slo"] == "ttft=200ms,e2e=2000ms" and row["max_send_lag_ms"] == 10.0 and row["warmup_requests"] == 1
    short, long, total = rows
    assert (short["input_len"], long["input_len"], total["input_len"]) == (10, 55, 28)  # rounded means where mixed
    assert short["output_len"] == round((2 + 3 + 2) / 3) and total["output_len"] == round((2 + 3 + 10 + 4 + 2) / 5)


def test_class_rows_add_up_to_the_total():
    rows = level_rows(mixed_level(), {}, classes=["short", "long"])
    short, long, total = rows
    for column in ("sent", "completed", "failed", "timeouts", "samples"):
        assert short[column] + long[column] == total[column], column
    for column in ("req_s", "output_tok_s", "total_tok_s"):
        assert short[column] + long[column] == pytest.approx(total[column]), column
    assert short["elapsed_s"] == long["elapsed_s"] == total["elapsed_s"]
    # one slow send (500 ms lag) makes the level client-bound, and so every class of it
    assert total["status"] == "client-bound" and long["status"] == "client-bound"


def test_one_class_gives_one_row_and_elapsed_may_come_from_the_runner():
    rows = level_rows([record(0, 0.0, 0.1, [0.1]), record(1, 1.0, 0.1, [0.1])], {}, elapsed=4.0)
    assert len(rows) == 1 and rows[0]["class"] == "all" and rows[0]["req_s"] == pytest.approx(0.5)


def test_unknown_context_columns_are_a_bug():
    with pytest.raises(ValueError, match="outside the load schema"):
        level_rows([record(0, 0.0, 0.1, [])], {"latency": 1})


def test_sidecar_keeps_every_request_with_the_level_key():
    records = mixed_level()
    rows = level_rows(records, {"run_id": "r1", "level": 0, "rate": 2.0})
    side = sidecar_record(rows, records)
    assert side["run_id"] == "r1" and side["level"] == 0 and side["rate"] == 2.0
    assert len(side["samples"]) == len(records) and side["samples"][0]["token_times_s"] == records[0].token_times_s
    assert side["samples"][5]["warmup"] is True


def test_parse_slo():
    assert parse_slo("ttft=200ms,tpot=50ms,e2e=2s") == pytest.approx({"ttft": 0.2, "tpot": 0.05, "e2e": 2.0})
    assert parse_slo("E2E=1.5s") == {"e2e": 1.5} and parse_slo(None) == {} and parse_slo("") == {}
    assert format_slo(parse_slo("e2e=2s,ttft=0.2s")) == "ttft=200ms,e2e=2000ms"


@pytest.mark.parametrize("text, message", [
    ("ttft=200", "--slo ttft must be a positive time in ms or s"),
    ("ttft=fast", "--slo ttft must be a positive time"),
    ("ttft=-5ms", "--slo ttft must be a positive time"),
    ("itl=5ms", "--slo items are ttft|tpot|e2e=VALUE"),
    ("ttft:200ms", "--slo items are"),
    ("ttft=1s,ttft=2s", "--slo gives ttft twice"),
])
def test_bad_slo_is_one_clear_line(text, message):
    with pytest.raises(QwenoptError, match=message.replace("|", r"\|")) as error:
        parse_slo(text)
    assert "\n" not in str(error.value)


def test_a_class_that_drew_no_request_still_gets_its_row():
    records = [record(0, 0.0, 0.1, [0.1], cls="short"), record(1, 0.5, 0.1, [0.1], cls="short")]
    short, long, total = level_rows(records, {}, classes=["short", "long"])
    assert long["class"] == "long" and long["sent"] == 0 and long["status"] == "failed"
    assert long["error"] == "no measured request" and total["status"] == "ok" and short["sent"] == total["sent"] == 2


def test_a_level_without_records_is_a_failed_row():
    (row,) = level_rows([], {"run_id": "r"})
    assert row["status"] == "failed" and row["sent"] == 0 and math.isnan(row["elapsed_s"]) and math.isnan(row["req_s"])


def test_arrived_rate_is_what_the_level_really_offered():
    """Four measured arrivals at 0, 0.5, 1 and 2 s: 3 gaps in 2 s, 1.5 req/s, whatever rate was asked; a warm-up
    request (at -1 s) and a failed one count as arrivals only when measured; one arrival has no rate."""
    from qwenopt.serving.metrics import arrival_rate

    records = [record(0, -1.0, 0.1, [0.1], warmup=True), record(1, 0.0, 0.1, [0.1]), record(2, 0.5, 0.1, [0.1]),
               failed(3, 1.0), record(4, 2.0, 0.1, [0.1])]
    assert arrival_rate([r for r in records if not r.warmup]) == pytest.approx(1.5)
    total = level_rows(records, {"rate": 4.0, "mode": "open"})[-1]
    assert total["arrived_req_s"] == pytest.approx(1.5) and total["rate"] == 4.0
    assert math.isnan(arrival_rate(records[1:2])) and math.isnan(arrival_rate([]))
