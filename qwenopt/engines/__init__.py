"""Engines: one module each, behind the fixed lifecycle of base.Engine."""
from __future__ import annotations

from ..regimes import RegimeSpec
from .base import Engine, EngineOptions


def make_engine(spec: RegimeSpec, options: EngineOptions) -> Engine:
    """Import the engine lazily so that `qwenopt --help` and CPU commands never load vLLM."""
    if spec.engine == "hf":
        from .hf import HFEngine

        return HFEngine(spec, options)
    if spec.engine == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(spec, options)
    raise ValueError(f"no engine named {spec.engine!r}")
