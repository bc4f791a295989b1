"""The vLLM engine (written against vLLM 0.26): offline `vllm.LLM`, all prompts submitted at once.

Per-request timings are vLLM's own. `LLM` turns stats off by default (`disable_log_stats=True`), and
then `RequestOutput.metrics` is None; we turn them on. The fields (vllm/v1/metrics/stats.py,
`RequestStateStats`) live on two clocks that must not be mixed:
  - `arrival_time` and `first_token_latency` are the frontend's `time.time()` (this process):
    TTFT = `first_token_latency`, which vLLM itself reports as time-to-first-token;
  - `first_token_ts` / `last_token_ts` are the engine core's `time.monotonic()` (another process):
    their difference is the decode interval, so E2E = TTFT + (last_token_ts - first_token_ts).

Random weights: a generated folder holding config.json (with `quantization_config` for int4 and
YaRN rope scaling past 32K) and qwenopt's round-tripping tokenizer (qwenopt/tokenizer.py), loaded with
`load_format="dummy"`. Offline, `skip_tokenizer_init=True`: prompts are token ids and outputs are not
detokenized. `vllm serve` (serving/launcher.py) loads the folder's tokenizer, so text clients work too.

int4: vLLM 0.26 maps "awq"/"awq_marlin" to `auto_awq` and "gptq"/"gptq_marlin" to `auto_gptq`, which
pick the fastest mixed-precision GEMM per layer: Machete on Hopper (sm90), Marlin elsewhere.

Defaults chosen for benchmarking (each can be overridden through EngineOptions.engine_args, which is
merged last): prefix caching off, because every repeat sends the same seeded prompts and would
otherwise skip prefill; `VLLM_USE_FLASHINFER_SAMPLER=0` unless set, because greedy decoding does not
use that sampler and its JIT build costs ~100 s per start.

Several hosts: pass `distributed_executor_backend="ray"` in engine_args with a running Ray cluster;
tensor_parallel_size x pipeline_parallel_size may then span hosts. Remote workers receive the parsed
config, so the random-weight folder should only be needed on this host.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
from pathlib import Path

from ..errors import QwenoptError
from ..models import ModelSource, cache_dir, with_yarn, yarn_scaling
from ..regimes import RegimeSpec
from ..roofline import DTYPE_BYTES, layer_dims, weight_bytes_per_step
from ..tokenizer import has_tokenizer, write_for_config
from .base import EngineOptions, LoadInfo, RequestSample

VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# quantization_config as the published Qwen2.5-7B-Instruct-AWQ / -GPTQ-Int4 checkpoints write it,
# limited to the keys vLLM 0.26 reads (AutoAWQConfig.from_config, AutoGPTQConfig.from_config).
QUANT_CONFIGS = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True, "lm_head": False,
        # Without safetensors files vLLM cannot see which layers are quantized, and an empty list means
        # "none": every linear layer would silently run unquantized (AutoGPTQConfig.maybe_update_config).
        "modules_in_block_to_quantize": [
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        ],
    },
}
METRICS_OFF = (
    "vLLM returned no per-request metrics (RequestOutput.metrics is None): the engine runs with "
    "disable_log_stats=True. qwenopt sets disable_log_stats=False; do not override it in the engine args."
)


def resolve_quant(spec: RegimeSpec, options: EngineOptions) -> str:
    """The weight format to run: the regime's, or the choice EngineOptions.quant makes within vllm-int4."""
    if spec.quant == "none":
        if options.quant != "none":
            raise QwenoptError(
                f"regime {spec.name!r} runs unquantized weights; use vllm-int4 for --quant {options.quant}"
            )
        return "none"
    quant = spec.quant if options.quant == "none" else options.quant
    if quant not in QUANT_CONFIGS:
        raise QwenoptError(f"regime {spec.name!r} takes --quant {' or '.join(QUANT_CONFIGS)}, got {quant!r}")
    return quant


def default_model_dir(source: ModelSource, quant: str, max_model_len: int | None) -> Path:
    """$QWENOPT_CACHE (default ~/.cache/qwenopt)/vllm/NAME-random-QUANT-MAXLEN."""
    return cache_dir("vllm", source, f"{quant}-{max_model_len or 'native'}")


def write_random_model_dir(source: ModelSource, quant: str, out_dir: Path, max_model_len: int | None) -> Path:
    """Write the folder vLLM loads with load_format="dummy" (config + tokenizer, no weights); returns out_dir."""
    config = dict(source.config)
    if quant != "none":
        config["quantization_config"] = dict(QUANT_CONFIGS[quant])
    config = with_yarn(config, max_model_len)
    # transformers 5.17 takes a local tokenizer whose config.json names no transformers version for a Mistral one
    # with a broken regex and warns so on every load (seen in vLLM's logs on the H100); the folder is this version's
    config.setdefault("transformers_version", importlib.metadata.version("transformers"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if not has_tokenizer(out_dir):  # the vocabulary is the architecture's: one written is kept
        write_for_config(out_dir, config)
    return out_dir


def model_location(options: EngineOptions, quant: str) -> tuple[str | Path, EngineOptions]:
    """What vLLM loads (offline and served alike): the checkpoint, or for random weights the generated folder, with
    a speculative_config that names no model given the random drafter's folder."""
    if options.source.weights != "random":
        return options.source.location, options
    from .vllm_spec import with_random_drafter

    folder = default_model_dir(options.source, quant, options.max_model_len)
    return write_random_model_dir(options.source, quant, folder, options.max_model_len), with_random_drafter(options)


def engine_args(spec: RegimeSpec, options: EngineOptions, model_dir: str | Path) -> dict:
    """Keyword arguments for `vllm.LLM`; options.engine_args is merged last and wins."""
    quant = resolve_quant(spec, options)
    args = {
        "model": str(model_dir),
        "dtype": VLLM_DTYPES[options.dtype],
        "quantization": None if quant == "none" else quant,  # vLLM upgrades these to auto_awq / auto_gptq
        "tensor_parallel_size": options.tp,
        "pipeline_parallel_size": options.pp,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": options.enforce_eager,
        "seed": options.seed,
        "disable_log_stats": False,  # per-request metrics on RequestOutput
        "enable_prefix_caching": False,  # repeats send the same prompts
    }
    if options.max_model_len:
        args["max_model_len"] = options.max_model_len
    if options.max_num_seqs:
        args["max_num_seqs"] = options.max_num_seqs
    if options.source.weights == "random":
        args.update(load_format="dummy", skip_tokenizer_init=True)
    else:
        config = options.source.config
        yarn = yarn_scaling(config, options.max_model_len)
        if yarn:  # vLLM applies dict overrides after standardizing the config: give the whole rope dict
            theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
            args["hf_overrides"] = {"rope_parameters": {**yarn, **({"rope_theta": theta} if theta else {})}}
    args.update(options.engine_args)
    return args


def samples_from_outputs(outputs) -> list[RequestSample]:
    """One sample per vLLM RequestOutput, from vLLM's per-request stats (see the module docstring)."""
    samples = []
    for output in outputs:
        stats = output.metrics
        if stats is None:
            raise QwenoptError(METRICS_OFF)
        if stats.first_token_ts <= 0 or stats.first_token_latency <= 0:
            raise QwenoptError(f"vLLM recorded no first token for request {output.request_id}: {stats}")
        ttft = stats.first_token_latency
        samples.append(RequestSample(
            e2e_s=ttft + (stats.last_token_ts - stats.first_token_ts),
            ttft_s=ttft,
            output_tokens=len(output.outputs[0].token_ids),
        ))
    return samples


def kv_cache_footprint(config: dict, num_blocks: int, block_size: int, tp: int, elem_bytes: int) -> tuple[int, float]:
    """(KV capacity in tokens, KV cache GiB summed over all GPUs); KV heads are replicated when tp > kv_heads."""
    d = layer_dims(config)
    tokens = num_blocks * block_size
    bytes_per_token = 2 * d["layers"] * d["head_dim"] * max(d["kv_heads"], tp) * elem_bytes
    return tokens, tokens * bytes_per_token / 2**30


def weights_gib(config: dict, quant: str, dtype: str) -> float:
    """Bytes of the weights as stored (int4 + scales + zeros, or half precision), summed over all GPUs.

    Computed, not read: vLLM measures it (model_runner.model_memory_usage) inside the worker processes
    and hands it to no frontend API in 0.26.
    """
    d = layer_dims(config)
    embedding = 0 if config.get("tie_word_embeddings") else d["vocab"] * d["hidden"] * DTYPE_BYTES[dtype]
    return (weight_bytes_per_step(config, quant, dtype) + embedding) / 2**30


def _int4_kernel(vllm_config) -> str | None:
    """The mixed-precision GEMM the workers chose: vLLM's own chooser, rerun here on down_proj's shard."""
    try:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.kernels.linear import MPLinearLayerConfig, choose_mp_linear_kernel
        from vllm.scalar_type import scalar_types

        hf = vllm_config.model_config.hf_config
        qc = hf.quantization_config
        awq = vllm_config.model_config.quantization == "auto_awq"
        shape = (hf.intermediate_size, hf.hidden_size)  # [in, out]; row-parallel, split along in
        layer = MPLinearLayerConfig(
            full_weight_shape=shape,
            partition_weight_shape=(shape[0] // vllm_config.parallel_config.tensor_parallel_size, shape[1]),
            weight_type=scalar_types.uint4 if awq else scalar_types.uint4b8,
            act_type=vllm_config.model_config.dtype,
            group_size=qc.get("group_size", qc.get("q_group_size")),
            zero_points=bool(qc.get("zero_point")) if awq else False,
            has_g_idx=False if awq else bool(qc.get("desc_act")),
        )
        with set_current_vllm_config(vllm_config):
            kernel = choose_mp_linear_kernel(layer)
        return kernel.__name__.removesuffix("LinearKernel").lower()
    except Exception:  # only a label; the workers log the kernel they really use
        return None


def _kv_elem_bytes(vllm_config) -> int | None:
    cache_dtype = str(vllm_config.cache_config.cache_dtype)
    if cache_dtype == "auto":
        return vllm_config.model_config.dtype.itemsize
    if cache_dtype.startswith("fp8"):
        return 1
    return {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4}.get(cache_dtype)


def decode_mode(graphs, speculative) -> str:
    """The row's decode_mode: eager or cuda-graphs, + the speculative decoding that ran (`+spec-eagle3-k4-assumed-
    L3.00`: method, draft tokens, the mean acceptance length the synthetic sampler was told to produce)."""
    from .vllm_spec import spec_label

    mode = "eager" if graphs is None or graphs.name == "NONE" else "cuda-graphs"
    label = spec_label(speculative)
    return f"{mode}+{label}" if label else mode


class VLLMEngine:
    timings_per_request = True  # vLLM's per-request metrics: first and last token of each request
    def __init__(self, spec: RegimeSpec, options: EngineOptions):
        self.spec = spec
        self.options = options
        self.llm = None

    def load(self) -> LoadInfo:
        if importlib.util.find_spec("vllm") is None:
            raise QwenoptError(f"regime {self.spec.name!r} needs vllm: install it with pip install 'qwenopt[vllm]'")
        opts = self.options
        quant = resolve_quant(self.spec, opts)
        model, opts = model_location(opts, quant)
        args = engine_args(self.spec, opts, model)
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        import vllm

        start = time.perf_counter()
        self.llm = vllm.LLM(**args)
        load_s = time.perf_counter() - start

        cfg = self.llm.llm_engine.vllm_config
        method = cfg.model_config.quantization  # what vLLM really runs: None, "auto_awq", "auto_gptq", ...
        fmt = (method or "none").removeprefix("auto_")
        kernel = _int4_kernel(cfg) if method in ("auto_awq", "auto_gptq") else None
        blocks, elem = cfg.cache_config.num_gpu_blocks, _kv_elem_bytes(cfg)  # blocks: synced from the engine core
        tokens, kv_gib = kv_cache_footprint(opts.source.config, blocks or 0, cfg.cache_config.block_size,
                                            cfg.parallel_config.tensor_parallel_size, elem or 0)
        backend, graphs = cfg.attention_config.backend, cfg.compilation_config.cudagraph_mode
        return LoadInfo(
            load_s=load_s,
            weights_gib=weights_gib(opts.source.config, fmt, opts.dtype) if fmt in ("none", "awq", "gptq") else None,
            kv_cache_gib=kv_gib if blocks and elem else None,
            kv_capacity_tokens=tokens if blocks else None,
            attn=backend.name if backend is not None else "vllm",  # else chosen inside the workers
            quant=f"{fmt}:{kernel}" if kernel else fmt,
            load_from="random-init" if opts.source.weights == "random" else "checkpoint",
            decode_mode=decode_mode(graphs, cfg.speculative_config),
        )

    def generate(self, prompts: list[list[int]], output_len: int) -> list[RequestSample]:
        if self.llm is None:
            raise RuntimeError("generate() before load()")
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                                detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return samples_from_outputs(outputs)

    def memory_stats(self) -> dict:
        return {}  # the model lives in vLLM's worker processes; device memory comes from NVML

    def reset_memory_stats(self) -> None:
        pass

    def close(self) -> None:
        if self.llm is None:
            return
        ray = self.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend == "ray"
        self.llm.llm_engine.engine_core.shutdown()  # stops the engine core and its workers now, not at gc
        self.llm = None
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory(shutdown_ray=ray)  # also gc.collect() and torch's empty_cache()
