"""transformers serve for hf regimes: the command line per regime and mode, the request extras, and a real
server (the tiny random model on the CPU) started, asked once and stopped with everything it spawned."""
from __future__ import annotations

import json
import sys

import pytest

from qwenopt.engines.base import EngineOptions
from qwenopt.errors import QwenoptError
from qwenopt.models import cache_dir, resolve_model
from qwenopt.regimes import get_regime
from qwenopt.serving import hf_launch, launcher
from qwenopt.tokenizer import word_ids, words_text
from .helpers import flag, free_port

FP16, NF4, FA2 = get_regime("hf-fp16"), get_regime("hf-nf4"), get_regime("hf-fa2")
PREFIX = [sys.executable, "-m", "transformers.cli.transformers", "serve"]


@pytest.fixture(scope="module")
def random_7b():
    return resolve_model("qwen2.5-7b", "random")


def options(source, **kw) -> EngineOptions:
    return EngineOptions(source=source, device=kw.pop("device", "cuda"), dtype=kw.pop("dtype", "bf16"), **kw)


def test_fp16_plain(random_7b):
    argv = hf_launch.serve_command(FP16, options(random_7b, seed=3), "/m", 8123)
    assert argv[:5] == [*PREFIX, "/m"]
    assert (flag(argv, "--device"), flag(argv, "--dtype"), flag(argv, "--attn-implementation")) == (
        "cuda", "bfloat16", "sdpa")
    assert (flag(argv, "--host"), flag(argv, "--port"), flag(argv, "--default-seed")) == ("127.0.0.1", "8123", "3")
    for absent in ("--quantization", "--compile", "--continuous-batching"):
        assert absent not in argv


def test_nf4_quantizes_on_load_and_fa2_asks_for_flash_attention(random_7b):
    argv = hf_launch.serve_command(NF4, options(random_7b, dtype="fp16"), "/m", 8000)
    assert flag(argv, "--quantization") == "bnb-4bit" and flag(argv, "--dtype") == "float16"
    argv = hf_launch.serve_command(FA2, options(random_7b), "/m", 8000)
    assert flag(argv, "--attn-implementation") == "flash_attention_2" and "--quantization" not in argv


def test_compile_and_continuous_batching_settings(random_7b):
    argv = hf_launch.serve_command(FP16, options(random_7b, compile=True), "/m", 8000, continuous_batching=True,
                                   cb_args={"num_blocks": 4096, "block_size": 32, "max_batch_tokens": None,
                                            "max_memory_percent": 0.8, "use_cuda_graph": False})
    assert "--compile" in argv and "--continuous-batching" in argv
    assert (flag(argv, "--cb-num-blocks"), flag(argv, "--cb-block-size")) == ("4096", "32")
    assert flag(argv, "--cb-max-memory-percent") == "0.8" and "--no-cb-use-cuda-graph" in argv
    assert "--cb-max-batch-tokens" not in argv  # None: the server's own default


def test_bad_continuous_batching_settings(random_7b):
    with pytest.raises(QwenoptError, match="unknown continuous-batching setting 'blocks'"):
        hf_launch.serve_command(FP16, options(random_7b), "/m", 8000, continuous_batching=True, cb_args={"blocks": 1})
    with pytest.raises(QwenoptError, match="need --continuous-batching"):
        hf_launch.serve_command(FP16, options(random_7b), "/m", 8000, cb_args={"num_blocks": 1})


def test_request_extras_force_the_output_length():
    plain = hf_launch.transformers_request_extras(False, 128)
    assert plain["max_tokens"] == 128 and json.loads(plain["generation_config"]) == {"min_new_tokens": 128}
    batched = hf_launch.transformers_request_extras(True, 64)
    assert batched["max_tokens"] == 64 and json.loads(batched["generation_config"]) == {"eos_token_id": -1}


def test_only_hf_regimes_it_can_serve(random_7b, monkeypatch):
    for name in ("hf-gptq", "vllm-fp16"):
        with pytest.raises(QwenoptError, match="launches hf-fp16, hf-nf4, hf-fa2 and hf-fa4"):
            hf_launch.check_regime(get_regime(name))
    present = {"flash-attn-4"}  # installs the module flash_attn, but is not FlashAttention-2
    monkeypatch.setattr("qwenopt.attention.installed", lambda dist: dist in present)
    with pytest.raises(QwenoptError, match=r"needs flash-attn: install it with pip install 'qwenopt\[fa2\]'"):
        hf_launch.check_regime(FA2)
    hf_launch.check_regime(get_regime("hf-fa4"))
    present.clear()
    with pytest.raises(QwenoptError, match=r"hf-fa4 served by transformers needs flash-attn-4: install it with "
                                           r"pip install 'qwenopt\[fa4\]'"):
        hf_launch.check_regime(get_regime("hf-fa4"))


def test_missing_serve_dependency_names_the_extra(monkeypatch, random_7b):
    real = hf_launch.importlib.util.find_spec
    monkeypatch.setattr(hf_launch.importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name))
    with pytest.raises(QwenoptError) as err:
        with launcher.launch_server(FP16, options(random_7b), port=free_port()):
            pass
    assert str(err.value) == "transformers serve needs uvicorn: install it with pip install 'qwenopt[serve]'"


def test_dispatcher_refuses_the_other_servers_modes(random_7b):
    with pytest.raises(QwenoptError, match="continuous_batching apply to transformers serve"):
        launcher.launch_server(get_regime("vllm-fp16"), options(random_7b), continuous_batching=True)
    with pytest.raises(QwenoptError, match="scheduling-policy applies to vllm serve"):
        launcher.launch_server(FP16, options(random_7b), scheduling_policy="priority")


def read_stream(response) -> list[dict]:
    chunks = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: ") and line != "data: [DONE]"  # transformers serve sends no [DONE]
            chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks


def test_serves_the_tiny_model_on_the_cpu(tmp_path, monkeypatch):
    """The real server: tiny random weights saved with the tokenizer, one streamed completion, then stopped."""
    import httpx

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path / "cache"))
    source = resolve_model("qwen2-tiny", "random")
    log = tmp_path / "serve.log"
    with launcher.launch_server(FP16, options(source, device="cpu", dtype="fp32"), port=free_port(),
                                log_path=log, ready_timeout_s=300) as server:
        assert server.dialect == "transformers" and server.model.startswith(str(tmp_path / "cache"))
        pgid = server.process.pid
        assert launcher.group_alive(pgid)
        prompt_ids = word_ids(8192, 1, 2)[100:116]
        body = {"model": server.model, "prompt": words_text(prompt_ids, 8192, 1, 2), "stream": True,
                **hf_launch.transformers_request_extras(False, 6)}
        with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
            with client.stream("POST", "/completions", json=body) as response:
                assert response.status_code == 200
                chunks = read_stream(response)
            refused = {field: client.post("/completions", json={**body, "stream": False, **extra})
                       for field, extra in (("ids", {"prompt": prompt_ids}), ("ignore_eos", {"ignore_eos": True}),
                                            ("model", {"model": "qwenopt"}))}
    last = chunks[-1]
    assert last["usage"] == {"prompt_tokens": 16, "completion_tokens": 6, "total_tokens": 22}  # the prompt is its words
    assert last["choices"] == [{"index": 0, "text": "", "finish_reason": "length"}]  # no token in it
    assert all("usage" not in c and c["choices"][0].get("finish_reason") is None for c in chunks[:-1])
    assert 1 <= len(chunks) - 1 <= 6  # a token whose bytes are not text yet rides with the next one
    assert refused["ids"].status_code == 400 and "prompt must be a string" in refused["ids"].text
    assert refused["ignore_eos"].status_code == 422 and "ignore_eos" in refused["ignore_eos"].text
    assert refused["model"].status_code == 400 and "pinned" in refused["model"].text
    assert server.process.returncode is not None and not launcher.group_alive(pgid)
    assert (cache_dir("random", resolve_model("qwen2-tiny"), "fp32-seed0") / "tokenizer.json").is_file()
    assert log.read_text().count("POST /v1/completions") == 5  # the warm-up, the stream, the three refused


def test_continuous_batching_server_on_the_cpu(tmp_path, monkeypatch):
    """--continuous-batching with a small paged cache (sized from memory it would take GBs on the CPU)."""
    import httpx

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path / "cache"))
    source = resolve_model("qwen2-tiny", "random")
    with launcher.launch_server(FP16, options(source, device="cpu", dtype="fp32"), port=free_port(),
                                continuous_batching=True, cb_args={"num_blocks": 64, "block_size": 32},
                                ready_timeout_s=300) as server:
        assert "--continuous-batching" in server.command
        body = {"prompt": words_text(word_ids(8192, 1, 2)[:8], 8192, 1, 2), "stream": True,
                **hf_launch.transformers_request_extras(True, 5)}
        with httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as client:
            with client.stream("POST", "/completions", json=body) as response:
                chunks = read_stream(response)
        pgid = server.process.pid
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert not launcher.group_alive(pgid)


def test_the_kernel_continuous_batching_switched_to_comes_from_the_log(tmp_path):
    log = tmp_path / "serve.log"
    assert hf_launch.switched_attention(log) is None and hf_launch.switched_attention(None) is None
    log.write_text("INFO:     Started server process\n")
    assert hf_launch.switched_attention(log) is None  # no flash-attn here: sdpa stays
    # transformers 5.24's warning (5.17's ends differently, begins the same)
    log.write_text("Continuous batching is much better when using flash attention. Switching from sdpa to "
                   "flash_attention_2. If you need to use eager or sdpa, set `auto_switch_to_flash=False` in the "
                   "continuous batching config.\n")
    assert hf_launch.switched_attention(log) == "flash_attention_2"
