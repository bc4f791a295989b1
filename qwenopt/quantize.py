"""Int4 checkpoints: random GPTQ ones written straight from a config, real ones quantized by gptqmodel.

A random GPTQ checkpoint is what vLLM's dummy weights are for int4: the exact tensors a GPTQ
model holds (packed int4 weights, fp16 scales, zeros, group indices) filled with seeded random
values, so the real gptqmodel kernels run at real shapes with no calibration. Decode speed and
memory do not depend on the values when output lengths are forced.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import QwenoptError
from .models import ModelSource, atomic_folder

BITS = 4
GROUP_SIZE = 128
PACK = 32 // BITS  # int4 values per int32
# The linear layers of a Qwen2 decoder block that GPTQ quantizes; embeddings, norms and lm_head stay fp16.
QUANTIZED_LINEARS = {
    "self_attn.q_proj": ("hidden_size", "q_out"),
    "self_attn.k_proj": ("hidden_size", "kv_out"),
    "self_attn.v_proj": ("hidden_size", "kv_out"),
    "self_attn.o_proj": ("q_out", "hidden_size"),
    "mlp.gate_proj": ("hidden_size", "intermediate_size"),
    "mlp.up_proj": ("hidden_size", "intermediate_size"),
    "mlp.down_proj": ("intermediate_size", "hidden_size"),
}
BIASED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # Qwen2 keeps biases on q, k, v
# A symmetric 4-bit GPTQ (v1 format) stores every zero point as 8 - 1 = 7: 0x77777777 per int32.
SYMMETRIC_ZEROS = 0x77777777
# Scale that gives dequantized weights a spread like the config's initializer (uniform ints -8..7 have std ~4.6).
RANDOM_SCALE = 0.02 / 4.6


def gptq_quantization_config() -> dict:
    """The quantization_config of Qwen's own GPTQ-Int4 release: 4 bit, group 128, symmetric, no act-order."""
    return {
        "quant_method": "gptq", "bits": BITS, "group_size": GROUP_SIZE, "desc_act": False, "sym": True,
        "format": "gptq", "checkpoint_format": "gptq", "damp_percent": 0.01, "true_sequential": True,
    }


def _dims(config: dict) -> dict[str, int]:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "q_out": config["num_attention_heads"] * head_dim,
        "kv_out": config["num_key_value_heads"] * head_dim,
    }


def check_shapes(config: dict) -> None:
    """GPTQ g128 packing needs every input width divisible by 128 and every output width by 8."""
    for name, (fan_in, fan_out) in QUANTIZED_LINEARS.items():
        k, n = _dims(config)[fan_in], _dims(config)[fan_out]
        if k % GROUP_SIZE or n % PACK:
            raise QwenoptError(f"{name} is {k}x{n}: GPTQ int4 g{GROUP_SIZE} needs inputs divisible by "
                               f"{GROUP_SIZE} and outputs by {PACK}")


def random_gptq_tensors(config: dict, seed: int, dtype_name: str = "bfloat16"):
    """Yield (name, tensor) for every tensor of a GPTQ checkpoint of this Qwen2 config.

    Names, shapes and dtypes are those gptqmodel writes when it quantizes the model: packed int32
    weights and zeros, fp16 scales, int32 group indices; unquantized tensors keep the model dtype.
    """
    import torch

    check_shapes(config)
    gen = torch.Generator().manual_seed(seed)
    dims = _dims(config)
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    dtype = getattr(torch, dtype_name)
    std = float(config.get("initializer_range", 0.02))

    def normal(*shape):
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    def packed(*shape):  # uniformly random int4 nibbles, eight to an int32
        return torch.randint(-(2**31), 2**31, shape, generator=gen, dtype=torch.int64).to(torch.int32)

    yield "model.embed_tokens.weight", normal(vocab, hidden)
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        yield f"{prefix}.input_layernorm.weight", torch.ones(hidden, dtype=dtype)
        yield f"{prefix}.post_attention_layernorm.weight", torch.ones(hidden, dtype=dtype)
        for name, (fan_in, fan_out) in QUANTIZED_LINEARS.items():
            k, n = dims[fan_in], dims[fan_out]
            yield f"{prefix}.{name}.qweight", packed(k // PACK, n)
            yield f"{prefix}.{name}.qzeros", torch.full((k // GROUP_SIZE, n // PACK), SYMMETRIC_ZEROS, dtype=torch.int32)
            yield f"{prefix}.{name}.scales", torch.full((k // GROUP_SIZE, n), RANDOM_SCALE, dtype=torch.float16)
            yield f"{prefix}.{name}.g_idx", torch.arange(k, dtype=torch.int32) // GROUP_SIZE
            if name in BIASED:
                yield f"{prefix}.{name}.bias", torch.zeros(n, dtype=torch.float16)
    yield "model.norm.weight", torch.ones(hidden, dtype=dtype)
    if not config.get("tie_word_embeddings", False):
        yield "lm_head.weight", normal(vocab, hidden)


def write_random_gptq_checkpoint(source: ModelSource, folder: Path, seed: int, dtype_name: str = "bfloat16",
                                 shard_gib: float = 2.0) -> Path:
    """Write config.json + sharded safetensors into folder, atomically (a temp sibling, then a rename)."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for name, tensor in random_gptq_tensors(source.config, seed, dtype_name):
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_gib * 2**30:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    config = {k: v for k, v in source.config.items() if k != "dtype"}
    config.update(torch_dtype=dtype_name, quantization_config=gptq_quantization_config())
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return folder


METHODS = ("gptq", "awq")
CALIBRATION_LEN = 256  # tokens per calibration sample


def import_gptqmodel():
    """gptqmodel, imported lazily; its CPU thread pool needs two workers even on a two-core machine."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 1)))
    try:
        import gptqmodel
    except ImportError:
        raise QwenoptError("GPTQ/AWQ needs gptqmodel and optimum: pip install 'qwenopt[gptq]'") from None
    return gptqmodel


def calibration_samples(ids: list[int], length: int = CALIBRATION_LEN) -> list[dict]:
    """Cut token ids into full windows of `length` (the tail that does not fill one is dropped)."""
    if length < 16:
        raise QwenoptError(f"--calibration-len must be at least 16, got {length}")
    windows = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)]
    if not windows:
        raise QwenoptError(f"the calibration text has {len(ids)} tokens, fewer than one window of {length}")
    return [{"input_ids": w, "attention_mask": [1] * length} for w in windows]


def check_request(method: str, out: Path) -> None:
    """Refuse an unknown method, or an --out that holds anything, before any model is loaded."""
    if method not in METHODS:
        raise QwenoptError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QwenoptError(f"--out {str(out)!r} already exists and is not empty; name a new folder")


def quantize(location: str, method: str, out: Path, samples: list[dict], device: str) -> Path:
    """Quantize a bf16/fp16 checkpoint to int4 g128 with gptqmodel; the result lands in out atomically."""
    check_request(method, out)
    gptqmodel = import_gptqmodel()
    config_class = gptqmodel.GPTQConfig if method == "gptq" else gptqmodel.AWQConfig
    model = gptqmodel.GPTQModel.load(str(location), config_class(bits=BITS, group_size=GROUP_SIZE), device=device)
    model.quantize(samples, batch_size=1)
    with atomic_folder(out) as tmp:  # replaces at most the empty folder checked above
        model.save(str(tmp))
    return out
