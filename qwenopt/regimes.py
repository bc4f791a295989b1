"""The regime registry: each way of serving the model, described as data.

A regime's differences (engine, weight format, attention kernel, the pip extra it needs)
live here as fields, so engines stay generic and `qwenopt regimes` can explain every choice.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .errors import QwenoptError


@dataclass(frozen=True)
class RegimeSpec:
    name: str
    engine: str  # "hf" or "vllm"
    weights: str  # how the weights are stored, for people
    quant: str  # "none", "nf4", "gptq", "awq"
    attn: str  # attention implementation asked for
    extra: str | None  # pip extra that brings the packages below
    packages: tuple[str, ...]  # importable modules the regime needs beyond the core
    needs_gpu: bool
    summary: str


REGIMES: dict[str, RegimeSpec] = {
    spec.name: spec
    for spec in (
        RegimeSpec("hf-fp16", "hf", "fp16/bf16", "none", "sdpa", None, (), False,
                   "transformers baseline: half-precision weights, PyTorch SDPA attention"),
        RegimeSpec("hf-nf4", "hf", "NF4, double quant, bf16 compute", "nf4", "sdpa", "bnb", ("bitsandbytes",), True,
                   "transformers + bitsandbytes 4-bit NF4 (the reference article's quantized load)"),
        RegimeSpec("hf-gptq", "hf", "GPTQ int4 g128", "gptq", "sdpa", "gptq", ("gptqmodel", "optimum"), False,
                   "transformers + gptqmodel int4 kernels (--kernel picks one; the row's quant names the one used)"),
        RegimeSpec("hf-fa2", "hf", "fp16/bf16", "none", "flash_attention_2", "fa2", (), True,
                   "transformers with FlashAttention-2: the flash-attn package if installed, "
                   "else PyTorch SDPA pinned to its FlashAttention-2 backend (the row's attn says which)"),
        RegimeSpec("hf-fa4", "hf", "fp16/bf16", "none", "flash_attention_4", "fa4", (), True,
                   "transformers with the flash-attn-4 package (FlashAttention 4, CuTe DSL kernels "
                   "compiled on first use; Hopper and Blackwell)"),
        RegimeSpec("vllm-fp16", "vllm", "fp16/bf16", "none", "vllm", "vllm", ("vllm",), True,
                   "vLLM: PagedAttention, continuous batching, tensor/pipeline parallel"),
        RegimeSpec("vllm-int4", "vllm", "AWQ (default) or GPTQ int4", "awq", "vllm", "vllm", ("vllm",), True,
                   "vLLM with int4 weights through Marlin/Machete kernels"),
    )
}


def get_regime(name: str) -> RegimeSpec:
    try:
        return REGIMES[name]
    except KeyError:
        raise QwenoptError(f"unknown regime {name!r}; choose one of: {', '.join(REGIMES)}") from None


def missing_packages(spec: RegimeSpec) -> list[str]:
    return [p for p in spec.packages if importlib.util.find_spec(p) is None]


def gpu_count() -> int:
    """CUDA devices visible to torch (0 where torch has no CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def availability(spec: RegimeSpec, gpus: int | None = None) -> tuple[bool, str]:
    """Whether this machine can run the regime now, and if not, the one-line reason."""
    missing = missing_packages(spec)
    if missing:
        return False, f"needs {', '.join(missing)}: pip install 'qwenopt[{spec.extra}]'"
    gpus = gpu_count() if gpus is None else gpus
    if spec.engine == "hf":  # the attention kernel may need a package or a GPU generation of its own
        from .attention import gpu_capability, resolve, why_not

        reason = why_not(resolve(spec.attn, fallback=True), "cuda" if gpus else "cpu", gpu_capability() if gpus else None)
        if reason:
            return False, reason
    if spec.needs_gpu and gpus == 0:
        return False, "needs a CUDA GPU"
    return True, "ready"


def check_runnable(spec: RegimeSpec, device: str) -> None:
    """Fail fast, naming what to install or change, before any model is loaded."""
    missing = missing_packages(spec)
    if missing:
        raise QwenoptError(
            f"regime {spec.name!r} needs {', '.join(missing)}: install it with pip install 'qwenopt[{spec.extra}]'"
        )
    if spec.needs_gpu and device != "cuda":
        raise QwenoptError(f"regime {spec.name!r} runs on a CUDA GPU only (got --device {device})")
