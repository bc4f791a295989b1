"""Offline measurement: sweeps, the batch-size search, perplexity and quantization.

Shared options come from options.py; errors and Ctrl-C go through the `@command` wrapper (app.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options as o
from .app import MEASURE, command, fail, parse_engine_args


@command(MEASURE)
def bench(
    regime: o.Regime = None,
    model: o.Model = None,
    weights: o.Weights = None,
    batch: Optional[str] = typer.Option(None, help="Batch sizes, comma-separated.", show_default="1,8"),
    input_len: Optional[str] = typer.Option(None, help="Prompt lengths in tokens, comma-separated.", show_default="128,512"),
    output_len: Optional[str] = typer.Option(None, help="Generated tokens per request (forced), comma-separated.", show_default="64"),
    repeats: o.Repeats = None,
    warmup: o.Warmup = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    seed: o.Seed = None,
    out: o.out_option("Result CSV.", "results/REGIME_MODEL.csv") = None,
    quant: o.Quant = None,
    tp: o.TP = None,
    pp: o.PP = None,
    max_model_len: Optional[int] = typer.Option(None, help="Longest sequence the engine admits (vLLM, or transformers "
                                                "with random weights); above 32768 adds YaRN.",
                                                show_default="the model's"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="Share of GPU memory vLLM may take.", show_default="0.9"),
    max_num_seqs: Optional[int] = typer.Option(None, help="vLLM's cap on sequences in flight.", show_default="vLLM's"),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager",
                                                 help="vLLM without CUDA graphs (faster start, slower decode).",
                                                 show_default="no"),
    compile: o.Compile = None,
    kernel: o.Kernel = None,
    attn: o.Attn = None,
    engine_args: o.EngineArgs = None,
    config: o.Config = None,
    isolate: o.Isolate = None,
    timeout: o.Timeout = 3600.0,
):
    """Run a batch x input-length x output-length sweep on one regime; one CSV row per cell."""
    from ..bench import BenchOptions, plan_sweep
    from ..config import load_config
    from ..console import console, stdout, summary_table
    from ..results import check_output

    if out is not None:
        check_output(out, inputs=[config])
    options = load_config(config, BenchOptions.field_names()) if config else {}
    options.update(o.given(
        regime=regime, model=model, weights=weights, batch=batch, input_len=input_len, output_len=output_len,
        repeats=repeats, warmup=warmup, device=device, dtype=dtype, seed=seed, out=out, quant=quant, tp=tp, pp=pp,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager, compile=compile, kernel=kernel, attn=attn))
    if engine_args:
        options["engine_args"] = {**options.get("engine_args", {}), **parse_engine_args(engine_args)}
    plan = plan_sweep(BenchOptions(**options))
    console.print(
        f"[bold]{plan.spec.name}[/bold] on {plan.source.name} ({plan.source.weights} weights), {plan.device} {plan.dtype}, "
        f"{len(plan.cells)} cells x ({plan.options.warmup} warm-up + {plan.options.repeats} timed) -> {plan.out}",
        highlight=False,
    )
    rows = _run(plan, isolate, timeout)
    stdout.print(summary_table(rows))
    bad = [r for r in rows if r["status"] != "ok"]
    stdout.print(f"{len(rows) - len(bad)}/{len(rows)} cells ok; wrote {plan.out}", highlight=False)
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


def tune_batch(slo_p99: float, *, regime, model, weights, input_len: int, output_len: int, max_batch: int,
               repeats: int, warmup, device, dtype, seed, quant, tp, compile, kernel, attn, engine_args, out, isolate,
               timeout: float):
    """Find the batch size with the most throughput whose P99 latency meets --slo-p99: doubling, then bisection,
    each probe a real bench cell written to the result file."""
    from ..bench import BenchOptions, plan_tune
    from ..console import console, stdout, summary_table
    from ..results import check_output
    from ..tune import best_row

    if out is not None:
        check_output(out)
    options = BenchOptions(**o.given(
        regime=regime, model=model, weights=weights, input_len=str(input_len), output_len=str(output_len),
        repeats=repeats, warmup=warmup, device=device, dtype=dtype, seed=seed, out=out, quant=quant, tp=tp,
        compile=compile, kernel=kernel, attn=attn), engine_args=parse_engine_args(engine_args))
    plan = plan_tune(options, slo_p99, max_batch)
    console.print(f"[bold]tune {plan.spec.name}[/bold] on {plan.source.name} ({plan.source.weights} weights), "
                  f"input {input_len}, output {output_len}, P99 <= {slo_p99:g} s, batch 1..{max_batch} -> {plan.out}",
                  highlight=False)
    rows = _run(plan, isolate, timeout)
    stdout.print(summary_table(rows))
    best = best_row(rows, slo_p99)
    if best is None:
        fail(f"no batch meets P99 <= {slo_p99:g} s (batch 1: {rows[0]['status']}, "
             f"P99 {rows[0].get('latency_p99_s') or float('nan'):.3f} s); wrote {plan.out}", 1)
    stdout.print(f"best: batch {best['batch_size']}, {best['output_tok_s']:,.1f} output tok/s, "
                 f"P99 {best['latency_p99_s']:.3f} s <= {slo_p99:g} s ({len(rows)} batches probed); wrote {plan.out}",
                 highlight=False)


@command(MEASURE)
def quality(
    regime: o.Regime = None,
    model: o.Model = None,
    weights: o.Weights = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    seed: o.Seed = None,
    window: int = typer.Option(512, help="Tokens scored per forward pass."),
    kernel: o.Kernel = None,
    out: o.out_option("CSV the perplexity row is appended to.", "results/quality.csv") = None,
):
    """Perplexity on a bundled public-domain text, to put the accuracy cost of NF4 and friends next to their speed."""
    from ..bench import BenchOptions, plan_sweep
    from ..console import stdout
    from ..quality import QUALITY_COLUMNS, check_request, measure
    from ..results import append_csv, check_output

    out = str(check_output(out or "results/quality.csv"))
    options = BenchOptions(**o.given(regime=regime, model=model, weights=weights, device=device, dtype=dtype,
                                     seed=seed, kernel=kernel), batch="1", input_len="1", output_len="1")
    check_request(options.regime, window)
    row = measure(plan_sweep(options), window)
    append_csv(out, row, QUALITY_COLUMNS)
    note = " (random weights, byte tokens: a code-path check, not an accuracy figure)" if row["weights"] == "random" else ""
    stdout.print(f"{row['regime']} {row['model']}: perplexity {row['perplexity']:.3f} over {row['tokens']} tokens"
                 f"{note}; wrote {out}", highlight=False)


@command(MEASURE, "quantize")
def quantize_command(
    model: str = typer.Option(..., help="A bf16/fp16 model: a Hugging Face id, a local folder, or a bundled name."),
    out: Path = typer.Option(..., help="New folder for the int4 checkpoint (written whole, or not at all)."),
    method: str = typer.Option("gptq", help="gptq or awq (4 bit, group size 128)."),
    weights: o.Weights = None,
    calibration: Optional[Path] = typer.Option(None, help="A UTF-8 text file to calibrate on.",
                                               show_default="the bundled Pride and Prejudice, chapter 1"),
    calibration_len: int = typer.Option(256, help="Tokens per calibration sample."),
    device: o.Device = None,
    seed: o.Seed = None,
):
    """Quantize a model to GPTQ or AWQ int4 with gptqmodel, calibrated on a small public-domain text."""
    from ..bench import DEVICES
    from ..console import console, stdout
    from ..engines.hf import random_checkpoint
    from ..errors import QwenoptError
    from ..models import resolve_model
    from ..quality import bundled_text, tokenize
    from ..quantize import calibration_samples, check_request, import_gptqmodel, quantize
    from ..regimes import gpu_count

    device = device or "auto"
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
    location = source.location or random_checkpoint(source, "bf16", seed or 0)
    console.print(f"quantizing {source.name} ({source.weights} weights) to {method} int4 g128 on {device}, "
                  f"{len(samples)} calibration samples of {calibration_len} tokens ({tokenizer})", highlight=False)
    quantize(location, method, out, samples, device)
    regimes = "--regime hf-gptq, or --regime vllm-int4 --quant gptq" if method == "gptq" else "--regime vllm-int4 --quant awq"
    stdout.print(f"wrote {out}; benchmark it with qwenopt bench --model {out} {regimes}", highlight=False)
