import math

import pytest

from qwenopt.engines.base import RequestSample
from qwenopt.stats import cell_metrics, count_mismatches, percentile


def test_percentile_interpolates_linearly():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    # rank (n-1) * q = 3 * 0.99 = 2.97 -> 3 + 0.97 * (4 - 3)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert math.isnan(percentile([], 50))


def test_cell_metrics_against_hand_computed_values():
    # Two iterations of a batch of 2, output_len 5, input_len 10.
    it1 = [RequestSample(e2e_s=1.0, ttft_s=0.2, output_tokens=5), RequestSample(e2e_s=1.0, ttft_s=0.2, output_tokens=5)]
    it2 = [RequestSample(e2e_s=3.0, ttft_s=1.0, output_tokens=5), RequestSample(e2e_s=2.0, ttft_s=0.4, output_tokens=5)]
    m = cell_metrics([it1, it2], [1.0, 3.0], input_len=10, output_len=5)
    assert m["samples"] == 4 and m["timings"] == 4  # each request timed on its own (vLLM, load)
    assert cell_metrics([it1, it2], [1.0, 3.0], 10, 5, static_batch=True)["timings"] == 2  # one per batch
    # e2e sorted [1, 1, 2, 3]: p50 = 1.5; p90 rank 2.7 -> 2 + 0.7 = 2.7; mean 1.75
    assert m["latency_p50_s"] == pytest.approx(1.5)
    assert m["latency_p90_s"] == pytest.approx(2.7)
    assert m["latency_mean_s"] == pytest.approx(1.75)
    # ttft sorted [0.2, 0.2, 0.4, 1.0]: p50 = 0.3 s
    assert m["ttft_p50_ms"] == pytest.approx(300.0)
    # tpot = (e2e - ttft) / 4: [0.2, 0.2, 0.5, 0.4] -> sorted [0.2, 0.2, 0.4, 0.5], p50 0.3 s
    assert m["tpot_p50_ms"] == pytest.approx(300.0)
    # wall time of the two engine calls: 1 + 3 = 4 s; 4 requests x 5 tokens = 20 tokens
    assert m["output_tok_s"] == pytest.approx(5.0)
    assert m["total_tok_s"] == pytest.approx(4 * 15 / 4)
    assert m["req_s"] == pytest.approx(1.0)


def test_tpot_is_empty_for_single_token_outputs():
    m = cell_metrics([[RequestSample(0.5, 0.5, 1)]], [0.5], input_len=4, output_len=1)
    assert math.isnan(m["tpot_p50_ms"])
    assert m["output_tok_s"] == pytest.approx(2.0)


def test_count_mismatches_counts_requests_with_other_lengths():
    batch = [RequestSample(1, 0.1, 8), RequestSample(1, 0.1, 7), RequestSample(1, 0.1, 9)]
    assert count_mismatches([batch], 8) == 2
