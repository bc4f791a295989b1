"""`tune --launch hf-*`: transformers serve's settings as knobs (checked against transformers' own serve parser),
the knobs refused, continuous batching's settings counted only with it on, and the search end to end on the CPU
with real transformers serve processes."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.engines.base import EngineOptions
from qwenopt.errors import QwenoptError
from qwenopt.models import resolve_model
from qwenopt.regimes import get_regime
from qwenopt.results import read_jsonl
from qwenopt.schema import TRIAL_COLUMNS, TUNE_LOAD_COLUMNS
from qwenopt.serving import hf_launch, tune_space_hf
from qwenopt.serving.tune_space import DEFAULT, VLLM
from qwenopt.serving.tune_space_hf import canonical, hf_knobs, launch_settings, make_knobs, parse_hf_space
from .helpers import free_port
from .test_load_launch import serve_processes

pytest.importorskip("optuna")
FP16 = get_regime("hf-fp16")
CPU_KNOBS = make_knobs("sdpa", "fp32", "cpu")
GPU_KNOBS = make_knobs("sdpa", "bf16", "cuda", (9, 0))


def serve_params(argv: list[str]) -> dict:
    """What the installed transformers serve's own CLI parser makes of an argv (no server started)."""
    import typer
    from transformers.cli.serve import Serve

    cli = typer.Typer()
    cli.command(name="serve")(Serve)  # as transformers' own CLI registers it
    return typer.main.get_command(cli).make_context("serve", argv[argv.index("serve") + 1:]).params


def argv_for(config: dict, device: str = "cuda") -> list[str]:
    settings = launch_settings(config)
    cb = {k[3:]: v for k, v in settings["engine_args"].items()}
    options = EngineOptions(source=resolve_model("qwen2.5-7b", "random"), device=device, dtype=settings["dtype"],
                            compile=settings["compile"], attn=settings["attn"])
    return hf_launch.serve_command(FP16, options, "/m", 8000, continuous_batching=settings["continuous_batching"],
                                   cb_args=cb or None)


def test_every_knob_is_a_parameter_of_the_installed_transformers_serve():
    from transformers.cli.serve import Serve

    import inspect

    parameters = inspect.signature(Serve.__init__).parameters
    for knob in GPU_KNOBS:
        assert knob.name in parameters, knob.name


def test_each_knob_becomes_the_flag_transformers_serve_parses_into_it():
    config = {"continuous_batching": True, "compile": True, "attn_implementation": "sdpa", "dtype": "float16",
              "cb_num_blocks": 2048, "cb_max_batch_tokens": 1024, "cb_block_size": 32, "cb_use_cuda_graph": False,
              "cb_max_memory_percent": 0.5}
    params = serve_params(argv_for(config))
    for name, value in config.items():
        assert params[name] == value, name
    assert params["force_model"] == "/m"


def test_the_defaults_pass_no_setting_and_leave_continuous_batching_off():
    space = parse_hf_space(None, GPU_KNOBS)
    knobs = hf_knobs(GPU_KNOBS)
    base = knobs.defaults(space)
    assert base["continuous_batching"] is False and base["compile"] is False
    assert base["attn_implementation"] == "sdpa" and base["dtype"] == "bfloat16"
    assert knobs.changed(base) == {} and knobs.config_json(base) == "{}"
    argv = argv_for(base)
    for absent in ("--continuous-batching", "--compile") + tuple(tune_space_hf.flag(k) for k in tune_space_hf.CB_KNOBS):
        assert absent not in argv
    params = serve_params(argv)
    assert all(params[k] is None for k in tune_space_hf.CB_KNOBS)  # transformers' own defaults
    # continuous batching's settings, left at "default", pass no flag either
    assert serve_params(argv_for({**base, "continuous_batching": True}))["cb_num_blocks"] is None


def test_continuous_batching_settings_count_only_with_it_on():
    knobs = hf_knobs(GPU_KNOBS)
    off = {"continuous_batching": False, "compile": False, "cb_num_blocks": 512, "cb_block_size": 32}
    assert canonical(off) == {"continuous_batching": False, "compile": False}
    assert knobs.changed(off) == {} and launch_settings(off)["engine_args"] == {}
    on = {**off, "continuous_batching": True}
    assert knobs.changed(on) == {"continuous_batching": True, "cb_num_blocks": 512, "cb_block_size": 32}
    space = {"continuous_batching": (False, True), "compile": (False, True), "cb_num_blocks": (DEFAULT, 512, 2048),
             "cb_block_size": (DEFAULT, 32)}
    assert knobs.grid_size(space) == 2 * (1 + 3 * 2)  # continuous batching off counts once


def test_the_search_measures_configurations_that_run_alike_once():
    from qwenopt.serving.tune_online import SearchSettings, search
    from qwenopt.serving.tune_trial import TrialResult

    knobs = hf_knobs(CPU_KNOBS)
    space = parse_hf_space("continuous_batching=false,true;cb_num_blocks=64,128,256", CPU_KNOBS)
    measured = []

    def measure(number, step, config):
        measured.append(canonical(config))
        return TrialResult(number, step, config, "ok", goodput_req_s=1.0 + len(measured), latency_p99_s=1.0)

    search(space, SearchSettings("s", trials=10), measure, say=lambda text: None, knobs=knobs)
    keys = [json.dumps(c, sort_keys=True) for c in measured]
    assert len(keys) == len(set(keys)) == 4  # CB off once, CB on with each of the three cache sizes


def test_cpu_space_sizes_the_cache_itself_and_offers_what_the_cpu_runs():
    space = parse_hf_space(None, CPU_KNOBS)
    assert space["attn_implementation"] == ("sdpa",)  # no flash kernel runs on a CPU
    assert DEFAULT not in space["cb_num_blocks"]  # transformers would size it from 90% of the host's RAM
    assert space["cb_use_cuda_graph"] == (DEFAULT,) and space["dtype"] == ("float32", "bfloat16")


@pytest.mark.parametrize("text, message", [
    ("max_num_seqs=64", "not a transformers serve setting"),
    ("cb_max_requests_per_batch=8", "not a transformers serve setting"),  # a config field, not a serve flag
    ("attn_implementation=flash_attention_4", "not a value of attn_implementation"),
    ("attn_implementation=sdpa-flash", "not a value of attn_implementation"),  # serve cannot pin an SDPA backend
    ("cb_num_blocks=0", "not a value of cb_num_blocks"),
    ("continuous_batching=maybe", "not a value of continuous_batching"),
    ("compile", "KNOB=V1,V2"),
])
def test_bad_knobs_are_refused(text, message):
    with pytest.raises(QwenoptError, match=message):
        parse_hf_space(text, CPU_KNOBS)


def test_a_knob_the_installed_transformers_lacks_is_refused_not_guessed(monkeypatch):
    import transformers

    monkeypatch.setattr(tune_space_hf, "serve_parameters",
                        lambda: ("continuous_batching", "compile", "attn_implementation", "dtype", "cb_num_blocks"))
    with pytest.raises(QwenoptError, match=f"transformers {transformers.__version__}'s serve has no --cb-block-size"):
        parse_hf_space("cb_block_size=32", CPU_KNOBS)
    assert "cb_block_size" not in parse_hf_space(None, CPU_KNOBS)  # nor searched by default


def test_serve_cannot_run_a_kernel_that_needs_more_than_its_name():
    with pytest.raises(QwenoptError, match="cannot run sdpa-efficient"):
        hf_launch.served_attention("sdpa-efficient")
    assert hf_launch.served_attention("flash_attention_4") == "flash_attention_4"


def test_vllm_keeps_its_serve_line_and_configurations():
    argv = ["python", "-m", "vllm.entrypoints.cli.main", "serve", "/m", "--max-num-seqs", "64"]
    assert VLLM.serve_line(argv) == "VLLM_USE_FLASHINFER_SAMPLER=0 vllm serve /m --max-num-seqs 64"
    config = {"max_num_seqs": 64, "enforce_eager": "default"}
    assert VLLM.runs_as(config) is config and VLLM.label == "vLLM defaults"


HF_TUNE = ["tune", "--launch", "hf-fp16", "--model", "qwen2-tiny", "--weights", "random", "--device", "cpu",
           "--input-len", "16", "--output-len", "8", "--slo", "e2e=20s", "--trials", "2", "--level-duration", "1",
           "--level-requests", "0", "--burst-users", "2", "--probes", "1",
           "--space", "continuous_batching=false,true;cb_num_blocks=64",
           # the CPU model server and the client share 2 cores here: the client's lag is not what this is about
           "--max-send-lag-ms", "5000", "--out", "tune.csv"]


def test_tune_launches_transformers_serve_on_the_cpu(tmp_results, monkeypatch):
    """Two real transformers serve starts on the tiny model: its defaults, then continuous batching."""
    port = free_port()
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    result = CliRunner().invoke(app, [*HF_TUNE, "--port", str(port)])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    assert [(t["trial"], t["search_step"], t["status"]) for t in trials] == [(0, "default", "ok"), (1, "random", "ok")]
    assert trials[0]["config"]["continuous_batching"] is False and trials[1]["config"]["continuous_batching"] is True
    plain, batched = (t["command"] for t in trials)
    assert plain.startswith("transformers serve ") and "--continuous-batching" not in plain
    assert "--cb-num-blocks 64" in batched and "--continuous-batching" in batched
    for command in (plain, batched):  # the serve line is one transformers serve parses
        assert serve_params(command.split())["device"] == "cpu"
    frame = pd.read_csv(tmp_results / "tune.csv")
    assert list(frame.columns) == TUNE_LOAD_COLUMNS and frame[TRIAL_COLUMNS[:5]].notna().all().all()
    assert set(frame["server"]) == {"transformers"} and set(frame["regime"]) == {"hf-fp16"}
    by_trial = {n: rows for n, rows in frame.groupby("trial")}
    assert set(by_trial[0]["serve_mode"]) == {"plain"} and set(by_trial[0]["trial_config"]) == {"{}"}
    assert set(by_trial[1]["serve_mode"]) == {"continuous-batching"}
    assert json.loads(by_trial[1].iloc[0]["trial_config"]) == {"continuous_batching": True}
    assert json.loads(by_trial[1].iloc[0]["engine_args"]) == {"cb_num_blocks": 64}
    assert "transformers serve defaults" in result.output and "serve the winner:" in result.output
    assert serve_processes(port) == []
