"""The real vLLM engine on a GPU: random Qwen2.5-7B weights, one small batch, vLLM's own request timings.

Run on the GPU machine: `pytest -m gpu tests/gpu/test_vllm_gpu.py`. The int4 cases also read vLLM's
worker log (captured at the file-descriptor level, so the engine core's output is included) for the
line naming the GEMM kernel: it only appears when linear layers really are quantized.
"""
from __future__ import annotations

import importlib.util
import re

import pytest

from qwenopt.engines.base import EngineOptions
from qwenopt.engines.vllm import VLLMEngine
from qwenopt.models import resolve_model
from qwenopt.regimes import get_regime
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


@pytest.mark.parametrize(
    "regime, quant, linear_method",
    [
        ("vllm-fp16", "none", None),
        ("vllm-int4", "awq", "AutoAWQMarlinLinearMethod"),
        ("vllm-int4", "gptq", "AutoGPTQLinearMethod"),
    ],
)
def test_vllm_random_weights(regime, quant, linear_method, capfd):
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

    assert load.load_s > 0
    assert load.kv_capacity_tokens >= 2048 and load.kv_cache_gib > 0
    assert load.weights_gib > 0
    assert load.quant.split(":")[0] == quant
    assert (load.load_from, load.decode_mode) == ("random-init", "eager")
    for samples in runs:
        assert len(samples) == 4
        for s in samples:
            assert s.output_tokens == 16
            assert 0 < s.ttft_s < s.e2e_s < 60

    if linear_method:
        log = "".join(capfd.readouterr())
        kernels = re.findall(rf"Using (\w+)LinearKernel for {linear_method}", log)
        assert kernels, f"no quantized linear layer was built ({linear_method} never logged its kernel)"
        if ":" in load.quant:  # the label must name a kernel the workers really use
            assert load.quant.split(":")[1] in {k.lower() for k in kernels}
