"""The load generator against a fake OpenAI-compatible server on loopback: bounded, seeded, self-stopping."""
import asyncio
import socket

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.errors import QwenoptError
from qwenopt.serving.loadgen import LOAD_COLUMNS, LoadOptions, arrival_times, run_load

from .fake_openai import fake_server


def test_arrivals_are_a_seeded_poisson_schedule_within_the_duration():
    times = arrival_times(rate=50, duration_s=2, seed=3)
    assert times == arrival_times(rate=50, duration_s=2, seed=3)
    assert times != arrival_times(rate=50, duration_s=2, seed=4)
    assert all(0 < a < b < 2 for a, b in zip(times, times[1:]))
    assert 60 < len(times) < 140  # mean 100 arrivals


def test_load_measures_every_request_through_the_stream():
    with fake_server(token_delay_s=0.003) as url:
        options = LoadOptions(endpoint=url, rate=40, duration_s=0.5, input_len=16, output_len=5, vocab_size=1000)
        result = asyncio.run(run_load(options))
    assert result.model == "fake-qwen"
    assert result.sent == len(arrival_times(40, 0.5, 0)) and len(result.samples) == result.sent
    assert not result.failures and result.timeouts == 0
    for s in result.samples:
        assert s.output_tokens == 5
        assert 0 < s.ttft_s < s.e2e_s
        assert s.e2e_s - s.ttft_s >= 4 * 0.003 * 0.9  # four more tokens after the first, each delayed


def test_failed_and_late_requests_are_counted_not_hidden():
    with fake_server(fail_every=2) as url:
        result = asyncio.run(run_load(LoadOptions(endpoint=url, rate=40, duration_s=0.4, output_len=2, vocab_size=100)))
    assert len(result.failures) == result.sent // 2 and result.failures[0].startswith("RuntimeError: HTTP 500")
    assert len(result.samples) + len(result.failures) == result.sent
    with fake_server(token_delay_s=0.2) as url:
        result = asyncio.run(run_load(LoadOptions(endpoint=url, rate=20, duration_s=0.2, output_len=3,
                                                  vocab_size=100, timeout_s=0.1)))
    assert result.timeouts == result.sent and not result.samples
    with fake_server(error_in_stream=True) as url:
        result = asyncio.run(run_load(LoadOptions(endpoint=url, rate=20, duration_s=0.2, output_len=3, vocab_size=100)))
    assert not result.samples and result.failures[0].startswith("RuntimeError: error in stream")


def test_max_concurrency_bounds_requests_in_flight():
    with fake_server(token_delay_s=0.01) as url:
        result = asyncio.run(run_load(LoadOptions(endpoint=url, rate=200, duration_s=0.1, output_len=5,
                                                  vocab_size=100, max_concurrency=1)))
    # one at a time: n requests of at least 5 x 10 ms each take at least n x 50 ms in all, though all arrive in 0.1 s
    assert len(result.samples) == result.sent > 5
    assert result.elapsed_s >= len(result.samples) * 0.05 * 0.9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_command_writes_a_row(tmp_results):
    with fake_server() as url:
        args = ["load", "--endpoint", url, "--rate", "30", "--duration", "0.3", "--input-len", "8", "--output-len", "3",
                "--out", "load.csv"]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "load.csv")
    assert list(frame.columns) == LOAD_COLUMNS
    row = frame.iloc[0]
    assert row["completed"] == row["sent"] > 0 and row["failed"] == 0 and row["mismatched"] == 0
    assert row["output_tok_s"] == pytest.approx(row["completed"] * 3 / row["elapsed_s"])
    assert row["torch"] and row["qwenopt"]  # the fingerprint travels with the row


def test_load_command_exits_1_when_tokens_fall_short(tmp_results):
    with fake_server(short_by=1) as url:
        result = CliRunner().invoke(app, ["load", "--endpoint", url, "--rate", "20", "--duration", "0.2",
                                          "--output-len", "3", "--out", "l.csv"])
    assert result.exit_code == 1
    assert pd.read_csv(tmp_results / "l.csv").iloc[0]["mismatched"] > 0


@pytest.mark.parametrize("args, message", [
    (["--endpoint", "http://127.0.0.1:{port}/v1"], "cannot reach an OpenAI-compatible endpoint"),
    ([], "give exactly one of --endpoint URL or --launch REGIME"),
    (["--endpoint", "http://x/v1", "--launch", "vllm-fp16"], "give exactly one of"),
    (["--endpoint", "http://127.0.0.1:{port}/v1", "--rate", "0"], "--rate and --duration must be positive"),
    (["--launch", "hf-fp16"], "--device cuda asked for, but no CUDA GPU is visible"),
])
def test_load_bad_input(tmp_results, args, message):
    port = _free_port()  # nothing listens there
    result = CliRunner().invoke(app, ["load", *[a.format(port=port) for a in args], "--duration", "0.1"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_results / "results").exists()
