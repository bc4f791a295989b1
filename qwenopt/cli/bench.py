"""Offline measurement: sweeps, the batch-size search, perplexity and quantization."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import MEASURE, command, fail, parse_engine_args


@command(MEASURE)
def bench(
    regime: Optional[str] = typer.Option(None, help="Serving regime (see `qwenopt regimes`).", show_default="hf-fp16"),
    model: Optional[str] = typer.Option(
        None, help="A bundled name (qwen2.5-7b, qwen2-tiny), a Hugging Face id, or a local folder.",
        show_default="qwen2-tiny"),
    weights: Optional[str] = typer.Option(
        None, help="real or random. Random weights benchmark the architecture with no download.",
        show_default="random for qwen2-tiny, real otherwise"),
    batch: Optional[str] = typer.Option(None, help="Batch sizes, comma-separated.", show_default="1,8"),
    input_len: Optional[str] = typer.Option(None, help="Prompt lengths in tokens, comma-separated.", show_default="128,512"),
    output_len: Optional[str] = typer.Option(None, help="Generated tokens per request (forced), comma-separated.", show_default="64"),
    repeats: Optional[int] = typer.Option(None, help="Timed iterations per cell.", show_default="5"),
    warmup: Optional[int] = typer.Option(None, help="Untimed warm-up iterations per cell.", show_default="1"),
    device: Optional[str] = typer.Option(None, help="auto, cuda or cpu.", show_default="auto"),
    dtype: Optional[str] = typer.Option(None, help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", show_default="auto"),
    seed: Optional[int] = typer.Option(None, help="Seed for prompts and random weights.", show_default="0"),
    out: Optional[str] = typer.Option(None, help="Result CSV; rows are appended. A .samples.json sidecar keeps raw samples.",
                                      show_default="results/REGIME_MODEL.csv"),
    quant: Optional[str] = typer.Option(None, help="Int4 format for vllm-int4: awq or gptq.", show_default="the regime's"),
    tp: Optional[int] = typer.Option(None, help="Tensor-parallel GPUs (vLLM regimes).", show_default="1"),
    pp: Optional[int] = typer.Option(None, help="Pipeline-parallel stages (vLLM regimes).", show_default="1"),
    max_model_len: Optional[int] = typer.Option(None, help="Longest sequence the engine admits (vLLM); above 32768 adds YaRN.",
                                                show_default="the model's"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="Share of GPU memory vLLM may take.", show_default="0.9"),
    max_num_seqs: Optional[int] = typer.Option(None, help="vLLM's cap on sequences in flight.", show_default="vLLM's"),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager",
                                                 help="vLLM without CUDA graphs (faster start, slower decode).",
                                                 show_default="no"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="transformers: static KV cache + torch.compile with CUDA graphs, "
                                                "removing the per-token host overhead of generate.", show_default="no"),
    kernel: Optional[str] = typer.Option(None, help="hf-gptq: the gptqmodel kernel (auto, marlin, machete, exllama_v2, "
                                                    "triton, torch, torch_fused, torch_aten, bitblas). auto picks "
                                                    "Machete on Hopper, which downloads CUTLASS on first use.",
                                         show_default="auto"),
    engine_args: Optional[str] = typer.Option(None, help="Extra engine arguments as a JSON object, passed through as they are."),
    config: Optional[Path] = typer.Option(None, help="A TOML or YAML sweep file with these options; flags override it."),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--no-isolate",
                                           help="Run the engine in a child process (a crash or hang becomes failed rows).",
                                           show_default="on for vLLM"),
    timeout: float = typer.Option(3600.0, help="With --isolate: seconds before a hung engine is killed."),
):
    """Run a batch x input-length x output-length sweep on one regime; one CSV row per cell."""
    from ..bench import BenchOptions, plan_sweep
    from ..config import load_config
    from ..console import console, summary_table

    given = {k: v for k, v in dict(
        regime=regime, model=model, weights=weights, batch=batch, input_len=input_len, output_len=output_len,
        repeats=repeats, warmup=warmup, device=device, dtype=dtype, seed=seed, out=out, quant=quant, tp=tp, pp=pp,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager, compile=compile, kernel=kernel,
    ).items() if v is not None}
    try:
        options = load_config(config, BenchOptions.field_names()) if config else {}
        options.update(given)
        if engine_args:
            options["engine_args"] = {**options.get("engine_args", {}), **parse_engine_args(engine_args)}
        plan = plan_sweep(BenchOptions(**options))
        console.print(
            f"[bold]{plan.spec.name}[/bold] on {plan.source.name} ({plan.source.weights} weights), {plan.device} {plan.dtype}, "
            f"{len(plan.cells)} cells x ({plan.options.warmup} warm-up + {plan.options.repeats} timed) -> {plan.out}",
            highlight=False,
        )
        rows = _run(plan, isolate, timeout)
    except QwenoptError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: every finished cell is kept in the result file", 130)
    console.print(summary_table(rows))
    bad = [r for r in rows if r["status"] != "ok"]
    console.print(f"{len(rows) - len(bad)}/{len(rows)} cells ok; wrote {plan.out}", highlight=False)
    if bad:
        raise typer.Exit(1)


def _run(plan, isolate: Optional[bool], timeout: float) -> list[dict]:
    """Run a plan in this process with a progress bar, or in a child process (vLLM's default)."""
    from ..bench import execute, execute_isolated
    from ..console import sweep_progress

    if isolate if isolate is not None else plan.spec.engine == "vllm":
        return execute_isolated(plan, timeout)
    with sweep_progress(plan) as on_iteration:
        return execute(plan, on_iteration)


@command(MEASURE)
def tune(
    slo_p99: float = typer.Option(..., help="P99 latency target in seconds for one batch of requests."),
    regime: str = typer.Option("hf-fp16", help="Serving regime (see `qwenopt regimes`)."),
    model: str = typer.Option("qwen2-tiny", help="A bundled name, a Hugging Face id, or a local folder."),
    weights: Optional[str] = typer.Option(None, help="real or random.", show_default="random for qwen2-tiny, real otherwise"),
    input_len: int = typer.Option(512, help="Prompt tokens per request."),
    output_len: int = typer.Option(128, help="Generated tokens per request (forced)."),
    max_batch: int = typer.Option(256, help="Largest batch the search may try."),
    repeats: int = typer.Option(3, help="Timed iterations per probed batch."),
    warmup: int = typer.Option(1, help="Untimed warm-up iterations per probed batch."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    quant: Optional[str] = typer.Option(None, help="vllm-int4: awq or gptq.", show_default="the regime's"),
    tp: int = typer.Option(1, help="Tensor-parallel GPUs (vLLM regimes)."),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="transformers: static KV cache + torch.compile."),
    kernel: str = typer.Option("auto", help="hf-gptq: the gptqmodel kernel."),
    engine_args: Optional[str] = typer.Option(None, help="Extra engine arguments as a JSON object."),
    out: Optional[str] = typer.Option(None, help="Result CSV for every probed batch.",
                                      show_default="results/tune_REGIME_MODEL.csv"),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--no-isolate", help="Run the engine in a child process.",
                                           show_default="on for vLLM"),
    timeout: float = typer.Option(3600.0, help="With --isolate: seconds before a hung engine is killed."),
):
    """Find the batch size with the most throughput whose P99 latency meets --slo-p99: doubling, then bisection,
    each probe a real bench cell written to the result file."""
    from ..bench import BenchOptions, plan_tune
    from ..console import console, summary_table
    from ..tune import best_row

    try:
        options = BenchOptions(
            regime=regime, model=model, weights=weights, input_len=str(input_len), output_len=str(output_len),
            repeats=repeats, warmup=warmup, device=device, dtype=dtype, out=out, quant=quant, tp=tp, compile=compile,
            kernel=kernel, engine_args=parse_engine_args(engine_args))
        plan = plan_tune(options, slo_p99, max_batch)
        console.print(f"[bold]tune {plan.spec.name}[/bold] on {plan.source.name} ({plan.source.weights} weights), "
                      f"input {input_len}, output {output_len}, P99 <= {slo_p99:g} s, batch 1..{max_batch} -> {plan.out}",
                      highlight=False)
        rows = _run(plan, isolate, timeout)
    except QwenoptError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: every probed batch is kept in the result file", 130)
    console.print(summary_table(rows))
    best = best_row(rows, slo_p99)
    if best is None:
        fail(f"no batch meets P99 <= {slo_p99:g} s (batch 1: {rows[0]['status']}, "
             f"P99 {rows[0].get('latency_p99_s') or float('nan'):.3f} s); wrote {plan.out}", 1)
    console.print(f"best: batch {best['batch_size']}, {best['output_tok_s']:,.1f} output tok/s, "
                  f"P99 {best['latency_p99_s']:.3f} s <= {slo_p99:g} s ({len(rows)} batches probed); wrote {plan.out}",
                  highlight=False)


@command(MEASURE)
def quality(
    regime: str = typer.Option("hf-fp16", help="A transformers regime (hf-*), loaded exactly as bench loads it."),
    model: str = typer.Option("qwen2-tiny", help="A bundled name, a Hugging Face id, or a local folder."),
    weights: Optional[str] = typer.Option(None, help="real or random (random scores bytes: a code-path check only).",
                                          show_default="random for qwen2-tiny, real otherwise"),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    seed: int = typer.Option(0, help="Seed for random weights."),
    window: int = typer.Option(512, help="Tokens scored per forward pass."),
    kernel: str = typer.Option("auto", help="hf-gptq: the gptqmodel kernel, as in bench."),
    out: str = typer.Option("results/quality.csv", help="CSV the perplexity row is appended to."),
):
    """Perplexity on a bundled public-domain text, to put the accuracy cost of NF4 and friends next to their speed."""
    from ..bench import BenchOptions, plan_sweep
    from ..console import console
    from ..quality import QUALITY_COLUMNS, check_request, measure
    from ..results import append_csv

    try:
        check_request(regime, window)
        plan = plan_sweep(BenchOptions(regime=regime, model=model, weights=weights, device=device, dtype=dtype,
                                       seed=seed, kernel=kernel, batch="1", input_len="1", output_len="1"))
        row = measure(plan, window)
        append_csv(out, row, QUALITY_COLUMNS)
    except QwenoptError as exc:
        fail(str(exc))
    note = " (random weights, byte tokens: a code-path check, not an accuracy figure)" if row["weights"] == "random" else ""
    console.print(f"{row['regime']} {row['model']}: perplexity {row['perplexity']:.3f} over {row['tokens']} tokens"
                  f"{note}; wrote {out}", highlight=False)


@command(MEASURE, "quantize")
def quantize_command(
    model: str = typer.Option(..., help="A bf16/fp16 model: a Hugging Face id, a local folder, or a bundled name."),
    out: Path = typer.Option(..., help="New folder for the int4 checkpoint (written whole, or not at all)."),
    method: str = typer.Option("gptq", help="gptq or awq (4 bit, group size 128)."),
    weights: Optional[str] = typer.Option(None, help="real or random (random: quantize a seeded random checkpoint, "
                                                     "to try the pipeline without a download).",
                                          show_default="random for qwen2-tiny, real otherwise"),
    calibration: Optional[Path] = typer.Option(None, help="A UTF-8 text file to calibrate on.",
                                               show_default="the bundled Pride and Prejudice, chapter 1"),
    calibration_len: int = typer.Option(256, help="Tokens per calibration sample."),
    device: str = typer.Option("auto", help="auto, cuda or cpu (gptqmodel quantizes AWQ on CUDA only)."),
    seed: int = typer.Option(0, help="Seed for random weights."),
):
    """Quantize a model to GPTQ or AWQ int4 with gptqmodel, calibrated on a small public-domain text."""
    from ..console import console
    from ..engines.hf import random_checkpoint
    from ..models import resolve_model
    from ..quality import bundled_text, tokenize
    from ..bench import DEVICES
    from ..quantize import calibration_samples, check_request, import_gptqmodel, quantize
    from ..regimes import gpu_count

    try:
        check_request(method, out)  # before any checkpoint is written or model loaded
        import_gptqmodel()
        source = resolve_model(model, weights)
        if device not in DEVICES:
            raise QwenoptError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
        device = device if device != "auto" else ("cuda" if gpu_count() else "cpu")
        try:
            text = calibration.read_text(encoding="utf-8") if calibration else bundled_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise QwenoptError(f"cannot read --calibration {str(calibration)!r}: {exc}") from None
        ids, tokenizer = tokenize(text, source)
        samples = calibration_samples(ids, calibration_len)
        location = source.location or random_checkpoint(source, "bf16", seed)
        console.print(f"quantizing {source.name} ({source.weights} weights) to {method} int4 g128 on {device}, "
                      f"{len(samples)} calibration samples of {calibration_len} tokens ({tokenizer})", highlight=False)
        quantize(location, method, out, samples, device)
    except QwenoptError as exc:
        fail(str(exc))
    regimes = "--regime hf-gptq, or --regime vllm-int4 --quant gptq" if method == "gptq" else "--regime vllm-int4 --quant awq"
    console.print(f"wrote {out}; benchmark it with qwenopt bench --model {out} {regimes}", highlight=False)
