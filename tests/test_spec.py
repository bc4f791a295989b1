"""Speculative decoding as a what-if: the random-weight EAGLE-3 head folder, the speculative_config at an ASSUMED
acceptance (checked against vLLM 0.26's own SpeculativeConfig where vLLM is importable, on the CPU), the rows'
labels, and `tune --launch --spec-acceptance` end to end with a test server."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.engines.vllm import decode_mode
from qwenopt.engines.vllm_spec import (acceptance_rates, draft_model_dir, drafter_dir, eagle3_head_config,
                                       eagle3_head_dir, mean_acceptance_length, spec_label, speculative_config)
from qwenopt.errors import QwenoptError
from qwenopt.models import resolve_model
from qwenopt.results import read_jsonl

TARGET = resolve_model("qwen2.5-7b", "random")


def test_the_eagle3_head_is_one_llama_layer_of_the_targets_width():
    config = eagle3_head_config(TARGET.config)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 1
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "rms_norm_eps", "rope_theta", "max_position_embeddings"):
        assert config[key] == TARGET.config[key], key
    assert config["target_hidden_size"] == 3584 and config["head_dim"] == 128
    assert config["draft_vocab_size"] == 32000 < config["vocab_size"]
    with pytest.raises(QwenoptError, match="hidden_size"):
        eagle3_head_config({"vocab_size": 10})


def test_the_head_folder_is_written_once_per_target_and_context(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    folder = eagle3_head_dir(TARGET)
    assert json.loads((folder / "config.json").read_text()) == eagle3_head_config(TARGET.config)
    assert eagle3_head_dir(TARGET) == folder and drafter_dir("eagle3", TARGET) == folder
    long = eagle3_head_dir(TARGET, 131072)  # past the native 32K: YaRN, as the target's own folder
    assert long != folder and json.loads((long / "config.json").read_text())["rope_scaling"]["rope_type"] == "yarn"
    draft = drafter_dir("draft_model", TARGET)
    assert draft == draft_model_dir(TARGET) and json.loads((draft / "config.json").read_text())["vocab_size"] == 152064
    with pytest.raises(QwenoptError, match="eagle3 or draft_model"):
        drafter_dir("ngram", TARGET)


def test_the_assumed_acceptance_and_its_mean_length():
    assert acceptance_rates(0.8, 4) == [0.8, 0.64, 0.512, 0.4096]
    assert mean_acceptance_length(acceptance_rates(0.8, 4)) == pytest.approx(3.3616)
    assert mean_acceptance_length([1.0, 1.0, 0.0, 0.0]) == 3.0  # vLLM's schedule for synthetic_acceptance_length 3
    spec = speculative_config("eagle3", "/head", 4, length=3.0)
    assert spec == {"method": "eagle3", "model": "/head", "num_speculative_tokens": 4,
                    "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 3.0}
    assert speculative_config("draft_model", "/d", 2, rates=[0.6, 0.36])["synthetic_acceptance_rates"] == [0.6, 0.36]
    for kwargs, message in [({"rates": [0.5], "length": 2.0}, "one of them"), ({}, "one of them")]:
        with pytest.raises(QwenoptError, match=message):
            speculative_config("eagle3", "/head", 1, **kwargs)
    with pytest.raises(QwenoptError, match="eagle3 or draft_model"):
        speculative_config("medusa", "/m", 2, length=2.0)


def test_rows_name_the_speculation_and_say_the_acceptance_was_assumed():
    spec = SimpleNamespace(method="eagle3", num_speculative_tokens=4, rejection_sample_method="synthetic",
                           synthetic_acceptance_rates=[1.0, 1.0, 0.0, 0.0])
    assert spec_label(spec) == "spec-eagle3-k4-assumed-L3.00" and spec_label(None) is None
    graphs = SimpleNamespace(name="FULL_AND_PIECEWISE")
    assert decode_mode(graphs, spec) == "cuda-graphs+spec-eagle3-k4-assumed-L3.00"
    assert decode_mode(None, None) == "eager" and decode_mode(graphs, None) == "cuda-graphs"
    measured = SimpleNamespace(method="eagle3", num_speculative_tokens=2, rejection_sample_method="standard")
    assert spec_label(measured) == "spec-eagle3-k2"  # a real drafter's acceptance is measured, not assumed
    from qwenopt.matrix import config_label

    row = {"regime": "vllm-int4", "quant": "awq:machete", "attn": "FLASH_ATTN", "tp": 1, "pp": 1,
           "decode_mode": "cuda-graphs+spec-eagle3-k4-assumed-L3.00"}
    assert config_label(row) == "vllm-int4 (awq:machete) spec-eagle3-k4-assumed-L3.00"


def test_speculation_off_is_one_configuration_whatever_its_tokens_and_drafter():
    pytest.importorskip("optuna")
    from qwenopt.serving.tune_online import SearchSettings, search
    from qwenopt.serving.tune_space import parse_space
    from qwenopt.serving.tune_trial import TrialResult

    space = parse_space("spec_method=eagle3,draft_model;max_num_seqs=default,64", int4=False, quant=None,
                        spec_acceptance=[0.6, 0.8])
    measured = []

    def measure(number, step, config):
        measured.append(config)
        return TrialResult(number, step, config, "ok", goodput_req_s=1.0 + len(measured) % 3, latency_p99_s=1.0,
                           wall_s=1.0)

    search(space, SearchSettings("s", trials=12, seed=0), measure, say=lambda text: None)
    off = [(c["max_num_seqs"]) for c in measured if c["spec_acceptance"] == "off"]
    assert len(off) == len(set(off))  # never started twice for a token count or drafter it does not use


def fake_server(started: list):
    from .stream_server import serve_in_thread

    def start(stack, launch, *, engine_args, quant, tp, pp, **_):
        started.append(engine_args)
        url, _ = stack.enter_context(serve_in_thread(ttft_s=0.002, gap_s=0.001))
        server = SimpleNamespace(base_url=url, model="fake-qwen", dialect="vllm", startup_s=0.01,
                                 command=["python", "-m", "vllm.entrypoints.cli.main", "serve", "/m"])
        return server, {"regime": launch, "model": "qwen2.5-7b", "weights": "random", "quant": quant,
                        "serve_mode": "fcfs", "tp": tp, "pp": pp, "gpus": tp * pp,
                        "engine_args": json.dumps(engine_args, sort_keys=True), "startup_s": 0.01}

    return start


def test_tune_launch_spec_acceptance_serves_the_eagle3_head_and_marks_the_rows_assumed(tmp_results, monkeypatch):
    pytest.importorskip("optuna")
    import qwenopt.cli.load

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    started = []
    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake_server(started))
    result = CliRunner().invoke(app, [
        "tune", "--launch", "vllm-int4", "--quant", "awq", "--weights", "random", "--slo", "e2e=2s",
        "--input-len", "8", "--output-len", "3", "--level-duration", "0.4", "--level-requests", "0",
        "--burst-users", "4", "--probes", "0", "--max-send-lag-ms", "5000",
        "--space", "spec_acceptance=off,0.8;num_speculative_tokens=2,4",
        "--spec-acceptance", "0.8", "--trials", "3", "--out", "tune.csv"])
    assert result.exit_code == 0, result.output
    trials = read_jsonl(tmp_results / "tune.trials.jsonl")
    specs = [args.get("speculative_config") for args in started]
    assert specs[0] is None  # trial 0: vLLM's defaults, no speculation
    on = [(t, s) for t, s in zip(trials, specs) if s]
    assert on, specs  # the space holds one configuration without speculation: the rest speculate
    head = eagle3_head_dir(TARGET)
    for trial, spec in on:
        tokens = trial["config"]["num_speculative_tokens"]
        assert spec == speculative_config("eagle3", str(head), tokens, rates=acceptance_rates(0.8, tokens))
    frame = pd.read_csv(tmp_results / "tune.csv")
    for trial, spec in zip(trials, specs):
        rows = frame[frame["trial"] == trial["trial"]]
        assumed = set(rows["spec_acceptance_assumed"].dropna())
        assert assumed == ({0.8} if spec else set())
        if spec:
            assert json.loads(rows.iloc[0]["trial_config"])["spec_method"] == "eagle3"


def _engine_args(monkeypatch, spec: dict | None, tmp_path):
    """vLLM's EngineArgs for the random AWQ-free target folder with a speculative_config, on the CPU platform."""
    import vllm.engine.arg_utils
    import vllm.platforms
    from vllm.engine.arg_utils import EngineArgs

    from qwenopt.engines.vllm import write_random_model_dir

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    if not vllm.platforms.current_platform.device_type:  # no GPU here: the CPU platform's defaults will do
        from vllm.platforms.cpu import CpuPlatform

        cpu = CpuPlatform()
        monkeypatch.setattr(vllm.platforms, "_current_platform", cpu)
        monkeypatch.setattr(vllm.engine.arg_utils, "current_platform", cpu)  # bound there at its import
    target = write_random_model_dir(TARGET, "none", tmp_path / "target", None)
    return EngineArgs(model=str(target), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                      speculative_config=spec)


def test_vllms_own_speculative_config_takes_both_drafters(monkeypatch, tmp_path):
    """Where vLLM is importable (no GPU needed): SpeculativeConfig resolves each what-if exactly as meant."""
    pytest.importorskip("vllm")
    pytest.importorskip("einops")  # vLLM's model registry needs it to inspect an architecture
    from vllm.config import ParallelConfig, SpeculativeConfig

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))

    cases = [("eagle3", {"length": 3.0}, [1.0, 1.0, 0.0, 0.0], ["LlamaForCausalLMEagle3"]),
             ("draft_model", {"rates": acceptance_rates(0.8, 4)}, [0.8, 0.64, 0.512, 0.4096], ["Qwen2ForCausalLM"])]
    for method, acceptance, rates, architectures in cases:
        folder = drafter_dir(method, TARGET)
        args = _engine_args(monkeypatch, speculative_config(method, str(folder), 4, **acceptance), tmp_path)
        spec = args.create_speculative_config(args.create_model_config(), ParallelConfig())
        assert spec.method == method and spec.num_speculative_tokens == 4
        assert spec.synthetic_acceptance_rates == rates and spec.rejection_sample_method == "synthetic"
        assert spec.draft_model_config.architectures == architectures
        assert mean_acceptance_length(spec.synthetic_acceptance_rates) == pytest.approx(1 + sum(rates))
    assert SpeculativeConfig._acceptance_length_to_rates(1.5, 4) == [0.5, 0.0, 0.0, 0.0]


def test_vllm_runs_draft_model_off_its_v2_runner_and_eagle3_on_it(monkeypatch, tmp_path):
    """The vLLM 0.26 facts the what-if's explanation rests on (config/vllm.py): Qwen2 defaults to the V2 model
    runner, which takes eagle3 but not draft_model (the engine falls back to V1); draft_model turns async
    scheduling off by default, eagle3 does not."""
    pytest.importorskip("vllm")
    pytest.importorskip("einops")
    import vllm.platforms

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    from vllm.v1.executor.abstract import Executor

    real = Executor.get_class

    def get_class(config):  # as on a GPU host: the executor itself could schedule asynchronously
        cls = real(config)
        return type(cls.__name__, (cls,), {"supports_async_scheduling": classmethod(lambda c: True)})

    monkeypatch.setattr(Executor, "get_class", staticmethod(get_class))
    labels, asynchronous, decided, spied = {}, {}, [], set()
    for method in (None, "eagle3", "draft_model"):
        args = _engine_args(monkeypatch, None, tmp_path)
        if method is not None:
            args.speculative_config = speculative_config(method, str(drafter_dir(method, TARGET)), 4, length=3.0)
        platform = type(vllm.platforms.current_platform)
        if platform not in spied:  # async scheduling as VllmConfig decided it, before a platform's own say (CPU: off)
            check = platform.check_and_update_config.__func__
            monkeypatch.setattr(platform, "check_and_update_config", classmethod(
                lambda cls, config, check=check: (decided.append(config.scheduler_config.async_scheduling),
                                                  check(cls, config))[1]))
            spied.add(platform)
        config = args.create_engine_config()
        assert config._is_default_v2_model_runner_model()  # Qwen2ForCausalLM: a dense model
        labels[method] = config._get_v2_model_runner_unsupported_features()
        asynchronous[method] = decided[-1]
    assert labels[None] == [] and labels["eagle3"] == []
    assert labels["draft_model"] == ["speculative method 'draft_model'"]
    assert asynchronous == {None: True, "eagle3": True, "draft_model": False}


def _spec_h100():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "spec_h100.py"
    module_spec = importlib.util.spec_from_file_location("spec_h100", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["spec_h100"] = module  # its dataclasses look their module up there
    module_spec.loader.exec_module(module)
    return module


def test_the_gpu_script_runs_one_bench_per_configuration_with_its_speculative_config(tmp_path, monkeypatch):
    from qwenopt.cli.app import parse_engine_args

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path / "cache"))
    script = _spec_h100()
    records = script.run(list(script.DEFAULT_STEPS), tmp_path, budget_s=0, dry_run=True)
    assert [r["step"] for r in records] == ["nospec", "eagle3-k4-L3", "eagle3-k2-L3", "draft-k4-L3"]
    for record in records:
        argv = record["argv"]
        assert argv[:3] == ["-m", "qwenopt", "bench"] and argv[argv.index("--batch") + 1] == "1,8,64"
        assert argv[argv.index("--input-len") + 1] == "128" and argv[argv.index("--output-len") + 1] == "256"
        assert argv[argv.index("--regime") + 1] == "vllm-int4" and argv[argv.index("--quant") + 1] == "awq"
    assert "--engine-args" not in records[0]["argv"]
    for record, tokens in zip(records[1:3], (4, 2)):  # the drafter's folder is qwenopt's to fill in
        args = parse_engine_args(record["argv"][record["argv"].index("--engine-args") + 1])
        expected = speculative_config("eagle3", "-", tokens, length=3.0)
        del expected["model"]
        assert args == {"speculative_config": expected}
    draft = parse_engine_args(records[3]["argv"][-1])["speculative_config"]
    assert draft["method"] == "draft_model" and "model" not in draft
    forced, v1 = script.run(["draft-k4-L3-async", "nospec-v1"], tmp_path, budget_s=0, dry_run=True)
    assert parse_engine_args(forced["argv"][-1])["async_scheduling"] is True
    assert v1["env"] == {"VLLM_USE_V2_MODEL_RUNNER": "0"} and "--engine-args" not in v1["argv"]
    skipped = script.run(["nospec"], tmp_path, budget_s=10)  # not dry: too little budget, so nothing starts
    assert "skipped" in skipped[0] and not (tmp_path / "nospec.csv").exists()


def test_the_gpu_scripts_summary_compares_each_batch_with_no_speculation(tmp_path):
    from qwenopt.results import append_csv
    from qwenopt.schema import BENCH_COLUMNS

    base = {"schema_version": 1, "regime": "vllm-int4", "status": "ok", "tp": 1, "pp": 1, "input_len": 128,
            "output_len": 256, "warmup": 1, "repeats": 2, "tpot_p50_ms": 5.0, "ttft_p50_ms": 20.0,
            "latency_p50_s": 0.8}
    eagle = "cuda-graphs+spec-eagle3-k4-assumed-L3.00"
    for step, mode, batch, tok_s in [("nospec", "cuda-graphs", 1, 160.0), ("nospec-v1", "cuda-graphs", 1, 128.0),
                                     ("eagle3-k4-L3", eagle, 1, 320.0), ("eagle3-k4-L3", eagle, 64, 100.0)]:
        append_csv(tmp_path / f"{step}.csv", {**base, "run_id": step, "decode_mode": mode, "batch_size": batch,
                                              "output_tok_s": tok_s}, BENCH_COLUMNS)
    text = _spec_h100().summary(tmp_path)
    assert "ASSUMED" in text
    assert f"| eagle3-k4-L3 | {eagle} | 1 | 320.0 | 2.00x | 2.50x | 20.0 | 5.00 | 0.800 | 0.800 |" in text
    assert f"| eagle3-k4-L3 | {eagle} | 64 | 100.0 | - | - |" in text  # no baseline row at 64
    assert "| nospec-v1 | cuda-graphs | 1 | 128.0 | 0.80x | 1.00x |" in text


PATHLESS = {"method": "eagle3", "num_speculative_tokens": 4, "rejection_sample_method": "synthetic",
            "synthetic_acceptance_length": 3.0}


def test_a_speculative_config_without_a_model_gets_the_random_drafter(tmp_path, monkeypatch):
    from qwenopt.engines.base import EngineOptions
    from qwenopt.engines.vllm_spec import with_random_drafter

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    options = EngineOptions(source=TARGET, device="cuda", dtype="bf16", engine_args={"speculative_config": PATHLESS})
    filled = with_random_drafter(options)
    assert filled.engine_args["speculative_config"] == {**PATHLESS, "model": str(eagle3_head_dir(TARGET))}
    draft = with_random_drafter(EngineOptions(source=TARGET, device="cuda", dtype="bf16", max_model_len=65536,
                                              engine_args={"speculative_config": {**PATHLESS,
                                                                                  "method": "draft_model"}}))
    assert draft.engine_args["speculative_config"]["model"] == str(draft_model_dir(TARGET, 65536))
    for kept in ({"speculative_config": {**PATHLESS, "model": "/mine"}}, {"speculative_config": {"method": "ngram"}},
                 {}, {"max_num_seqs": 8}):
        same = EngineOptions(source=TARGET, device="cuda", dtype="bf16", engine_args=kept)
        assert with_random_drafter(same) is same
    import dataclasses

    real = EngineOptions(source=dataclasses.replace(TARGET, weights="real"), device="cuda", dtype="bf16",
                         engine_args={"speculative_config": PATHLESS})
    assert with_random_drafter(real) is real  # a real checkpoint's drafter is the user's to name


def test_bench_and_load_launch_fill_in_the_drafter(tmp_path, monkeypatch):
    """The offline engine passes vllm.LLM the filled speculative_config; `vllm serve` gets it as its flag."""
    import importlib.util
    import sys
    from contextlib import contextmanager

    from qwenopt.engines import vllm as engine
    from qwenopt.engines.base import EngineOptions
    from qwenopt.regimes import get_regime
    from qwenopt.serving import launcher

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    head = str(eagle3_head_dir(TARGET))
    seen = {}

    class Stop(Exception):
        pass

    def llm(**kwargs):
        seen.update(kwargs)
        raise Stop

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real_find(name, *a))
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=llm))
    options = EngineOptions(source=TARGET, device="cuda", dtype="fp16", engine_args={"speculative_config": PATHLESS})
    with pytest.raises(Stop):
        engine.VLLMEngine(get_regime("vllm-int4"), options).load()
    assert seen["speculative_config"] == {**PATHLESS, "model": head} and seen["load_format"] == "dummy"

    commands = []

    @contextmanager
    def run_server(command, *args, **kwargs):
        commands.append(command)
        yield "http://127.0.0.1:1", SimpleNamespace(), tmp_path / "log", 0.0

    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    monkeypatch.setattr(launcher, "run_server", run_server)
    with launcher.launch(get_regime("vllm-int4"), options, port=1):
        pass
    from .helpers import flag

    assert json.loads(flag(commands[0], "--speculative-config")) == {**PATHLESS, "model": head}


def test_a_gpu_step_past_its_deadline_is_stopped_with_its_whole_process_group(tmp_path):
    import os
    import sys
    import time

    script = _spec_h100()
    pid_file = tmp_path / "grandchild.pid"
    child = ("import subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    record = script.run_step("slow", [sys.executable, "-c", child], tmp_path, timeout_s=3.0)
    assert record["stopped_at_deadline"] and record["exit"] != 0  # SIGINT ends it (a KeyboardInterrupt)
    assert (tmp_path / "slow.log").read_text().startswith("$ ")
    grandchild = int(pid_file.read_text())  # a vLLM engine core stands for this one: it must not outlive the step
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{grandchild}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):  # exited, not yet reaped by init
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, 9)
        raise AssertionError("the step's grandchild outlived it")


def test_a_speculative_winner_is_printed_with_its_assumed_acceptance():
    from qwenopt.serving.tune_trial import TrialResult
    from qwenopt.serving.tune_view import outcome_lines

    spec = {"spec_acceptance": 0.8, "num_speculative_tokens": 4, "spec_method": "eagle3"}
    trials = [TrialResult(0, "default", {"spec_acceptance": "off", "num_speculative_tokens": 2,
                                         "spec_method": "eagle3"}, "ok", goodput_req_s=4.0, latency_p99_s=1.5),
              TrialResult(1, "tpe", spec, "ok", goodput_req_s=5.0, latency_p99_s=1.2)]
    text = " ".join(outcome_lines(trials, "goodput", 7, 0))
    assert "winner: trial 1" in text and "ASSUMED" in text.replace("\n", " ")
    assert "mean acceptance length of 3.36 with 4 draft tokens" in " ".join(text.split())
    assert all(len(line) <= 80 for line in outcome_lines(trials, "goodput", 7, 0))


def test_load_spec_acceptance_serves_the_head_at_the_assumed_rate_and_says_so(tmp_results, monkeypatch):
    """`load --spec-acceptance 0.8`: the speculative_config tune_h100.sh spec-load wrote by hand (2 draft tokens,
    rates 0.8 and 0.64, no model: the launch fills in the random head), and rows whose label says ASSUMED."""
    import qwenopt.cli.load
    from qwenopt.matrix import online_label

    started = []
    monkeypatch.setattr(qwenopt.cli.load, "start_server", fake_server(started))
    base = ["load", "--launch", "vllm-int4", "--quant", "awq", "--weights", "random", "--input-len", "8",
            "--output-len", "3", "--rate", "20", "--num-requests", "4", "--max-send-lag-ms", "5000"]
    result = CliRunner().invoke(app, [*base, "--spec-acceptance", "0.8", "--out", "spec.csv"])
    assert result.exit_code == 0, result.output
    assert started == [{"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2,
                                               "rejection_sample_method": "synthetic",
                                               "synthetic_acceptance_rates": [0.8, 0.64]}}]
    row = pd.read_csv(tmp_results / "spec.csv").iloc[0].to_dict()
    assert "ASSUMED acceptance, mean acceptance length 2.44, not measured" in online_label(row)
    three = CliRunner().invoke(app, [*base, "--spec-acceptance", "0.5", "--spec-tokens", "3", "--out", "s3.csv"])
    assert three.exit_code == 0 and started[-1]["speculative_config"]["synthetic_acceptance_rates"] == [0.5, 0.25,
                                                                                                       0.125]


@pytest.mark.parametrize("args, message", [
    (["--launch", "vllm-int4", "--weights", "random", "--spec-acceptance", "1.5"], "takes per-token rates in (0, 1]"),
    (["--launch", "vllm-int4", "--weights", "random", "--spec-acceptance", "0.8", "--spec-tokens", "0"],
     "1 to 8 draft tokens"),
    (["--launch", "hf-fp16", "--spec-acceptance", "0.8"], "needs --launch vllm-fp16 or vllm-int4"),
    (["--endpoint", "http://127.0.0.1:9/v1", "--spec-acceptance", "0.8"], "needs --launch vllm-fp16 or vllm-int4"),
    (["--launch", "vllm-fp16", "--weights", "real", "--spec-acceptance", "0.8"], "needs --weights random"),
    (["--launch", "vllm-fp16", "--weights", "random", "--spec-acceptance", "0.8", "--engine-args",
      '{"speculative_config": {"method": "eagle3"}}'], "leave it out of --engine-args"),
])
def test_load_spec_acceptance_bad_input_is_one_line_and_exit_2(tmp_results, args, message):
    result = CliRunner().invoke(app, ["load", *args, "--rate", "1", "--num-requests", "1"])
    assert result.exit_code == 2 and message in result.output, result.output
