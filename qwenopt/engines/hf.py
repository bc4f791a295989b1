"""The Hugging Face transformers engine: `model.generate` on a static batch, timed per token.

TTFT comes from a streamer that stamps the host clock when generate hands over each new token
(generate copies every token to the host, which waits for the device, so the stamp is honest).
"""
from __future__ import annotations

import gc
import time

from ..errors import QwenoptError
from ..regimes import RegimeSpec
from .base import EngineOptions, LoadInfo, RequestSample

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class TokenClock:
    """A generate streamer that records when each generated token reaches the host."""

    def __init__(self):
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFEngine:
    def __init__(self, spec: RegimeSpec, options: EngineOptions):
        self.spec = spec
        self.options = options
        self.model = None

    def _synchronize(self) -> None:
        if self.options.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def load(self) -> LoadInfo:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        opts = self.options
        dtype = getattr(torch, TORCH_DTYPES[opts.dtype])
        start = time.perf_counter()
        if opts.source.weights == "random":
            torch.manual_seed(opts.seed)
            fields = {k: v for k, v in opts.source.config.items() if k not in ("model_type", "torch_dtype", "dtype")}
            config = AutoConfig.for_model(opts.source.config["model_type"], **fields)
            with torch.device(opts.device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=self.spec.attn)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                opts.source.location, dtype=dtype, device_map=opts.device, attn_implementation=self.spec.attn
            )
        self.model = model.eval()
        self._synchronize()
        load_s = time.perf_counter() - start
        return LoadInfo(
            load_s=load_s,
            weights_gib=self.model.get_memory_footprint() / 2**30,
            attn=self.model.config._attn_implementation,
            quant=self.spec.quant,
        )

    def generate(self, prompts: list[list[int]], output_len: int) -> list[RequestSample]:
        import torch

        if self.model is None:
            raise RuntimeError("generate() before load()")
        input_ids = torch.tensor(prompts, device=self.options.device)
        clock = TokenClock()
        self._synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=0,
                streamer=clock,
            )
        self._synchronize()
        e2e = time.perf_counter() - start
        if not clock.stamps:
            raise QwenoptError("generate produced no tokens")
        produced = out.shape[1] - input_ids.shape[1]
        ttft = clock.stamps[0] - start
        return [RequestSample(e2e_s=e2e, ttft_s=ttft, output_tokens=produced) for _ in prompts]

    def reset_memory_stats(self) -> None:
        if self.options.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def memory_stats(self) -> dict:
        if self.options.device != "cuda":
            return {}
        import torch

        return {
            "torch_peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "torch_peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }

    def close(self) -> None:
        self.model = None
        gc.collect()
        if self.options.device == "cuda":
            import torch

            torch.cuda.empty_cache()
