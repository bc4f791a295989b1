"""`tune --launch` end to end: the streaming test server in place of `vllm serve`, through a fake start_server and
through the real launcher; an OOM start, Ctrl-C, resume, bad input; matrix and report read the result."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.engines.vllm import default_model_dir
from qwenopt.errors import QwenoptError
from qwenopt.models import resolve_model
from qwenopt.results import read_jsonl
from qwenopt.schema import TUNE_LOAD_COLUMNS
from .helpers import flag, free_port

pytest.importorskip("optuna")


def fake_start_server(oom_at: int):
    """start_server's stand-in: a streaming test server per trial, but the launcher's error at the oom_at-th start."""
    from .stream_server import serve_in_thread

    started = []

    def start(stack, launch, *, engine_args, quant, **_):
        started.append(engine_args)
        if len(started) == oom_at:
            raise QwenoptError("vllm serve exited with code 1 before it was ready; last lines:\n"
                               "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        url, _ = stack.enter_context(serve_in_thread(ttft_s=0.002, gap_s=0.001))
        server = SimpleNamespace(base_url=url, model="fake-qwen", dialect="vllm", startup_s=0.01,
                                 command=["python", "-m", "vllm.entrypoints.cli.main", "serve", "/m",
                                          "--max-num-seqs", "64"])
        return server, {"regime": launch, "model": "qwen2.5-7b", "weights": "random", "quant": quant,
                        "serve_mode": "fcfs", "tp": 1, "pp": 1, "gpus": 1,
                        "engine_args": json.dumps(engine_args, sort_keys=True), "startup_s": 0.01}

    start.started = started
    return start


TUNE = ["tune", "--launch", "vllm-int4", "--quant", "awq", "--weights", "random", "--slo", "e2e=2s",
        "--input-len", "8", "--output-len", "3", "--level-duration", "0.4", "--level-requests", "0",
        "--burst-users", "4", "--probes", "1",
        "--space", "max_num_seqs=default,64,128;linear_backend=auto,marlin", "--max-send-lag-ms", "5000",
        "--out", "tune.csv"]


def test_tune_launch_end_to_end_with_an_oom_trial_and_resume(tmp_results, monkeypatch):
    import qwenopt.cli.load

    fake = fake_start_server(oom_at=2)
    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake)
    result = CliRunner().invoke(app, [*TUNE, "--trials", "4"])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and trials[0]["search_step"] == "default"
    frame = pd.read_csv(tmp_results / "tune.csv")
    assert list(frame.columns) == TUNE_LOAD_COLUMNS
    # every trial that started has its levels as load rows; this server meets the SLO even at the saturation
    # burst, so that burst is the trial's goodput (the probes below it are tested on their own)
    for trial in (t for t in trials if t["status"] != "oom"):
        rows = frame[frame["trial"] == trial["trial"]]
        assert list(rows["mode"]) == ["closed"] and set(rows["trial_status"]) == {"ok"}
        assert trial["status"] == "ok" and trial["goodput_req_s"] == pytest.approx(rows["req_s"].max())
        # the load that burst held is the rate its requests came at, which the next trial's first probe must beat
        assert trial["rate_req_s"] == pytest.approx(rows["arrived_req_s"].max())
    assert [t["status"] for t in trials] == ["ok", "oom", "ok", "ok"]
    assert all(len(t["tail"].split(" / ")) == 3 for t in trials if t["status"] == "ok")  # the best level's split
    assert trials[1]["tail"] is None
    rows = frame[frame["trial"] == 1]  # its server ran out of memory: one row with the reason; the search went on
    assert len(rows) == 1 and rows.iloc[0]["trial_status"] == "oom" and rows.iloc[0]["status"] == "error"
    assert "out of memory" in rows.iloc[0]["trial_reason"]
    assert json.loads(frame[frame["trial"] == 0].iloc[0]["trial_config"]) == {}
    assert "winner: trial" in result.output and "Pareto front" in result.output and "vllm serve /m" in result.output
    assert "qwenopt gateway --upstream" in result.output
    assert all(len(line) <= 80 for line in result.output.splitlines() if not line.startswith("  VLLM_"))
    assert (tmp_results / "tune.outcome.txt").is_file()

    again = CliRunner().invoke(app, [*TUNE, "--trials", "4"])
    assert again.exit_code == 2 and "--resume" in again.output  # never silently a second search in one file
    more = CliRunner().invoke(app, [*TUNE, "--trials", "6", "--resume"])
    assert more.exit_code == 0, more.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [t["trial"] for t in trials] == list(range(6))
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == 6
    assert "4 resumed" in more.output
    other = CliRunner().invoke(app, [*TUNE, "--trials", "6", "--resume", "--level-requests", "10"])
    assert other.exit_code == 2 and "6 trials of another search" in other.output  # its logs would overwrite these
    # the load readers take the file as load rows (matrix, report)
    from qwenopt.collect import collect

    found = collect([tmp_results / "tune.csv"])
    assert found.kinds == {str(tmp_results / "tune.csv"): "load"}
    assert len(found.load) == len(pd.read_csv(tmp_results / "tune.csv"))
    matrix = CliRunner().invoke(app, ["matrix", "tune.csv", "--slo-p99", "2", "--format", "csv"])
    assert matrix.exit_code == 0, matrix.output
    report = CliRunner().invoke(app, ["report", "tune.csv", "--slo-p99", "2", "-o", "tune.html"])
    assert report.exit_code == 0, report.output


def test_a_trials_levels_never_resend_the_bursts_prompts(tmp_results, monkeypatch):
    """A trial's burst sends more requests than any of its open-loop levels; when they resent its prompts, vLLM's
    prefix cache served them (H200, results/h200/tune/confirm-prompt-reuse). An SLO no level meets makes the trial
    measure the burst and every halving below it, each on prompts the server has not seen."""
    import qwenopt.cli.load

    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake_start_server(oom_at=0))
    args = [a if a != "e2e=2s" else "e2e=0.001ms" for a in TUNE]
    result = CliRunner().invoke(app, [*args, "--trials", "1", "--space", "max_num_seqs=default"])
    assert result.exit_code == 1, result.output  # no level met the SLO
    frame = pd.read_csv(tmp_results / "tune.csv")
    total = frame[frame["class"] == "all"]
    # the burst, then the halvings: trial 0 bisects --probes 1 plus 2 (the baseline), and while none has met the SLO
    # halves on up to 2 x 1 + 2
    assert list(total["mode"]) == ["closed", "open", "open", "open", "open"]
    assert list(total["prefix_cache_hit_rate"]) == [0.0] * 5


def test_ctrl_c_mid_trial_keeps_the_finished_trials_and_shows_them(tmp_results, monkeypatch):
    import qwenopt.cli.load

    fake = fake_start_server(oom_at=0)

    def start(stack, launch, **kwargs):
        if len(fake.started) == 2:
            raise KeyboardInterrupt
        return fake(stack, launch, **kwargs)

    monkeypatch.setattr(qwenopt.cli.load, "start_server", start)
    result = CliRunner().invoke(app, [*TUNE, "--trials", "4"])
    assert result.exit_code == 130
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [(t["trial"], t["status"]) for t in trials] == [(0, "ok"), (1, "ok"), (2, "interrupted")]
    assert "winner: trial" in result.output and "1 more interrupted" in result.output.replace("\n", " ")


def test_tune_launch_through_the_real_launcher(tmp_results, monkeypatch):
    """Everything but vLLM: the regime's plan, the random AWQ folder, `vllm serve`'s argv with each trial's flags,
    the process group started and stopped per trial; the streaming test server answers in vLLM's place, and the
    second start dies as vLLM does when out of memory."""
    import sys
    from pathlib import Path

    import qwenopt.bench
    import qwenopt.regimes
    from qwenopt.serving import launcher

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    monkeypatch.setattr(launcher, "POLL_S", 0.05)
    monkeypatch.setattr(qwenopt.regimes, "missing_packages", lambda spec: [])
    monkeypatch.setattr(qwenopt.bench, "gpu_count", lambda: 1)
    real, argvs = launcher.serve_command, []
    server = str(Path(__file__).with_name("stream_server.py"))

    def serve_command(spec, options, model_dir, port, host="127.0.0.1"):
        argvs.append(real(spec, options, model_dir, port, host))
        if len(argvs) == 2:
            return [sys.executable, "-c", "print('torch.OutOfMemoryError: CUDA out of memory.'); raise SystemExit(1)"]
        return [sys.executable, server, "--port", str(port), "--ttft-s", "0.002", "--gap-s", "0.001", "--lifetime", "60"]

    monkeypatch.setattr(launcher, "serve_command", serve_command)
    args = [a if a != "max_num_seqs=default,64,128;linear_backend=auto,marlin" else "linear_backend=auto,marlin;kv_cache_dtype=auto,fp8"
            for a in TUNE]
    result = CliRunner().invoke(app, [*args, "--trials", "3", "--port", str(free_port()),
                                      "--engine-args", '{"served_model_name": "fake-qwen"}'])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [t["status"] for t in trials] == ["ok", "oom", "ok"]
    assert trials[0]["config"]["linear_backend"] == "auto"  # vLLM's defaults
    for trial, argv in zip(trials, argvs):
        assert argv[4] == str(default_model_dir(resolve_model("qwen2.5-7b", "random"), "awq", None))
        assert flag(argv, "--quantization") == "awq" and flag(argv, "--served-model-name") == "fake-qwen"
        assert "--no-enable-prefix-caching" not in argv  # vLLM's default: the launcher's own "off" undone
        for knob, default in (("linear_backend", "auto"), ("kv_cache_dtype", "auto")):
            name = "--" + knob.replace("_", "-")
            value = trial["config"][knob]
            assert (name not in argv) if value == default else flag(argv, name) == value
    assert "out of memory" in trials[1]["reason"]
    logs = tmp_results / "tune.server-logs"  # each trial's server log is kept beside the results
    assert sorted(f.name for f in logs.iterdir()) == ["trial-0.log", "trial-1.log", "trial-2.log"]
    assert "CUDA out of memory" in (logs / "trial-1.log").read_text()


@pytest.mark.parametrize("args, message", [
    (["--launch", "hf-fp16", "--slo", "e2e=2s", "--spec-acceptance", "0.6"], "transformers serve has none"),
    (["--launch", "hf-fp16", "--slo", "e2e=2s", "--compile"], "--space compile=true"),
    (["--launch", "hf-nf4", "--slo", "e2e=2s", "--quant", "awq"], "--quant is for vllm-int4"),
    (["--launch", "hf-fp16", "--slo", "e2e=2s", "--space", "max_num_seqs=64"], "not a transformers serve setting"),
    (["--launch", "vllm-fp16", "--slo", "e2e=2s", "--device", "cpu"], "--device"),
    (["--launch", "vllm-fp16"], "--slo"),
    (["--launch", "vllm-fp16", "--slo", "e2e=2s", "--slo-p99", "2"], "--slo-p99"),
    (["--launch", "hf-fp16", "--slo", "e2e=2s", "--attn", "sdpa"], "--attn go with --regime"),
    (["--launch", "vllm-fp16", "--slo", "e2e=2s", "--space", "linear_backend=marlin"], "vllm-int4 only"),
    (["--launch", "vllm-fp16", "--slo", "e2e=2s", "--quant", "awq"], "--quant"),
    (["--launch", "vllm-int4", "--slo", "e2e=2s", "--spec-acceptance", "1.5"], "--spec-acceptance"),
    (["--launch", "vllm-int4", "--slo", "e2e=2s", "--spec-acceptance", "0.8,x"], "takes per-token rates in (0, 1]"),
    (["--launch", "vllm-int4", "--slo", "e2e=2s", "--objective", "speed"], "--objective"),
    (["--slo", "e2e=2s"], "go with --launch"),
    ([], "--slo-p99"),
])
def test_bad_tune_input_is_one_line_and_exit_2(tmp_results, args, message):
    result = CliRunner().invoke(app, ["tune", *args, "--out", "t.csv"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_results / "t.csv").exists()


V2 = "results/h200/tune/v2"
V2_SPACE = "max_num_seqs=default,128,256;max_num_batched_tokens=default,2048,4096,16384;kv_cache_dtype=auto,fp8;" \
           "stream_interval=default,4"


FAST_SPACE = "linear_backend=auto,marlin;max_num_batched_tokens=default,2048;kv_cache_dtype=auto,fp8;" \
             "stream_interval=default,4"
INT4 = ["vllm-int4", "--quant", "awq"]


def _committed_search(tmp_results, name: str, regime: list[str], slo: str, space: str, trials: int, *more: str):
    """`tune --resume` on a copy of a committed search of results/h200/tune/v2, as benchmarks/tune_h100.sh ran it."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for path in (repo / V2).glob(f"{name}.*"):
        if path.is_file():
            shutil.copy(path, tmp_results / path.name)
    return CliRunner().invoke(app, [
        "tune", "--launch", *regime, "--weights", "random", "--input-len", "512", "--output-len", "128",
        "--slo", slo, "--objective", "goodput", "--level-duration", "8", "--probes", "3", "--burst-users", "256",
        "--budget-minutes", "9", "--resume", "--trials", str(trials), "--space", space, "--out", f"{name}.csv",
        *more])


@pytest.mark.parametrize("name, regime, slo, space, trials, won", [
    ("tune_fp16", ["vllm-fp16"], "e2e=2s", V2_SPACE, 6, 5), ("tune_int4", INT4, "e2e=2s", V2_SPACE, 6, 0),
    ("tune_int4-fast", INT4, "e2e=0.8s", FAST_SPACE, 5, 0)])
def test_the_committed_h200_searches_still_resume(tmp_results, monkeypatch, name, regime, slo, space, trials, won):
    """The searches of results/h200/tune/v2, as benchmarks/tune_h100.sh ran them, resume under this code: the study
    key has not moved (knobs added since stay out of it at their default), so `--resume` reads their trials and,
    with --trials at their number, starts no server and prints their outcome."""
    import qwenopt.cli.load

    def no_server(*args, **kwargs):
        raise AssertionError("a resumed search with all its trials starts no server")

    monkeypatch.setattr(qwenopt.cli.load, "start_server", no_server)
    result = _committed_search(tmp_results, name, regime, slo, space, trials)
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert f"search: {trials} trials ({trials} resumed)" in text and f"winner: trial {won}," in text
    if won:  # trial 0's levels were recorded before trials kept their bracket: it comes from the CSV's rows
        assert " ".join(text.split()).count("a rate the defaults missed (at 42.86): at least +4.8% in rate") == 1


def test_the_h200_fast_search_measured_marlin_alone_once(tmp_results, monkeypatch):
    """The committed 0.8 s search ran `TRY='linear_backend=marlin'`: its trial 4 is Marlin with every other knob at
    vLLM's default (step `given`). Resumed with the same --try and one trial more, it does not measure Marlin
    alone again: the next start is the search's own choice."""
    import qwenopt.cli.load

    started = []

    def no_gpu(stack, launch, *, engine_args, **_):
        started.append(engine_args)
        raise QwenoptError("vllm serve exited with code 1 before it was ready; last lines:\nno GPU here")

    monkeypatch.setattr(qwenopt.cli.load, "start_server", no_gpu)
    result = _committed_search(tmp_results, "tune_int4-fast", INT4, "e2e=0.8s", FAST_SPACE, 6,
                               "--try", "linear_backend=marlin")
    assert "5 trials resumed" in result.output.replace("\n", " ")
    trials = read_jsonl(tmp_results / "tune_int4-fast.trials.jsonl")
    assert [t["trial"] for t in trials] == [0, 1, 2, 3, 4, 5] and trials[4]["search_step"] == "given"
    assert {k: v for k, v in trials[4]["config"].items() if v not in ("auto", "default", "awq", 1)} == \
        {"linear_backend": "marlin"}
    assert trials[5]["search_step"] != "given" and trials[5]["status"] != "ok"
    assert len(started) == 1 and trials[5]["config"] != trials[4]["config"]
