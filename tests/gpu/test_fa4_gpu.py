"""flash-attn-4 through transformers on a GPU: the tiny model and a Qwen2.5-7B-shaped attention layer.

Run on the GPU machine with the FA4 folder on the path (gpu/fa4-unbundle.sh prints it):
`PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages pytest -m gpu tests/gpu/test_fa4_gpu.py`.
"""
from __future__ import annotations

import dataclasses

import pytest

from qwenopt.attention import KERNELS, gpu_capability, why_not
from qwenopt.engines.base import EngineOptions
from qwenopt.engines.hf import HFEngine
from qwenopt.models import resolve_model
from qwenopt.regimes import get_regime
from qwenopt.workload import make_prompts


def _fa4_reason() -> str | None:
    try:
        return why_not(KERNELS["flash_attention_4"], "cuda", gpu_capability())
    except Exception as exc:  # no torch CUDA at all
        return str(exc)


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_fa4_reason() is not None, reason=str(_fa4_reason()))]


def test_hf_fa4_generates_the_forced_length_and_says_flash_attention_4():
    tiny = resolve_model("qwen2-tiny")  # widened to Qwen2.5-7B's head size (128), which FA4 has kernels for
    source = dataclasses.replace(tiny, config={**tiny.config, "hidden_size": 512, "intermediate_size": 1024})
    engine = HFEngine(get_regime("hf-fa4"), EngineOptions(source=source, device="cuda", dtype="bf16"))
    info = engine.load()
    assert info.attn == "flash_attention_4"
    samples = engine.generate(make_prompts(2, 300, 8192, 0), output_len=5)
    assert {s.output_tokens for s in samples} == {5}
    engine.close()


def test_fa4_matches_sdpa_on_qwen_heads():
    """FA4's output against PyTorch SDPA's for Qwen2.5-7B's attention shape (28 query / 4 KV heads, dim 128)."""
    import torch
    import torch.nn.functional as F
    from flash_attn.cute import flash_attn_func

    torch.manual_seed(0)
    q = torch.randn(1, 512, 28, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 512, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = flash_attn_func(q, k, v, causal=True)
    out = out[0] if isinstance(out, tuple) else out
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
