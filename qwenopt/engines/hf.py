"""The Hugging Face transformers engine: `model.generate` on a static batch, timed per token.

TTFT comes from a streamer that stamps the host clock when generate hands over each new token
(generate copies every token to the host, which waits for the device, so the stamp is honest).
"""
from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

from ..attention import resolve
from ..errors import QwenoptError
from ..models import atomic_folder, cache_dir
from ..quantize import BITS, import_gptqmodel, write_random_gptq_checkpoint
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


def quantization_config(quant: str, compute_dtype):
    """The reference article's bitsandbytes setup: NF4, double quantization, half-precision compute."""
    if quant != "nf4":
        raise QwenoptError(f"transformers engine has no quantize-on-load for {quant!r}")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def gptq_kernel(model) -> str:
    """The gptqmodel kernel its QuantLinear layers really use, e.g. 'triton' (from the class's backend)."""
    for module in model.modules():
        backends = getattr(type(module), "SUPPORTS_BACKENDS", None)
        if backends:
            return str(getattr(backends[0], "value", backends[0])).removeprefix("gptq_")
    raise QwenoptError("the model loaded without any GPTQ layer: its quantization_config was not applied")


def random_model(source, dtype, device: str, seed: int, attn: str):
    """The architecture with seeded random weights, built directly on the device (no download, no disk)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    fields = {k: v for k, v in source.config.items() if k not in ("model_type", "torch_dtype", "dtype")}
    config = AutoConfig.for_model(source.config["model_type"], **fields)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


def save_atomically(model, folder: Path) -> None:
    """save_pretrained into a sibling temp folder, then rename: a half-written cache is never picked up."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)


def random_checkpoint(source, dtype_name: str, seed: int) -> Path:
    """A saved random-weight checkpoint, so quantized regimes load through the real from_pretrained path."""
    import torch

    folder = cache_dir("random", source, f"{dtype_name}-seed{seed}")
    if not (folder / "config.json").is_file():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = random_model(source, getattr(torch, TORCH_DTYPES[dtype_name]), device, seed, "sdpa")
        save_atomically(model, folder)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return folder


def _sdpa_without_gqa():
    """transformers hands SDPA grouped KV heads (enable_gqa=True) whenever there is no mask, which PyTorch's
    memory-efficient backend refuses ("No available kernel"); this makes it take its own no-GQA path, as it does
    when a mask is present: repeat the KV heads (5.24 packs the query heads instead for a one-token decode step).
    Both 5.17 and 5.24 decide in `use_gqa_in_sdpa`."""
    from unittest import mock

    from transformers.integrations import sdpa_attention

    if not hasattr(sdpa_attention, "use_gqa_in_sdpa"):
        raise QwenoptError("this transformers has no sdpa_attention.use_gqa_in_sdpa: --attn sdpa-efficient cannot "
                           "turn off grouped-query SDPA; use sdpa or sdpa-flash")
    return mock.patch.object(sdpa_attention, "use_gqa_in_sdpa", lambda *args, **kwargs: False)


def _flash_num_splits(num_splits: int):
    """Call the flash functions transformers loaded (module globals of modeling_flash_attention_utils in 5.17 and
    5.24, filled when the model loads) with num_splits, which transformers itself never passes."""
    import functools
    from unittest import mock

    from transformers import modeling_flash_attention_utils as fa_utils

    stack = contextlib.ExitStack()
    for name in ("_flash_fn", "_flash_varlen_fn"):
        function = getattr(fa_utils, name, None)
        if function is None:
            raise QwenoptError(f"transformers has no loaded {name} to pass num_splits to: this --attn needs "
                               "transformers 5.17-5.24's flash attention internals")
        stack.enter_context(mock.patch.object(fa_utils, name, functools.partial(function, num_splits=num_splits)))
    return stack


class HFEngine:
    timings_per_request = False  # a static batch: generate() returns once, every request gets its latency
    def __init__(self, spec: RegimeSpec, options: EngineOptions):
        self.spec = spec
        self.options = options
        self.model = None
        # The kernel asked for (--attn, else the regime's); hf-fa2 without the flash-attn package runs PyTorch
        # SDPA pinned to its FlashAttention-2 backend. A pinned SDPA backend raises rather than falling back.
        self.kernel = resolve(options.attn or spec.attn, fallback=True)
        self.attn_implementation = self.kernel.transformers_name
        self.attn_label = self.kernel.name

    def _attention_context(self):
        stack = contextlib.ExitStack()
        if self.kernel.num_splits is not None:
            stack.enter_context(_flash_num_splits(self.kernel.num_splits))
        if self.kernel.sdpa_backend is None:
            return stack
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([getattr(SDPBackend, self.kernel.sdpa_backend)]))
        if not self.kernel.grouped_kv:
            stack.enter_context(_sdpa_without_gqa())
        return stack

    def _synchronize(self) -> None:
        if self.options.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def load(self) -> LoadInfo:
        """Load (timed) after any one-time preparation (untimed): a random checkpoint for quantized regimes."""
        import torch
        from transformers import AutoModelForCausalLM

        opts = self.options
        dtype = getattr(torch, TORCH_DTYPES[opts.dtype])
        kwargs = {"dtype": dtype, "attn_implementation": self.attn_implementation}
        quantized_cache = None
        if self.spec.quant == "gptq":  # a GPTQ checkpoint: the user's, or random tensors written once
            import_gptqmodel()
            from transformers import GPTQConfig

            location = opts.source.location
            if location is None:
                location = cache_dir("quantized", opts.source, f"gptq-{opts.dtype}-seed{opts.seed}")
                if not (location / "config.json").is_file():
                    write_random_gptq_checkpoint(opts.source, location, opts.seed, TORCH_DTYPES[opts.dtype])
            kwargs["quantization_config"] = GPTQConfig(bits=BITS, backend=opts.kernel)
            load_from = "checkpoint"
        elif self.spec.quant != "none":
            quantized_cache = cache_dir("quantized", opts.source, f"{self.spec.quant}-{opts.dtype}-seed{opts.seed}")
            if (quantized_cache / "config.json").is_file():
                location, load_from = quantized_cache, "quantized-cache"
            else:
                location = opts.source.location or random_checkpoint(opts.source, opts.dtype, opts.seed)
                kwargs["quantization_config"] = quantization_config(self.spec.quant, dtype)
                load_from = "quantize-on-load"
        elif opts.source.weights == "random":
            location, load_from = None, "random-init"
        else:
            location, load_from = opts.source.location, "checkpoint"
        start = time.perf_counter()
        if location is None:
            model = random_model(opts.source, dtype, opts.device, opts.seed, self.attn_implementation)
        else:
            model = AutoModelForCausalLM.from_pretrained(location, device_map=opts.device, **kwargs)
        self.model = model.eval()
        self._synchronize()
        load_s = time.perf_counter() - start
        if load_from == "quantize-on-load":  # the article's advice: keep the quantized model for fast restarts
            save_atomically(self.model, quantized_cache)
        quant = f"gptq:{gptq_kernel(self.model)}" if self.spec.quant == "gptq" else self.spec.quant
        return LoadInfo(
            load_s=load_s,
            load_from=load_from,
            decode_mode=self._decode_mode(),
            weights_gib=self.model.get_memory_footprint() / 2**30,
            attn=self.attn_label,
            quant=quant,
        )

    def _decode_mode(self) -> str:
        """transformers compiles a static-cache forward by itself, but only on accelerators."""
        if not self.options.compile:
            return "dynamic"
        return "static+compile" if self.options.device == "cuda" else "static"

    def generate(self, prompts: list[list[int]], output_len: int) -> list[RequestSample]:
        import torch

        if self.model is None:
            raise RuntimeError("generate() before load()")
        input_ids = torch.tensor(prompts, device=self.options.device)
        clock = TokenClock()
        self._synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), self._attention_context():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=0,
                streamer=clock,
                **({"cache_implementation": "static"} if self.options.compile else {}),
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
