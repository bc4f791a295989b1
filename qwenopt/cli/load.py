"""Online measurement: load against an OpenAI-compatible server, or one qwenopt launches."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import MEASURE, command, fail


@command(MEASURE)
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

    from ..console import console, load_progress
    from ..models import resolve_model
    from ..results import append_csv
    from ..serving.loadgen import LOAD_COLUMNS, LoadOptions, arrival_times, load_row, run_load
    from ..telemetry import GPUSampler, fingerprint

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
                from ..bench import BenchOptions, plan_sweep

                plan = plan_sweep(BenchOptions(
                    regime=launch, model=model, weights=weights, device="cuda", quant=quant, tp=tp, pp=pp,
                    max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                    enforce_eager=enforce_eager, batch="1", input_len=str(input_len), output_len=str(output_len)))
                if plan.spec.engine != "vllm":
                    raise QwenoptError("--launch starts `vllm serve`: give a vllm regime (vllm-fp16, vllm-int4)")
                from ..serving.launcher import launch as launch_server

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
