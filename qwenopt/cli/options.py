"""Every option more than one command takes, declared once (help, default shown, flag names).

Each is an `Annotated` type whose default is None: the command passes what was given to `given()`, and
`BenchOptions` (qwenopt/bench.py) fills the rest, so a default lives in one place and a config file can
tell "not given" from "given as the default".
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Regime = Annotated[Optional[str], typer.Option(help="Serving regime (see `qwenopt regimes`).", show_default="hf-fp16")]
Model = Annotated[Optional[str], typer.Option(
    help="A bundled name (qwen2.5-7b, qwen2-tiny), a Hugging Face id, or a local folder.", show_default="qwen2-tiny")]
Weights = Annotated[Optional[str], typer.Option(
    help="real or random. Random weights run the architecture with no download (and score bytes in quality: "
         "a code-path check only).", show_default="random for qwen2-tiny, real otherwise")]
Device = Annotated[Optional[str], typer.Option(help="auto, cuda or cpu.", show_default="auto")]
Dtype = Annotated[Optional[str], typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.",
                                              show_default="auto")]
Seed = Annotated[Optional[int], typer.Option(help="Seed for prompts and random weights.", show_default="0")]
Quant = Annotated[Optional[str], typer.Option(help="Int4 format for vllm-int4: awq or gptq.", show_default="the regime's")]
TP = Annotated[Optional[int], typer.Option(help="Tensor-parallel GPUs (vLLM regimes).", show_default="1")]
PP = Annotated[Optional[int], typer.Option(help="Pipeline-parallel stages (vLLM regimes).", show_default="1")]
Repeats = Annotated[Optional[int], typer.Option(help="Timed iterations per cell.", show_default="5")]
Warmup = Annotated[Optional[int], typer.Option(help="Untimed warm-up iterations per cell.", show_default="1")]
Compile = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="transformers: static KV cache + torch.compile with CUDA graphs, removing the "
                                   "per-token host overhead of generate.", show_default="no")]
Kernel = Annotated[Optional[str], typer.Option(
    help="hf-gptq: the gptqmodel kernel (auto, marlin, machete, exllama_v2, triton, torch, torch_fused, torch_aten, "
         "bitblas). auto picks Machete on Hopper, which downloads CUTLASS on first use.", show_default="auto")]
Attn = Annotated[Optional[str], typer.Option(
    help="transformers regimes: the attention kernel: sdpa (PyTorch picks), sdpa-flash, sdpa-efficient (SDPA pinned "
         "to one backend), flash_attention_2 (flash-attn 2.x), flash_attention_4 (flash-attn-4, Hopper/Blackwell). "
         "The row's attn column names the kernel that ran.", show_default="the regime's")]
EngineArgs = Annotated[Optional[str], typer.Option(
    help="Extra engine arguments as a JSON object, passed through as they are.")]
Isolate = Annotated[Optional[bool], typer.Option(
    "--isolate/--no-isolate", help="Run the engine in a child process (a crash or hang becomes failed rows).",
    show_default="on for vLLM")]
Timeout = Annotated[float, typer.Option(help="With --isolate: seconds before a hung engine is killed.")]
GPU_HOUR_USD = 2.5  # the price matrix, report and tune use unless given one
GpuHourUsd = Annotated[float, typer.Option(help="Price of one GPU-hour, for $ per 1M output and total tokens.")]
Config = Annotated[Optional[Path], typer.Option(help="A TOML or YAML sweep file with these options; flags override it.")]


def out_option(what: str, default: str | None):
    """The --out of a command that appends rows to a CSV: checked before any work (results.check_output)."""
    return Annotated[Optional[str], typer.Option(
        help=f"{what} Rows are appended, one locked line each; a .samples.jsonl sidecar keeps raw samples.",
        show_default=default or False)]


def given(**values) -> dict:
    """The options the user gave (not None), for BenchOptions to fill the rest with its defaults."""
    return {k: v for k, v in values.items() if v is not None}
