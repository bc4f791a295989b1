"""The vLLM engine's pure parts, checked without vLLM: engine args, the random-weight folder, metric parsing."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from qwenopt.engines import vllm as engine
from qwenopt.engines.base import EngineOptions, RequestSample
from qwenopt.errors import QwenoptError
from qwenopt.models import max_context, resolve_model
from qwenopt.regimes import get_regime
from qwenopt.tokenizer import FILES, word_ids

FP16, INT4 = get_regime("vllm-fp16"), get_regime("vllm-int4")


@pytest.fixture(scope="module")
def random_7b():
    return resolve_model("qwen2.5-7b", "random")


def options(source, **kw) -> EngineOptions:
    return EngineOptions(source=source, device="cuda", dtype=kw.pop("dtype", "bf16"), **kw)


# Stand-ins shaped like vLLM 0.26: vllm/outputs.py (RequestOutput, CompletionOutput) and
# vllm/v1/metrics/stats.py (RequestStateStats), same field names and defaults.
@dataclass
class RequestStateStats:
    num_generation_tokens: int = 0
    arrival_time: float = 0.0  # frontend time.time()
    queued_ts: float = 0.0  # engine core time.monotonic() from here on
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0  # frontend time.time() - arrival_time
    is_corrupted: bool = False


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None
    routed_experts: object = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: object = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestStateStats | None = None
    lora_request: object = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int | None = None
    num_cache_creation_tokens: int | None = None
    kv_transfer_params: dict | None = None
    ec_transfer_params: dict | None = None


def request_output(request_id: str, tokens: int, metrics: RequestStateStats | None) -> RequestOutput:
    completion = CompletionOutput(0, "", list(range(tokens)), None, None, finish_reason="length")
    return RequestOutput(request_id, None, [1, 2, 3], None, [completion], True, metrics, num_cached_tokens=0)


# engine_args ---------------------------------------------------------------------------------

def test_engine_args_fp16_random(random_7b, tmp_path):
    args = engine.engine_args(FP16, options(random_7b), tmp_path)
    assert args == {
        "model": str(tmp_path),
        "dtype": "bfloat16",
        "quantization": None,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
        "seed": 0,
        "disable_log_stats": False,
        "enable_prefix_caching": False,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
    }


def test_engine_args_int4_awq_by_default(random_7b, tmp_path):
    args = engine.engine_args(INT4, options(random_7b, dtype="fp16"), tmp_path)
    assert args["quantization"] == "awq"
    assert args["dtype"] == "float16"
    assert args["load_format"] == "dummy"


def test_engine_args_int4_gptq(random_7b, tmp_path):
    assert engine.engine_args(INT4, options(random_7b, quant="gptq"), tmp_path)["quantization"] == "gptq"


def test_engine_args_parallel_and_limits(random_7b, tmp_path):
    opts = options(random_7b, tp=4, pp=2, max_model_len=131072, max_num_seqs=64, enforce_eager=True,
                   gpu_memory_utilization=0.95, seed=7)
    args = engine.engine_args(INT4, opts, tmp_path)
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (4, 2)
    assert (args["max_model_len"], args["max_num_seqs"]) == (131072, 64)
    assert args["enforce_eager"] is True and args["gpu_memory_utilization"] == 0.95 and args["seed"] == 7
    assert "hf_overrides" not in args  # random weights carry YaRN in their config.json


def test_engine_args_pass_through_wins(random_7b, tmp_path):
    extra = {"enable_prefix_caching": True, "distributed_executor_backend": "ray", "kv_cache_dtype": "fp8"}
    args = engine.engine_args(FP16, options(random_7b, engine_args=extra), tmp_path)
    assert args["enable_prefix_caching"] is True
    assert args["distributed_executor_backend"] == "ray"
    assert args["kv_cache_dtype"] == "fp8"


def test_engine_args_real_weights():
    source = resolve_model("qwen2.5-7b", "real", "awq")
    args = engine.engine_args(INT4, options(source), source.location)
    assert args["model"] == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert "load_format" not in args and "skip_tokenizer_init" not in args
    assert "hf_overrides" not in args


def test_engine_args_real_weights_long_context_adds_yarn():
    source = resolve_model("qwen2.5-7b", "real")
    args = engine.engine_args(FP16, options(source, max_model_len=131072), source.location)
    assert args["hf_overrides"] == {"rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000.0}}


def test_engine_args_real_weights_yarn_keeps_a_transformers5_rope_theta():
    source = resolve_model("qwen2.5-7b", "real")
    config = {k: v for k, v in source.config.items() if k != "rope_theta"}  # AutoConfig(...).to_dict() in 5.x
    config["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
    source = type(source)(source.name, "real", config, source.location)
    rope = engine.engine_args(FP16, options(source, max_model_len=65536), source.location)["hf_overrides"]
    assert rope == {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                        "rope_theta": 1000000.0}}


def test_quant_choice_is_checked(random_7b, tmp_path):
    with pytest.raises(QwenoptError, match="unquantized"):
        engine.engine_args(FP16, options(random_7b, quant="awq"), tmp_path)
    with pytest.raises(QwenoptError, match="awq or gptq"):
        engine.engine_args(INT4, options(random_7b, quant="nf4"), tmp_path)


# the random-weight folder --------------------------------------------------------------------

def read_config(folder):
    return json.loads((folder / "config.json").read_text())


def test_random_dir_fp16_is_the_bundled_config(random_7b, tmp_path):
    folder = engine.write_random_model_dir(random_7b, "none", tmp_path / "m", 2048)
    assert folder == tmp_path / "m"
    config = read_config(folder)
    assert config.pop("transformers_version") == importlib.metadata.version("transformers")  # no Mistral-regex alarm
    assert config == random_7b.config
    # no weights; the tokenizer lets `vllm serve` take text prompts
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", *FILES])


def test_random_dir_tokenizer_round_trips_word_ids(random_7b, tmp_path):
    from transformers import AutoTokenizer

    folder = engine.write_random_model_dir(random_7b, "none", tmp_path / "m", None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == random_7b.config["vocab_size"] == 152064
    ids = word_ids(152064, 151643, 151645)
    sample = [ids[0], ids[-1], ids[151643 - 256], ids[len(ids) // 2]]  # the first, last, and either side of the specials
    assert tokenizer(tokenizer.decode(sample))["input_ids"] == sample
    assert tokenizer.eos_token_id == 151645


def test_random_dir_keeps_a_written_tokenizer(random_7b, tmp_path):
    folder = engine.write_random_model_dir(random_7b, "none", tmp_path / "m", None)
    (folder / "vocab.json").write_text("{}")  # stands for a tokenizer written earlier: left as it is
    engine.write_random_model_dir(random_7b, "awq", folder, None)
    assert (folder / "vocab.json").read_text() == "{}"


def test_random_dir_awq_with_yarn(random_7b, tmp_path):
    config = read_config(engine.write_random_model_dir(random_7b, "awq", tmp_path, 131072))
    assert config["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert config["max_position_embeddings"] == 32768  # vLLM multiplies it by the factor
    assert max_context(config) == 131072


def test_random_dir_gptq_names_its_quantized_layers(random_7b, tmp_path):
    quant = read_config(engine.write_random_model_dir(random_7b, "gptq", tmp_path, None))["quantization_config"]
    assert {k: quant[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
    # vLLM treats an empty list as "quantize nothing": every projection of the block must be named
    assert set(quant["modules_in_block_to_quantize"]) == {
        f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}


def test_random_dir_no_yarn_when_it_fits(random_7b, tmp_path):
    for max_len in (None, 2048, 32768):
        config = read_config(engine.write_random_model_dir(random_7b, "none", tmp_path / str(max_len), max_len))
        assert "rope_scaling" not in config


def test_random_dir_loads_with_transformers(random_7b, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(engine.write_random_model_dir(random_7b, "awq", tmp_path, 131072))
    assert config.model_type == "qwen2" and config.num_key_value_heads == 4
    assert config.quantization_config["quant_method"] == "awq"
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling  # transformers 5 / 4
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 32768


def test_random_dir_updates_transformers5_rope_parameters(tmp_path):
    source = resolve_model("qwen2.5-7b", "random")
    config = {k: v for k, v in source.config.items() if k != "rope_theta"}
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    source = type(source)(source.name, "random", config)
    written = read_config(engine.write_random_model_dir(source, "none", tmp_path, 131072))
    assert written["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                                          "original_max_position_embeddings": 32768}
    assert "rope_scaling" not in written


def test_default_model_dir(random_7b, monkeypatch, tmp_path):
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    folder = engine.default_model_dir(random_7b, "awq", 131072)
    assert folder.parent == tmp_path / "vllm" and folder.name.startswith("qwen2.5-7b-random-awq-131072-")
    assert engine.default_model_dir(random_7b, "none", None).name.startswith("qwen2.5-7b-random-none-native-")


# per-request metrics -------------------------------------------------------------------------

def test_samples_from_outputs_uses_each_clock_on_its_own():
    outputs = [
        # arrival on the wall clock, token stamps on the engine core's monotonic clock: never subtracted
        request_output("0", 16, RequestStateStats(num_generation_tokens=16, arrival_time=1_764_000_000.0,
                                                  queued_ts=5000.01, scheduled_ts=5000.02, first_token_ts=5000.20,
                                                  last_token_ts=5001.70, first_token_latency=0.25)),
        request_output("1", 15, RequestStateStats(num_generation_tokens=15, arrival_time=1_764_000_000.1,
                                                  queued_ts=5000.11, scheduled_ts=5000.30, first_token_ts=5000.50,
                                                  last_token_ts=5002.50, first_token_latency=0.5)),
    ]
    samples = engine.samples_from_outputs(outputs)
    assert [s.output_tokens for s in samples] == [16, 15]
    assert [s.ttft_s for s in samples] == [0.25, 0.5]
    assert samples[0].e2e_s == pytest.approx(0.25 + 1.5)
    assert samples[1].e2e_s == pytest.approx(0.5 + 2.0)
    assert all(isinstance(s, RequestSample) for s in samples)


def test_samples_need_metrics():
    with pytest.raises(QwenoptError, match="disable_log_stats"):
        engine.samples_from_outputs([request_output("0", 16, None)])


def test_samples_need_a_first_token():
    with pytest.raises(QwenoptError, match="no first token"):
        engine.samples_from_outputs([request_output("0", 0, RequestStateStats(arrival_time=1.0))])


# footprint -----------------------------------------------------------------------------------

def test_kv_cache_footprint(random_7b):
    per_token = 2 * 28 * 128 * 4 * 2  # K and V, 28 layers, 4 KV heads of 128, bf16: 56 KiB
    tokens, gib = engine.kv_cache_footprint(random_7b.config, 1000, 16, 1, 2)
    assert tokens == 16000 and gib == pytest.approx(16000 * per_token / 2**30)
    assert engine.kv_cache_footprint(random_7b.config, 1000, 16, 4, 2)[1] == pytest.approx(gib)
    assert engine.kv_cache_footprint(random_7b.config, 1000, 16, 8, 2)[1] == pytest.approx(2 * gib)  # heads copied
    assert engine.kv_cache_footprint(random_7b.config, 1000, 16, 1, 1)[1] == pytest.approx(gib / 2)  # fp8 cache


def test_weights_gib(random_7b):
    body = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)  # q, o, k, v, gate/up/down
    embed_and_head = 2 * 152064 * 3584
    assert engine.weights_gib(random_7b.config, "none", "bf16") == pytest.approx((body + embed_and_head) * 2 / 2**30)
    int4 = body * (0.5 + 2 / 128 + 0.5 / 128) + embed_and_head * 2
    assert engine.weights_gib(random_7b.config, "awq", "bf16") == pytest.approx(int4 / 2**30)
    assert 14.0 < engine.weights_gib(random_7b.config, "none", "bf16") < 14.3


def test_kv_elem_bytes():
    def cfg(cache_dtype):
        return SimpleNamespace(cache_config=SimpleNamespace(cache_dtype=cache_dtype),
                               model_config=SimpleNamespace(dtype=torch.bfloat16))

    assert engine._kv_elem_bytes(cfg("auto")) == 2
    assert engine._kv_elem_bytes(cfg("fp8_e4m3")) == 1
    assert engine._kv_elem_bytes(cfg("something_new")) is None


# loading without vLLM ------------------------------------------------------------------------

def test_load_without_vllm_names_the_extra(random_7b, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    eng = engine.VLLMEngine(FP16, options(random_7b))
    with pytest.raises(QwenoptError, match=r"needs vllm: install it with pip install 'qwenopt\[vllm\]'"):
        eng.load()
    eng.close()  # nothing loaded: a no-op
    assert eng.memory_stats() == {}


def test_generate_before_load(random_7b):
    with pytest.raises(RuntimeError, match="before load"):
        engine.VLLMEngine(FP16, options(random_7b)).generate([[1, 2]], 4)
