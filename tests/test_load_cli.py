"""`qwenopt load` end to end against the streaming test server: rows per level, exit codes, bad input."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.results import read_samples
from qwenopt.schema import LOAD_COLUMNS
from qwenopt.serving.client import Target
from qwenopt.serving.loadgen import Level, run_level
from qwenopt.serving.metrics import level_rows
from qwenopt.serving.sweep import LoadRun, run_levels
from qwenopt.workload import make_workload

from .stream_server import MODEL, serve_in_process, serve_in_thread
from .test_loadgen import constant
from .helpers import free_port

FAST = dict(ttft_s=0.002, gap_s=0.001)


def invoke(url, *args):
    return CliRunner().invoke(app, ["load", "--endpoint", url, "--model", "qwen2-tiny", "--input-len", "8",
                                    "--output-len", "3", *args])


def test_load_writes_a_row_per_level_with_samples(tmp_results):
    with serve_in_thread(**FAST) as (url, _):
        result = invoke(url, "--rate", "20,40", "--duration", "0.5", "--out", "load.csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "load.csv")
    assert list(frame.columns) == LOAD_COLUMNS
    assert list(frame["level"]) == [1, 2] and list(frame["rate"]) == [20, 40] and set(frame["mode"]) == {"open"}
    for _, row in frame.iterrows():
        assert row["completed"] == row["sent"] > 0 and row["failed"] == 0 and row["short"] == 0
        assert row["ttft_p50_ms"] > 0 and row["itl_p50_ms"] > 0 and row["send_lag_p99_ms"] >= 0
        assert row["server"] == "vllm" and row["model"] == MODEL and row["torch"]
    samples = read_samples(tmp_results / "load.csv")
    assert [len(s["samples"]) for s in samples] == list(frame["sent"])
    assert "level 1: 20 req/s" in result.stdout and "TTFT P50 / P99 ms" in result.stdout


def test_no_level_resends_another_levels_prompts_and_a_rerun_sends_the_same(tmp_results):
    """On the H200 a tune trial's later levels resent level 1's prompts and vLLM's prefix cache served 97% of their
    prefill: each level now has prompts of its own, still the same ones in a run with the same seed. Every row says
    what share of its prompt tokens the server's cache served (this server's /metrics: a cache of whole prompts)."""
    with serve_in_thread(**FAST) as (url, server):
        for out in ("p1.csv", "p2.csv"):
            result = invoke(url, "--rate", "40,40", "--num-requests", "6", "--warmup", "2", "--seed", "5",
                            "--out", out)
            assert result.exit_code == 0, result.output
        sent = server.stats.prompts
    assert "prefix cache hit %" in result.stdout and "100.0" in result.stdout
    assert "prefix cache served 100% of the prompt tokens" in " ".join(result.stdout.split())
    assert len(sent) == 32 and len(set(sent[:16])) == 16  # 2 levels x (2 warm-up + 6): no prompt twice in a run
    assert sorted(sent[:16]) == sorted(sent[16:])  # the rerun: the same prompts
    assert list(pd.read_csv(tmp_results / "p1.csv")["prefix_cache_hit_rate"]) == [0.0, 0.0]
    assert list(pd.read_csv(tmp_results / "p2.csv")["prefix_cache_hit_rate"]) == [1.0, 1.0]


def test_a_level_run_on_its_own_gets_its_numbers_prompts(monkeypatch):
    """tune's trials run their levels one by one (run_one without a built level): level n must have level n's
    prompts there too."""
    from qwenopt.serving import sweep

    seen = {}
    monkeypatch.setattr(sweep, "run_level", lambda target, level, on_record, inline: seen.setdefault("l", level) and [])
    monkeypatch.setattr(sweep, "write_level", lambda *args, **kwargs: [])
    run = LoadRun(target=None, workload=make_workload(8, 3, vocab_size=1000), mode="open", values=[5.0], out=None,
                  num_requests=4)
    sweep.run_one(run, 3, "open", 5.0, lambda *args: None, lambda rows: None)
    assert seen["l"].prompts.level == 3 and seen["l"].prompts.prompt(0, 8) == run.workload.for_level(3).prompt(0, 8)


def test_closed_loop_levels_and_classes(tmp_results):
    with serve_in_thread(**FAST) as (url, server):
        result = CliRunner().invoke(app, ["load", "--endpoint", url, "--model", "qwen2-tiny", "--concurrency", "2",
                                          "--num-requests", "12", "--mix", "a=0.5:8:2,b=0.5:4:3", "--out", "c.csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "c.csv")
    assert list(frame["class"]) == ["a", "b", "all"] and set(frame["concurrency"]) == {2}
    total = frame.iloc[-1]
    assert total["sent"] == 12 and frame.iloc[:2]["sent"].sum() == 12
    assert server.stats.max_in_flight <= 2


def test_transformers_dialect_end_to_end(tmp_results):
    with serve_in_thread(dialect="transformers", **FAST) as (url, _):
        result = invoke(url, "--dialect", "transformers", "--rate", "20", "--num-requests", "5", "--out", "t.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_results / "t.csv").iloc[-1]
    assert row["completed"] == 5 and row["server"] == "transformers"


def test_short_streams_exit_1_with_their_reason(tmp_results):
    with serve_in_thread(short_by=1, **FAST) as (url, _):
        result = invoke(url, "--rate", "20", "--num-requests", "4", "--out", "s.csv")
    assert result.exit_code == 1
    row = pd.read_csv(tmp_results / "s.csv").iloc[-1]
    assert row["short"] == 4 and row["completed"] == 0 and row["status"] == "failed"
    assert "4 x short: 2 of 3 tokens" in result.stdout


def test_a_server_that_dies_mid_run_still_gives_a_row(tmp_results):
    with serve_in_thread(ttft_s=0.005, gap_s=0.01, die_after=4) as (url, _):
        result = invoke(url, "--rate", "40", "--num-requests", "12", "--timeout", "3", "--out", "d.csv")
    assert result.exit_code == 1
    row = pd.read_csv(tmp_results / "d.csv").iloc[-1]
    # the first requests may finish before the 4th kills it; every later one is counted as not ok
    assert row["sent"] == 12 and row["failed"] + row["truncated"] >= 9
    assert row["completed"] + row["failed"] + row["truncated"] == 12
    assert "failed:" in result.stdout  # the reasons are printed


def test_a_sweep_measures_saturation_then_places_rates(tmp_results):
    # streams of ~25 ms from a server of its own: one user gets ~40 req/s, 20 users at once many times that
    with serve_in_process(ttft_s=0.02, gap_s=0.002) as (url, _):
        result = invoke(url, "--rate", "sweep", "--num-requests", "20", "--out", "w.csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "w.csv")
    assert list(frame["mode"][:2]) == ["closed", "closed"] and list(frame["concurrency"][:2]) == [1, 256]
    rates = list(frame["rate"][2:])
    assert len(rates) == 8 and rates == sorted(rates)
    assert rates[-1] == pytest.approx(frame["req_s"][1])  # the last level offers the measured saturation rate


def test_ctrl_c_writes_the_finished_part_of_the_level(tmp_path):
    seen = []

    def begin(number, mode, value, expected):
        def on_record(record):
            seen.append(record)
            if len(seen) == 5:
                raise KeyboardInterrupt

        return on_record

    with serve_in_thread(**FAST) as (url, _):
        run = LoadRun(target=Target(url, MODEL, "vllm", 5.0, 1000), workload=make_workload(8, 3, vocab_size=1000),
                      mode="open", values=[50.0], out=tmp_path / "i.csv", num_requests=40)
        with pytest.raises(KeyboardInterrupt):
            run_levels(run, begin, lambda rows: None)
    row = pd.read_csv(tmp_path / "i.csv").iloc[-1]
    assert 5 <= row["sent"] < 40 and row["completed"] == row["sent"]
    assert row["error"].startswith("interrupted")


def test_a_blocked_client_loop_makes_the_level_client_bound():
    def stalling():
        for plan in constant(30, 100.0, 2):
            if plan.index == 15:
                __import__("time").sleep(0.1)  # a busy client: the event loop does nothing else meanwhile
            yield plan

    with serve_in_thread(**FAST) as (url, _):
        records = run_level(Target(url, MODEL, "vllm", 5.0, 1000), Level(stalling))
    row = level_rows(records, {"max_send_lag_ms": 10})[-1]
    assert row["status"] == "client-bound" and row["send_lag_p99_ms"] > 10 and "send lag" in row["error"]


@pytest.mark.parametrize("args, message", [
    (["--rate", "0"], "--rate must be a positive number"),
    (["--slo", "ttft=fast"], "--slo ttft must be a positive time"),
    (["--mix", "a=0.5:8:2,b=0.4:8:2", "--input-len", None], "shares must sum to 1"),
    (["--workload", "missing.jsonl", "--input-len", None], "missing.jsonl"),
    (["--rate", "1", "--concurrency", "2"], "not both"),
    (["--dialect", "grpc"], "--dialect must be one of"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--out", "."], "--out must name a .csv file"),
    (["--out", "dir.csv"], "is a directory"),
    (["--out", "/proc/x/y.csv"], "not a place for files"),
    (["--endpoint", None], "give exactly one of --endpoint URL or --launch REGIME"),
    (["--launch", "vllm-fp16"], "give exactly one of"),
    (["--endpoint", "http://127.0.0.1:{port}/v1"], "cannot reach an OpenAI-compatible endpoint"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_results, args, message):
    (tmp_results / "dir.csv").mkdir()
    base = {"--endpoint": "http://127.0.0.1:{port}/v1", "--input-len": "8", "--duration": "0.2", "--out": "o.csv"}
    for flag, value in zip(args[::2], args[1::2]):
        base.pop(flag, None)
        if value is not None:
            base[flag] = value
    port = free_port()
    argv = ["load", "--model", "qwen2-tiny"] + [x.format(port=port) for kv in base.items() for x in kv]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_results / "o.csv").exists()


def test_malformed_models_answer_is_exit_2(tmp_results):
    with serve_in_thread(models_body='{"data": "x"}') as (url, _):
        result = invoke(url, "--rate", "5", "--duration", "0.2", "--out", "m.csv")
    assert result.exit_code == 2 and "did not list a model" in result.output
    assert "Traceback" not in result.output


class FakeSampler:
    """Stands in for the NVML sampler: 90 J over every level, known GPU columns."""
    energy_j = float("nan")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.energy_j = 90.0

    def summary(self):
        return {"gpu_mem_peak_gib": 10.0, "gpu_util_pct": 50.0, "power_w": 300.0}


def test_energy_per_token_comes_from_the_levels_energy_counter(tmp_results, monkeypatch):
    import qwenopt.telemetry

    monkeypatch.setattr(qwenopt.telemetry, "GPUSampler", FakeSampler)
    with serve_in_thread(**FAST) as (url, _):
        result = CliRunner().invoke(app, ["load", "--endpoint", url, "--model", "qwen2-tiny", "--concurrency", "2",
                                          "--num-requests", "10", "--mix", "a=0.5:8:3,b=0.5:8:3", "--out", "e.csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "e.csv")
    total = frame[frame["class"] == "all"].iloc[0]
    assert total["completed"] == 10 and total["gpu_util_pct"] == 50.0
    assert total["energy_j_per_tok"] == pytest.approx(90.0 / (10 * 3))  # 90 J over 10 requests of 3 tokens
    assert frame[frame["class"] != "all"]["energy_j_per_tok"].isna().all()  # the counter cannot split by class
