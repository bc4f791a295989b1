"""The attention kernels a transformers regime can run, and whether this machine can run each.

A row's `attn` column names the kernel that really ran, so PyTorch SDPA pinned to its FlashAttention
backend is `sdpa-flash`, never `flash_attention_2`. The flash-attn packages are found by their
distribution name, as transformers does: FlashAttention-2 (`flash-attn`) and FlashAttention-4
(`flash-attn-4`, CuTe DSL kernels compiled on first use) both install the module `flash_attn`.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from .errors import QwenoptError


@dataclass(frozen=True)
class AttentionKernel:
    name: str  # what --attn takes and the row's attn column says
    transformers_name: str  # what goes to attn_implementation
    sdpa_backend: str | None  # torch.nn.attention.SDPBackend member pinned around generate, if any
    distribution: str | None  # pip distribution that brings it
    extra: str | None  # qwenopt extra that installs the distribution
    min_capability: tuple[int, int] | None  # CUDA compute capability it needs (None: also runs on CPU)
    summary: str
    grouped_kv: bool = True  # takes Qwen's 4 KV heads as they are; False: transformers repeats them to 28 first
    num_splits: int | None = None  # flash-attn-4: passed on every call (0: its split-KV heuristic); None: left as is


KERNELS: dict[str, AttentionKernel] = {
    k.name: k
    for k in (
        AttentionKernel("sdpa", "sdpa", None, None, None, None,
                        "PyTorch SDPA, backend chosen by PyTorch per call"),
        AttentionKernel("sdpa-flash", "sdpa", "FLASH_ATTENTION", None, None, (8, 0),
                        "PyTorch SDPA pinned to its FlashAttention-2 backend"),
        AttentionKernel("sdpa-efficient", "sdpa", "EFFICIENT_ATTENTION", None, None, (5, 0),
                        "PyTorch SDPA pinned to its memory-efficient backend (KV heads repeated: it has no GQA)",
                        grouped_kv=False),
        AttentionKernel("flash_attention_2", "flash_attention_2", None, "flash-attn", "fa2", (8, 0),
                        "the flash-attn 2.x package (Ampere and newer)"),
        AttentionKernel("flash_attention_4", "flash_attention_4", None, "flash-attn-4", "fa4", (9, 0),
                        "the flash-attn-4 package: CuTe DSL kernels, JIT-compiled (Hopper, Blackwell)"),
        AttentionKernel("flash_attention_4+splitkv", "flash_attention_4", None, "flash-attn-4", "fa4", (9, 0),
                        "flash-attn-4 with its split-KV heuristic (num_splits=0): transformers leaves num_splits "
                        "at 1, so a one-token decode step runs one tile per head", num_splits=0),
    )
}


def get_kernel(name: str) -> AttentionKernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise QwenoptError(f"unknown --attn {name!r}; choose one of: {', '.join(KERNELS)}") from None


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gpu_capability() -> tuple[int, int] | None:
    """The first CUDA device's compute capability, or None where torch sees no CUDA GPU."""
    import torch

    return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None


def why_not(kernel: AttentionKernel, device: str, capability: tuple[int, int] | None) -> str | None:
    """The one-line reason this kernel cannot run on `device` here, or None if it can."""
    if kernel.distribution and not installed(kernel.distribution):
        return f"needs {kernel.distribution}: pip install 'qwenopt[{kernel.extra}]'"
    if kernel.min_capability is None:
        return None
    if device != "cuda" or capability is None:
        return "needs a CUDA GPU"
    if capability < kernel.min_capability:
        need = "Hopper or Blackwell" if kernel.min_capability >= (9, 0) else f"sm_{kernel.min_capability[0]}0 or newer"
        return f"needs a {need} GPU (this one is sm_{capability[0]}{capability[1]})"
    return None


def check_kernel(kernel: AttentionKernel, device: str, capability: tuple[int, int] | None, what: str) -> None:
    """Fail fast, before any model loads, naming what asked for the kernel and what to install or change."""
    reason = why_not(kernel, device, capability)
    if reason:
        runs = "" if what.endswith(kernel.name) else f" runs {kernel.name}, which"
        raise QwenoptError(f"{what}{runs} {reason}")


def kernels_here(capability: tuple[int, int] | None) -> list[tuple[AttentionKernel, str | None]]:
    """Every kernel with the reason it cannot run on this machine's first GPU (None: it can)."""
    device = "cuda" if capability else "cpu"
    return [(k, why_not(k, device, capability)) for k in KERNELS.values()]


# A kernel whose package is missing -> the kernel run in its place where a fallback is allowed (hf-fa2's default)
FALLBACKS = {"flash_attention_2": "sdpa-flash"}


def resolve(requested: str, *, fallback: bool) -> AttentionKernel:
    """The kernel to run for `requested`. With `fallback` (hf-fa2's default), flash_attention_2 without the
    flash-attn package runs PyTorch SDPA's FlashAttention-2 backend, and the row says sdpa-flash."""
    kernel = get_kernel(requested)
    if fallback and kernel.name in FALLBACKS and not installed(kernel.distribution):
        return KERNELS[FALLBACKS[kernel.name]]
    return kernel


def kernel_for_regime(spec, requested: str | None, device: str, gpus: int, compile: bool = False) -> str | None:
    """The kernel a transformers regime will run (--attn, else its own), checked against this machine before any
    model loads; None for vLLM, which picks its attention backend itself."""
    if spec.engine != "hf":
        if requested is not None:
            raise QwenoptError("--attn applies to transformers regimes; vLLM picks its attention backend itself")
        return None
    kernel = resolve(requested or spec.attn, fallback=True)
    what = f"--attn {requested}" if requested else f"regime {spec.name!r}"
    check_kernel(kernel, device, gpu_capability() if device == "cuda" and gpus else None, what)
    if compile and kernel.sdpa_backend == "FLASH_ATTENTION":
        # measured on the H100: "Flash Attention does not support non-null attn_mask", a fake-tensor error per cell
        runs = "" if what.endswith(kernel.name) else f" runs {kernel.name}, which"
        raise QwenoptError(f"{what}{runs} cannot run with --compile: its static KV cache makes "
                           "transformers pass an attention mask, and PyTorch's flash backend takes none; use --attn "
                           "sdpa (PyTorch picks a backend that takes the mask) or flash_attention_4")
    return kernel.name
