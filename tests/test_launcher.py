"""The vllm serve launcher without vLLM: the command line it builds, and its lifecycle around a fake server."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from qwenopt.engines.base import EngineOptions
from qwenopt.errors import QwenoptError
from qwenopt.models import resolve_model
from qwenopt.regimes import get_regime
from qwenopt.serving import launcher
from .helpers import flag, free_port

FP16, INT4 = get_regime("vllm-fp16"), get_regime("vllm-int4")
PREFIX = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
SERVE_COMMAND = launcher.serve_command  # the real one, which the `fake` fixture replaces


@pytest.fixture(scope="module")
def random_7b():
    return resolve_model("qwen2.5-7b", "random")


def options(source, **kw) -> EngineOptions:
    return EngineOptions(source=source, device="cuda", dtype=kw.pop("dtype", "bf16"), **kw)


def test_fp16_random_matches_offline_engine(random_7b):
    argv = launcher.serve_command(FP16, options(random_7b), "/m", 8123)
    assert argv[:5] == [*PREFIX, "/m"]
    assert flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--tensor-parallel-size") == flag(argv, "--pipeline-parallel-size") == "1"
    assert flag(argv, "--gpu-memory-utilization") == "0.9"
    assert flag(argv, "--seed") == "0"
    assert flag(argv, "--load-format") == "dummy"
    assert flag(argv, "--served-model-name") == "qwenopt"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8123")
    for present in ("--skip-tokenizer-init", "--no-enable-prefix-caching", "--no-enforce-eager",
                    "--disable-uvicorn-access-log"):
        assert present in argv
    # stats stay on: --disable-log-stats is store_true in 0.26, so False is its absence; no None leaks
    for absent in ("--disable-log-stats", "--no-disable-log-stats", "--quantization", "--max-model-len",
                   "--max-num-seqs", "--model", "None"):
        assert absent not in argv


@pytest.mark.parametrize("quant", ["awq", "gptq"])
def test_int4_random(random_7b, quant):
    argv = launcher.serve_command(INT4, options(random_7b, dtype="fp16", quant=quant), "/m", 8000)
    assert flag(argv, "--quantization") == quant
    assert flag(argv, "--dtype") == "float16"
    assert flag(argv, "--load-format") == "dummy"


def test_parallel_and_limits(random_7b):
    opts = options(random_7b, tp=4, pp=2, max_model_len=16384, max_num_seqs=256, enforce_eager=True,
                   gpu_memory_utilization=0.85, seed=7)
    argv = launcher.serve_command(FP16, opts, "/m", 8000, host="0.0.0.0")
    assert flag(argv, "--tensor-parallel-size") == "4"
    assert flag(argv, "--pipeline-parallel-size") == "2"
    assert flag(argv, "--max-model-len") == "16384"
    assert flag(argv, "--max-num-seqs") == "256"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--seed") == "7"
    assert flag(argv, "--host") == "0.0.0.0"
    assert "--enforce-eager" in argv and "--no-enforce-eager" not in argv


def test_pass_through_args(random_7b):
    extra = {"kv_cache_dtype": "fp8", "max_num_batched_tokens": 8192, "enable_chunked_prefill": False,
             "async_scheduling": True, "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4]},
             "enable_prefix_caching": True, "disable_log_stats": True, "served_model_name": "mine",
             "port": 1, "quantization": None}
    argv = launcher.serve_command(FP16, options(random_7b, engine_args=extra), "/m", 8000)
    assert flag(argv, "--kv-cache-dtype") == "fp8"
    assert flag(argv, "--max-num-batched-tokens") == "8192"
    assert json.loads(flag(argv, "--compilation-config")) == {"cudagraph_capture_sizes": [1, 2, 4]}
    assert "--no-enable-chunked-prefill" in argv and "--async-scheduling" in argv
    # pass-through wins over qwenopt's choices, as offline; the port stays the launcher's
    assert "--enable-prefix-caching" in argv and "--no-enable-prefix-caching" not in argv
    assert "--disable-log-stats" in argv
    assert flag(argv, "--served-model-name") == "mine"
    assert flag(argv, "--port") == "8000"
    assert "--quantization" not in argv


def test_cli_flags_spelling():
    assert launcher.cli_flags({"disable_log_stats": False, "enforce_eager": False, "trust_remote_code": True,
                               "hf_overrides": {"a": {"b": 1}}, "cuda_graph_sizes": [1, 8], "x": None}) == [
        "--no-enforce-eager", "--trust-remote-code", "--hf-overrides", '{"a": {"b": 1}}',
        "--cuda-graph-sizes", "1", "8"]


def test_real_weights_with_yarn():
    source = resolve_model("qwen2.5-7b", "real")
    argv = launcher.serve_command(FP16, options(source, max_model_len=131072), source.location, 8000)
    assert argv[4] == "Qwen/Qwen2.5-7B-Instruct"
    for random_only in ("--load-format", "--skip-tokenizer-init"):
        assert random_only not in argv
    rope = json.loads(flag(argv, "--hf-overrides"))["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0


def test_random_folder_with_tokenizer_serves_text(random_7b, tmp_path):
    from qwenopt.engines.vllm import write_random_model_dir

    folder = str(write_random_model_dir(random_7b, "none", tmp_path / "m", None))
    argv = launcher.serve_command(FP16, options(random_7b), folder, 8000)
    assert argv[4] == folder and flag(argv, "--load-format") == "dummy"
    assert "--skip-tokenizer-init" not in argv  # the folder's tokenizer serves text prompts (and token ids)
    # asked for explicitly, it stays
    argv = launcher.serve_command(FP16, options(random_7b, engine_args={"skip_tokenizer_init": True}), folder, 8000)
    assert "--skip-tokenizer-init" in argv


def test_missing_vllm(monkeypatch, random_7b):
    monkeypatch.setattr(launcher.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QwenoptError, match=r"pip install 'qwenopt\[vllm\]'"):
        with launcher.launch(FP16, options(random_7b)):
            pass


LOADED_LINE = ("(EngineCore pid=4718) INFO 12-02 12:34:07 [backends.py:292] Directly load the compiled graph(s) for "
               "compile range (1, 8192) from the cache, took 1.761 s")
COMPILED_LINE = ("(EngineCore pid=2119) INFO 12-02 12:26:49 [backends.py:393] Compiling a graph for compile range "
                 "(1, 8192) takes 12.29 s")


def test_compile_cache_reads_whether_a_start_compiled_or_loaded_its_graphs(tmp_path):
    """The lines are vLLM 0.26's (results/h200/tune/v2/spec_load_hi_*.log). A start with a drafter logs for two
    graphs (backbone, eagle_head), so one may be compiled and the other loaded: "mixed"."""
    log = tmp_path / "serve.log"
    cases = {"compiled": [COMPILED_LINE, COMPILED_LINE], "loaded": [LOADED_LINE, LOADED_LINE],
             "mixed": [LOADED_LINE, COMPILED_LINE], None: ["INFO enforce_eager: no torch.compile"]}
    for expected, lines in cases.items():
        log.write_text("\n".join(lines) + "\n")
        assert launcher.compile_cache(log) == expected
    assert launcher.compile_cache(tmp_path / "absent.log") is None


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Make launch() run a given command instead of vllm serve; returns a setter for that command."""
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    monkeypatch.setattr(launcher, "POLL_S", 0.05)
    seen = {}

    def use(make_argv):
        def serve_command(spec, options, model_dir, port, host="127.0.0.1"):
            seen["model_dir"], seen["options"] = model_dir, options
            return make_argv(port, host)
        monkeypatch.setattr(launcher, "serve_command", serve_command)
        return seen
    return use


def test_launch_lifecycle(fake, tmp_path, random_7b):
    site = tmp_path / "site"
    (site / "health").parent.mkdir()
    (site / "health").write_text("ok")
    # the server spawns a child, standing in for vLLM's engine core: it must die with the group
    # and logs, as vLLM 0.26 does on a warm start, that it loaded its compiled graphs from the compile cache
    script = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"print({LOADED_LINE!r}, flush=True); "
              "import runpy; sys.argv = ['http.server'] + sys.argv[1:]; runpy.run_module('http.server', run_name='__main__')")
    seen = fake(lambda port, host: [sys.executable, "-c", script, str(port), "--bind", host, "--directory", str(site)])
    port, log = free_port(), tmp_path / "logs" / "serve.log"
    with launcher.launch_server(FP16, options(random_7b), port=port, log_path=log, ready_timeout_s=60,
                                scheduling_policy="priority") as server:
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert server.model == "qwenopt" and server.dialect == "vllm"
        assert flag(SERVE_COMMAND(FP16, seen["options"], "/m", port), "--scheduling-policy") == "priority"
        assert server.startup_s > 0 and server.log_path == log
        assert server.compile_cache == "loaded"
        pgid = server.process.pid
        assert server.process.poll() is None and os.getpgid(pgid) == pgid  # its own group
        assert launcher.group_alive(pgid)
    assert not launcher.group_alive(pgid)  # the child too; an unreaped zombie would not count
    assert server.process.returncode is not None
    assert "GET /health" in log.read_text()
    assert (tmp_path / "cache" / "vllm").is_dir() and seen["model_dir"].startswith(str(tmp_path / "cache"))
    assert json.loads((Path(seen["model_dir"]) / "config.json").read_text())["model_type"] == "qwen2"
    assert (Path(seen["model_dir"]) / "tokenizer.json").is_file()


def test_server_that_exits_reports_its_log(fake, tmp_path, random_7b):
    fake(lambda port, host: [sys.executable, "-c", "import sys; print('CUDA error: no GPU here'); sys.exit(3)"])
    start = time.monotonic()
    with pytest.raises(QwenoptError, match="exited with code 3") as err:
        with launcher.launch(FP16, options(random_7b), port=free_port(), ready_timeout_s=30):
            pass
    assert "CUDA error: no GPU here" in str(err.value)
    assert time.monotonic() - start < 20  # failed when the process exited, not at the 30 s timeout


def test_readiness_timeout_stops_the_server(fake, monkeypatch, tmp_path, random_7b):
    stopped = []
    real_stop = launcher.stop
    monkeypatch.setattr(launcher, "stop", lambda process: (stopped.append(process), real_stop(process)))
    fake(lambda port, host: [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"])
    log = tmp_path / "s.log"

    class Clock:  # stands still until the server has logged "loading", then jumps past the 0.5 s and runs on (for
        # the stop's grace): the timeout comes after the log line however long a busy machine took to start it
        perf_counter, sleep = staticmethod(time.perf_counter), staticmethod(time.sleep)

        @staticmethod
        def monotonic() -> float:
            return 1e9 + time.monotonic() if log.is_file() and "loading" in log.read_text() else 0.0

    monkeypatch.setattr(launcher, "time", Clock)
    with pytest.raises(QwenoptError, match="not ready after 0.5 s") as err:
        with launcher.launch(FP16, options(random_7b), port=free_port(), log_path=log, ready_timeout_s=0.5):
            pass
    assert "loading" in str(err.value)
    assert stopped[0].returncode is not None and not launcher.group_alive(stopped[0].pid)


def test_port_in_use(fake, random_7b):
    fake(lambda port, host: [sys.executable, "-c", "pass"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(QwenoptError, match="in use"):
            with launcher.launch(FP16, options(random_7b), port=busy.getsockname()[1]):
                pass
