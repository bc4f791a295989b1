"""The engine lifecycle every regime runs through: load once, generate many batches, close.

The sweep runner only sees this interface, so per-request timings, footprints and load times
mean the same thing whichever engine produced them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..models import ModelSource


@dataclass(frozen=True)
class EngineOptions:
    source: ModelSource
    device: str  # "cuda" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32" (resolved, never "auto")
    seed: int = 0
    tp: int = 1
    pp: int = 1
    quant: str = "none"  # overrides the regime's default quant where it offers a choice (vllm-int4: awq|gptq)
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    compile: bool = False  # HF: static KV cache + torch.compile (CUDA graphs) instead of the dynamic cache
    kernel: str = "auto"  # hf-gptq: the gptqmodel kernel (backend) to load the int4 layers with
    attn: str | None = None  # transformers: the attention kernel (attention.py name); None: the regime's
    engine_args: dict = field(default_factory=dict)  # pass-through to the engine


@dataclass(frozen=True)
class RequestSample:
    """One request's timings, seconds from its arrival; output_tokens as counted from the engine's output."""

    e2e_s: float
    ttft_s: float
    output_tokens: int


@dataclass
class LoadInfo:
    """What loading cost and what the engine holds; None where the engine cannot tell."""

    load_s: float
    weights_gib: float | None = None
    kv_cache_gib: float | None = None
    kv_capacity_tokens: int | None = None
    attn: str | None = None  # the attention kernel that really runs
    quant: str | None = None
    load_from: str | None = None  # "random-init", "checkpoint", "quantize-on-load", "quantized-cache"
    decode_mode: str | None = None  # how decode steps run: "dynamic", "static+compile", "cuda-graphs", "eager"


class Engine(Protocol):
    # True where each request is timed on its own (vLLM's per-request metrics); False for a static batch,
    # whose requests all share the batch's one timing.
    timings_per_request: bool

    def load(self) -> LoadInfo:
        """Load the model; called once per sweep, never inside a timed cell."""

    def generate(self, prompts: list[list[int]], output_len: int) -> list[RequestSample]:
        """Run the prompts as one batch, forcing exactly output_len new tokens each."""

    def memory_stats(self) -> dict:
        """torch allocator peaks since the last reset_memory_stats (GiB); empty where not in-process."""

    def reset_memory_stats(self) -> None: ...

    def close(self) -> None:
        """Free the device so the next regime starts clean."""
