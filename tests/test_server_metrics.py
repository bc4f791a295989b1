"""The prefix-cache column: vLLM's counters parsed as prometheus-client writes them, the share over a level."""
import pytest

from qwenopt.serving.server_metrics import (
    HITS, QUERIES, metrics_url, parse_counters, prefix_cache_counters, prefix_cache_hit_rate,
)

from .helpers import free_port
from .stream_server import serve_in_thread

prometheus_client = pytest.importorskip("prometheus_client")


def exposition(queries: dict[str, float], hits: dict[str, float]) -> str:
    """/metrics text as vLLM's prometheus-client registry writes it: one sample per engine, plus _created gauges."""
    registry = prometheus_client.CollectorRegistry()
    for name, values in ((QUERIES, queries), (HITS, hits)):
        counter = prometheus_client.Counter(name, "tokens", ["engine", "model_name"], registry=registry)
        for engine, value in values.items():
            counter.labels(engine, "qwenopt").inc(value)
    prometheus_client.Counter("vllm:prompt_tokens", "not ours", registry=registry).inc(7)
    return prometheus_client.generate_latest(registry).decode()


def test_counters_are_summed_over_engines_and_nothing_else_is_taken():
    text = exposition({"0": 600, "1": 400}, {"0": 150, "1": 50})
    assert parse_counters(text) == {QUERIES: 1000.0, HITS: 200.0}


def test_the_hit_rate_is_the_levels_share_of_queried_tokens():
    before, after = {QUERIES: 100.0, HITS: 20.0}, {QUERIES: 1100.0, HITS: 770.0}
    assert prefix_cache_hit_rate(before, after) == {"prefix_cache_hit_rate": 0.75}  # 750 of 1000 tokens
    assert prefix_cache_hit_rate(before, {QUERIES: 100.0, HITS: 20.0}) == {}  # nothing queried: no figure
    assert prefix_cache_hit_rate(after, before) == {}  # the server restarted: counters went back
    assert prefix_cache_hit_rate(None, after) == {} and prefix_cache_hit_rate(before, None) == {}


def test_metrics_sit_beside_v1_not_under_it():
    assert metrics_url("http://h:8000/v1") == metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000") == "http://h:8000/metrics"


def test_a_server_without_the_counters_gives_no_figure():
    with serve_in_thread(dialect="transformers") as (url, _):  # answers /metrics with 404
        assert prefix_cache_counters(url) is None
    assert prefix_cache_counters(f"http://127.0.0.1:{free_port()}/v1", timeout_s=0.5) is None  # nobody listening
    assert prefix_cache_counters(None) is None
    with serve_in_thread() as (url, _):
        assert prefix_cache_counters(url) == {QUERIES: 0.0, HITS: 0.0}
