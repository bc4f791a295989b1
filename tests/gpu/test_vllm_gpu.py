"""The real vLLM engine on a GPU: random Qwen2.5-7B weights, one small batch, vLLM's own request timings.

Run on the GPU machine: `pytest -m gpu tests/gpu/test_vllm_gpu.py`. The int4 cases prove that the layers
are really quantized through vLLM's own memory accounting (a larger KV cache than bf16 leaves room for).
"""
from __future__ import annotations

import importlib.util

import pytest

from qwenopt.engines.base import EngineOptions
from qwenopt.engines.vllm import VLLMEngine
from qwenopt.models import resolve_model
from qwenopt.regimes import get_regime
from qwenopt.roofline import kv_bytes_per_token
from qwenopt.workload import make_prompts


def _gpus() -> int:
    """Counted through NVML, so the test process never initializes CUDA before vLLM forks its workers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None or _gpus() == 0, reason="needs vllm and a CUDA GPU"),
]


def run_engine(regime: str, quant: str):
    source = resolve_model("qwen2.5-7b", "random")
    options = EngineOptions(source=source, device="cuda", dtype="bf16", quant=quant, max_model_len=2048,
                            enforce_eager=True)
    prompts = make_prompts(4, 64, source.config["vocab_size"], seed=0)
    engine = VLLMEngine(get_regime(regime), options)
    try:
        load = engine.load()
        runs = [engine.generate(prompts, 16) for _ in range(2)]  # the second run reuses the warm engine
    finally:
        engine.close()
    assert load.load_s > 0 and load.weights_gib > 0
    assert load.kv_capacity_tokens >= 2048 and load.kv_cache_gib > 0
    assert (load.load_from, load.decode_mode) == ("random-init", "eager")
    for samples in runs:
        assert len(samples) == 4
        for s in samples:
            assert s.output_tokens == 16
            assert 0 < s.ttft_s < s.e2e_s < 60
    return load


@pytest.fixture(scope="module")
def fp16_load():
    return run_engine("vllm-fp16", "none")


def test_vllm_fp16_random_weights(fp16_load):
    assert fp16_load.quant == "none"


@pytest.mark.parametrize("quant", ["awq", "gptq"])
def test_vllm_int4_really_runs_quantized_layers(quant, fp16_load):
    load = run_engine("vllm-int4", quant)
    assert load.quant.split(":")[0] == quant
    # vLLM gives the KV cache what the weights leave of --gpu-memory-utilization, so int4 weights that are
    # really quantized leave room for about (bf16 - int4 weight bytes) / (KV bytes per token) more tokens.
    # A config whose layers silently stay bf16 (what an empty GPTQ layer list does) leaves none.
    source = resolve_model("qwen2.5-7b", "random")
    saved_tokens = (fp16_load.weights_gib - load.weights_gib) * 2**30 / kv_bytes_per_token(source.config, "bf16")
    assert load.kv_capacity_tokens - fp16_load.kv_capacity_tokens > 0.8 * saved_tokens
