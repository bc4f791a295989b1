"""The qwenopt command line: each command a thin function over the modules.

Heavy imports (torch, transformers, vllm) happen inside command bodies so that `qwenopt --help`
stays instant and never needs a GPU stack.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from .errors import QwenoptError

app = typer.Typer(
    help="Measure what it costs to serve Qwen2.5-7B under each regime, and which is cheapest at your latency target.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)

MEASURE = "Measure"
REPORT = "Report"
INSPECT = "Inspect"


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    from .console import console

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _engine_args(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QwenoptError(f"--engine-args must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise QwenoptError("--engine-args must be a JSON object, e.g. '{\"block_size\": 32}'")
    return value


@app.command(rich_help_panel=MEASURE)
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
    from .bench import BenchOptions, plan_sweep
    from .config import load_config
    from .console import console, summary_table

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
            options["engine_args"] = {**options.get("engine_args", {}), **_engine_args(engine_args)}
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
    from .bench import execute, execute_isolated
    from .console import sweep_progress

    if isolate if isolate is not None else plan.spec.engine == "vllm":
        return execute_isolated(plan, timeout)
    with sweep_progress(plan) as on_iteration:
        return execute(plan, on_iteration)


@app.command(rich_help_panel=MEASURE)
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
    from .bench import BenchOptions, plan_tune
    from .console import console, summary_table
    from .tune import best_row

    try:
        options = BenchOptions(
            regime=regime, model=model, weights=weights, input_len=str(input_len), output_len=str(output_len),
            repeats=repeats, warmup=warmup, device=device, dtype=dtype, out=out, quant=quant, tp=tp, compile=compile,
            kernel=kernel, engine_args=_engine_args(engine_args))
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


@app.command(rich_help_panel=MEASURE)
def load(
    endpoint: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    launch: Optional[str] = typer.Option(None, help="Start `vllm serve` for this vllm regime instead, load it, stop it."),
    rate: float = typer.Option(4.0, help="Mean request arrivals per second (Poisson, open loop)."),
    duration: float = typer.Option(60.0, help="Seconds of arrivals; every sent request is then awaited."),
    input_len: int = typer.Option(128, help="Prompt tokens per request (random token ids)."),
    output_len: int = typer.Option(128, help="Generated tokens per request (forced with min_tokens + ignore_eos)."),
    max_concurrency: Optional[int] = typer.Option(None, help="Cap on requests in flight (default: none, open loop)."),
    timeout: float = typer.Option(30.0, help="Per-request timeout in seconds; late requests count as timeouts."),
    seed: int = typer.Option(0, help="Seed for arrivals and prompts."),
    model: str = typer.Option("qwen2.5-7b", help="The model behind the endpoint (its vocabulary bounds the prompts), "
                                                "or the model to launch."),
    weights: Optional[str] = typer.Option(None, help="With --launch: real or random.", show_default="real"),
    quant: Optional[str] = typer.Option(None, help="With --launch vllm-int4: awq or gptq."),
    tp: int = typer.Option(1, help="With --launch: tensor-parallel GPUs."),
    pp: int = typer.Option(1, help="With --launch: pipeline-parallel stages."),
    max_model_len: Optional[int] = typer.Option(None, help="With --launch: longest sequence the server admits."),
    gpu_memory_utilization: float = typer.Option(0.9, help="With --launch: share of GPU memory vLLM may take."),
    enforce_eager: bool = typer.Option(False, help="With --launch: no CUDA graphs (faster start, slower decode)."),
    port: int = typer.Option(8000, help="With --launch: the port the server listens on (127.0.0.1)."),
    server_log: Optional[Path] = typer.Option(None, help="With --launch: where the server's log goes (default: a temp file)."),
    out: str = typer.Option("results/load.csv", help="CSV the run's row is appended to."),
):
    """Open-loop load against an OpenAI-compatible server (or one it launches): latency and throughput at a rate."""
    import asyncio

    from .console import console, load_progress
    from .models import resolve_model
    from .results import append_csv
    from .serving.loadgen import LOAD_COLUMNS, LoadOptions, arrival_times, load_row, run_load
    from .telemetry import GPUSampler, fingerprint

    try:
        if (endpoint is None) == (launch is None):
            raise QwenoptError("give exactly one of --endpoint URL or --launch REGIME")
        vocab = resolve_model(model, "random").config["vocab_size"]
        options = LoadOptions(endpoint=(endpoint or "").rstrip("/"), rate=rate, duration_s=duration,
                              input_len=input_len, output_len=output_len, vocab_size=vocab, seed=seed,
                              max_concurrency=max_concurrency, timeout_s=timeout)
        with contextlib.ExitStack() as stack:
            launched = None
            if launch:
                from .bench import BenchOptions, plan_sweep

                plan = plan_sweep(BenchOptions(
                    regime=launch, model=model, weights=weights, device="cuda", quant=quant, tp=tp, pp=pp,
                    max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                    enforce_eager=enforce_eager, batch="1", input_len=str(input_len), output_len=str(output_len)))
                if plan.spec.engine != "vllm":
                    raise QwenoptError("--launch starts `vllm serve`: give a vllm regime (vllm-fp16, vllm-int4)")
                from .serving.launcher import launch as launch_server

                console.print(f"starting vllm serve for {plan.spec.name} on port {port} ...", highlight=False)
                server = stack.enter_context(launch_server(plan.spec, plan.engine_options(), port=port,
                                                           log_path=server_log))
                options = dataclasses.replace(options, endpoint=server.base_url, model=server.model)
                launched = {"launched_regime": plan.spec.name, "model": plan.source.name, "weights": plan.source.weights,
                            "quant": plan.quant, "tp": tp, "pp": pp, "startup_s": server.startup_s}
            with load_progress(len(arrival_times(rate, duration, seed))) as on_done, GPUSampler() as sampler:
                result = asyncio.run(run_load(options, on_done))
        row = load_row(options, result, launched, sampler.summary(), fingerprint())
        append_csv(out, row, LOAD_COLUMNS)
    except QwenoptError as exc:
        fail(str(exc))
    console.print(
        f"{row['completed']}/{row['sent']} requests ok ({row['failed']} failed, {row['timeouts']} timed out) in "
        f"{row['elapsed_s']:.1f} s; P50 {row.get('latency_p50_s', float('nan')):.3f} s, "
        f"P99 {row.get('latency_p99_s', float('nan')):.3f} s, TTFT P50 {row.get('ttft_p50_ms', float('nan')):.1f} ms, "
        f"{row.get('output_tok_s', float('nan')):,.1f} output tok/s; wrote {out}", highlight=False)
    if row["failed"] or row["timeouts"] or row["mismatched"]:
        raise typer.Exit(1)


@app.command(rich_help_panel=MEASURE)
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
    from .bench import BenchOptions, plan_sweep
    from .console import console
    from .quality import QUALITY_COLUMNS, check_request, measure
    from .results import append_csv

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


@app.command("quantize", rich_help_panel=MEASURE)
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
    from .console import console
    from .engines.hf import random_checkpoint
    from .models import resolve_model
    from .quality import bundled_text, tokenize
    from .bench import DEVICES
    from .quantize import calibration_samples, check_request, import_gptqmodel, quantize
    from .regimes import gpu_count

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


@app.command(rich_help_panel=REPORT)
def matrix(
    files: list[Path] = typer.Argument(..., help="Result CSVs written by `qwenopt bench`."),
    slo_p99: float = typer.Option(1.0, help="P99 latency target in seconds: each configuration is costed at its "
                                            "highest-throughput cell within it."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for $ per 1M output tokens."),
    baseline: Optional[str] = typer.Option(None, help="Configuration the unit cost is relative to.",
                                           show_default="hf-fp16 if present"),
    input_len: Optional[int] = typer.Option(None, help="Workload to compare at (needed when the files hold several)."),
    output_len: Optional[int] = typer.Option(None, help="Workload to compare at (needed when the files hold several)."),
    out: Optional[Path] = typer.Option(None, help="Also write the matrix to this CSV."),
):
    """The cost-comparison matrix: requests per GPU, latency, utilisation, requests/day, relative unit cost, $ per 1M tokens."""
    import pandas as pd
    from rich.table import Table

    from .console import console
    from .cost import cost_matrix
    from .results import atomic_write_text, read_results

    try:
        frame = pd.concat([read_results(f) for f in files], ignore_index=True)
        table_frame = cost_matrix(frame, slo_p99, gpu_hour_usd, baseline, input_len, output_len)
        if out:
            atomic_write_text(out, table_frame.to_csv(index=False))
    except QwenoptError as exc:
        fail(str(exc))
    first = table_frame.iloc[0]
    table = Table(title=f"cost at P99 <= {slo_p99:g} s, input {first['input_len']} / output {first['output_len']} tokens, "
                        f"${gpu_hour_usd:g} per GPU-hour, unit cost relative to {table_frame.attrs['baseline']}",
                  header_style="bold")
    for name in ("config", "batch", "req/GPU", "mean s", "P99 s", "GPU util %", "req/s", "requests/day",
                 "unit cost", "$ / 1M out tok"):
        table.add_column(name, justify="left" if name == "config" else "right")
    for r in table_frame.to_dict("records"):
        if not r["meets_slo"]:
            table.add_row(r["config"], *["-"] * 8, "[yellow]no cell meets the SLO[/yellow]")
            continue
        table.add_row(r["config"], str(r["batch_size"]), f"{r['requests_per_gpu']:g}", f"{r['latency_mean_s']:.3f}",
                      f"{r['latency_p99_s']:.3f}", f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] == r["gpu_util_pct"] else "-",
                      f"{r['req_s']:.2f}", f"{r['requests_per_day']:,.0f}", f"{r['relative_unit_cost']:.2f}x",
                      f"{r['usd_per_1m_output_tokens']:.2f}")
    console.print(table)


@app.command("compare", rich_help_panel=REPORT)
def compare_command(
    base: Path = typer.Argument(..., help="The baseline result CSV."),
    new: Path = typer.Argument(..., help="The new result CSV, from the same sweep."),
    max_regression: str = typer.Option("5%", help="Largest tolerated worsening of any gated metric, e.g. 5% or 0.05."),
    metric: Optional[list[str]] = typer.Option(None, help="Metric to gate on (repeatable): output_tok_s, req_s, "
                                                          "latency_p50_s, latency_p99_s, ttft_p50_ms, tpot_p50_ms.",
                                               show_default="output_tok_s, latency_p50_s, tpot_p50_ms"),
):
    """CI gate: compare two result files cell by cell; exit 1 on a regression, a missing or a failed cell."""
    from rich.table import Table

    from .compare import DEFAULT_METRICS, compare, failed, parse_threshold
    from .console import console
    from .results import read_results

    try:
        threshold = parse_threshold(max_regression)
        report = compare(read_results(base), read_results(new), threshold, tuple(metric or DEFAULT_METRICS))
    except QwenoptError as exc:
        fail(str(exc))
    table = Table(title=f"{new} against {base} (tolerance {threshold:.1%})", header_style="bold")
    for name in ("regime", "quant", "batch", "in", "out", "metric", "base", "new", "change", "verdict"):
        table.add_column(name, justify="left" if name in ("regime", "quant", "metric", "verdict") else "right")
    for r in report.to_dict("records"):
        verdict = r["verdict"] if r["verdict"] == "ok" else f"[red]{r['verdict']}[/red]"
        table.add_row(r["regime"], r["quant"], r["batch_size"], r["input_len"], r["output_len"], r["metric"],
                      f"{r['base']:.4g}", "-" if r["new"] is None else f"{r['new']:.4g}",
                      "-" if r["change"] is None else f"{r['change']:+.1%}", verdict)
    console.print(table)
    if failed(report):
        console.print(f"[red]regression:[/red] {int((report['verdict'] != 'ok').sum())} of {len(report)} checks failed")
        raise typer.Exit(1)
    console.print(f"no regression beyond {threshold:.1%} in {len(report)} checks")


@app.command(rich_help_panel=REPORT)
def report(
    files: list[Path] = typer.Argument(..., help="Result CSVs written by `qwenopt bench`."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    slo_p99: Optional[float] = typer.Option(None, help="Add the cost matrix at this P99 latency target (seconds)."),
    gpu_hour_usd: float = typer.Option(2.5, help="Price of one GPU-hour, for the cost matrix."),
):
    """A self-contained HTML report: throughput charts per workload, the cost matrix, every cell."""
    import pandas as pd

    from .console import console
    from .report import build_report
    from .results import atomic_write_text, read_results

    try:
        frame = pd.concat([read_results(f) for f in files], ignore_index=True)
        atomic_write_text(output, build_report(frame, [str(f) for f in files], slo_p99, gpu_hour_usd))
    except QwenoptError as exc:
        fail(str(exc))
    console.print(f"wrote {output} ({len(frame)} cells from {len(files)} files)", highlight=False)


@app.command(rich_help_panel=INSPECT)
def regimes():
    """List every regime: engine, weights, attention, the extra it needs, and whether this machine can run it."""
    from rich.table import Table

    from .console import console
    from .regimes import REGIMES, availability, gpu_count

    gpus = gpu_count()
    table = Table(title=f"qwenopt regimes ({gpus} CUDA GPU{'s' if gpus != 1 else ''} visible)", header_style="bold")
    for name in ("regime", "engine", "weights", "attention", "extra", "runs here", "what it is"):
        table.add_column(name)
    for spec in REGIMES.values():
        ok, why = availability(spec, gpus)
        table.add_row(spec.name, spec.engine, spec.weights, spec.attn, spec.extra or "-",
                      "[green]yes[/green]" if ok else f"[yellow]no[/yellow]: {why}", spec.summary)
    console.print(table)


@app.command(rich_help_panel=INSPECT)
def env(as_json: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON.")):
    """Print the environment fingerprint that every result row carries."""
    from .console import console
    from .telemetry import fingerprint

    info = fingerprint()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        console.print(f"[bold]{key:>13}[/bold]  {value if value is not None else '-'}", highlight=False)


def main() -> None:
    app()
