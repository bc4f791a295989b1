"""The physical limit of a decode step, from the model config and the device's measured ceilings.

Per step the GPU reads every weight it multiplies (all linear layers and the lm_head, at their stored
width) plus the KV cache of every sequence, and does ~2 FLOPs per linear weight per sequence plus
attention. The step cannot be faster than the larger of bytes / bandwidth and FLOPs / matmul rate.
"""
from __future__ import annotations

import math

# Bytes per linear weight as stored, scales and zero points included.
#   int4 g128 (AWQ/GPTQ): 0.5 B packed + fp16 scale / 128 + 4-bit zero / 128
#   NF4 double quant: 0.5 B + 8-bit absmax / 64 + fp32 second-level scale / (64 * 256)
_INT4_G128 = 0.5 + 2 / 128 + 0.5 / 128
_NF4_DQ = 0.5 + 1 / 64 + 4 / (64 * 256)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def layer_dims(config: dict) -> dict:
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {
        "hidden": hidden,
        "layers": config["num_hidden_layers"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": head_dim,
        "intermediate": config["intermediate_size"],
        "vocab": config["vocab_size"],
    }


def linear_params(config: dict) -> tuple[int, int]:
    """(weights of the decoder's linear layers, weights of the lm_head)."""
    d = layer_dims(config)
    q = d["hidden"] * d["heads"] * d["head_dim"]
    kv = 2 * d["hidden"] * d["kv_heads"] * d["head_dim"]
    o = d["heads"] * d["head_dim"] * d["hidden"]
    mlp = 3 * d["hidden"] * d["intermediate"]
    return d["layers"] * (q + kv + o + mlp), d["vocab"] * d["hidden"]


def weight_bytes_per_step(config: dict, quant: str, dtype: str) -> float:
    """Bytes of weights one decode step reads; quantized regimes keep the lm_head in half precision."""
    body, head = linear_params(config)
    half = DTYPE_BYTES[dtype]
    per_weight = {"none": half, "awq": _INT4_G128, "gptq": _INT4_G128, "nf4": _NF4_DQ}[quant]
    return body * per_weight + head * half


def kv_bytes_per_token(config: dict, kv_dtype: str) -> int:
    d = layer_dims(config)
    return 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * DTYPE_BYTES[kv_dtype]


def roofline(config: dict, quant: str, dtype: str, batch: int, input_len: int, output_len: int,
             mem_bw_gbs: float, matmul_tflops: float, gpus: int = 1) -> float:
    """Tokens/s at the physical limit for a cell's decode phase (mean context over the decode), NaN without probes."""
    if not (mem_bw_gbs > 0 and matmul_tflops > 0):
        return math.nan
    d = layer_dims(config)
    context = input_len + output_len / 2
    step_bytes = weight_bytes_per_step(config, quant, dtype) + batch * context * kv_bytes_per_token(config, dtype)
    body, head = linear_params(config)
    attention_flops = 4 * d["layers"] * d["heads"] * d["head_dim"] * context
    step_flops = batch * (2 * (body + head) + attention_flops)
    floor_s = max(step_bytes / (mem_bw_gbs * 1e9 * gpus), step_flops / (matmul_tflops * 1e12 * gpus))
    return batch / floor_s
