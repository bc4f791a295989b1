"""Online measurement: load levels against an OpenAI-compatible server, or one qwenopt launches."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from .app import MEASURE, command, parse_engine_args

def start_server(stack: contextlib.ExitStack, launch: str, *, model, weights, quant, tp, pp, device, dtype,
                 compile, engine_args: dict, continuous_batching: bool, scheduling_policy, max_model_len,
                 gpu_memory_utilization, enforce_eager, port: int, server_log, input_len: int, output_len: int,
                 attn: str | None = None):
    """Launch `vllm serve` or `transformers serve` for the regime; returns (server, the rows' identity columns).

    The one place a load run starts a server: the engine settings are bench's (BenchOptions), so an online row
    and an offline one of the same regime differ by the serving path only."""
    from ..bench import BenchOptions, plan_sweep
    from ..console import console
    from ..serving.launcher import launch_server

    passed = {k: v for k, v in engine_args.items() if not k.startswith("cb_")}
    plan = plan_sweep(BenchOptions(
        regime=launch, model=model, weights=weights, device=device or "cuda", dtype=dtype or "auto", quant=quant,
        tp=tp, pp=pp, compile=bool(compile), max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, engine_args=passed,
        attn=attn, batch="1", input_len=str(input_len), output_len=str(output_len)))
    vllm = plan.spec.engine == "vllm"
    if vllm and continuous_batching:
        raise QwenoptError("--continuous-batching is transformers serve's mode; vLLM always batches continuously")
    if not vllm and scheduling_policy:
        raise QwenoptError("--scheduling-policy is vLLM's; transformers serve has none")
    if vllm:
        mode = {"scheduling_policy": scheduling_policy}
        serve_mode = f"{scheduling_policy or 'fcfs'}"
    else:
        cb_args = {k[3:]: v for k, v in engine_args.items() if k.startswith("cb_")}
        mode = {"continuous_batching": continuous_batching, "cb_args": cb_args or None}
        serve_mode = "continuous-batching" if continuous_batching else "plain"
    if plan.options.compile:
        serve_mode += "+compile"
    name = "vllm serve" if vllm else "transformers serve"
    console.print(f"starting {name} for {plan.spec.name} on port {port} ...", highlight=False)
    server = stack.enter_context(launch_server(plan.spec, plan.engine_options(), port=port, log_path=server_log,
                                               **mode))
    return server, {"regime": plan.spec.name, "model": plan.source.name, "weights": plan.source.weights,
                    "quant": plan.quant, "attn": server.attn or plan.attn or plan.spec.attn, "serve_mode": serve_mode,
                    "tp": tp, "pp": pp, "gpus": tp * pp, "startup_s": server.startup_s,
                    "compile_cache": server.compile_cache,
                    "engine_args": json.dumps(engine_args, sort_keys=True) if engine_args else None}  # --cb-* too


def _assumed_speculation(extra: dict, launch, model: str, weights, rate: float, tokens: int) -> dict:
    """--spec-acceptance: only where qwenopt starts vLLM on random weights, whose drafter it generates (real
    weights need a trained head: --engine-args '{"speculative_config": {"model": ...}}')."""
    from ..engines.vllm_spec import assumed_speculation
    from ..models import resolve_model
    from ..regimes import get_regime

    if launch is None or get_regime(launch).engine != "vllm":
        raise QwenoptError("--spec-acceptance needs --launch vllm-fp16 or vllm-int4 (vLLM's speculative decoding)")
    if resolve_model(model, weights).weights != "random":
        raise QwenoptError("--spec-acceptance needs --weights random: a real-weight target drafts with a trained "
                           "head, given by --engine-args '{\"speculative_config\": {...}}'")
    return assumed_speculation(extra, rate, tokens)


def load_workload(model: str, input_len, output_len, workload, mix, seed: int):
    """(the model source, the workload): prompts bounded by the model's vocabulary, lengths by its context."""
    from ..models import resolve_model
    from ..workload import make_workload

    source = resolve_model(model, "random")
    return source, make_workload(input_len, output_len, workload, mix, seed=seed,
                                 vocab_size=source.config["vocab_size"], max_context=source.max_context)


@command(MEASURE)
def load(
    endpoint: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    launch: Optional[str] = typer.Option(None, help="Start the regime's server instead (vllm-*: `vllm serve`; hf-fp16, "
                                         "hf-nf4, hf-fa2, hf-fa4: `transformers serve`), load it, stop it and all it spawned."),
    regime: Optional[str] = typer.Option(None, help="With --endpoint: the regime the server runs, written into the "
                                         "rows so `matrix` can name and cost it (with --model, --weights, --quant)."),
    dialect: str = typer.Option("auto", help="How to speak to the server: vllm (token-id prompts, forced lengths with "
                                "min_tokens + ignore_eos, ends with [DONE]), openai or transformers (text prompts, "
                                "standard fields only; transformers serve ends with its usage chunk). auto: vllm "
                                "when /models says owned_by vllm, else openai."),
    rate: Optional[str] = typer.Option(None, help="Open loop: offered requests/s, one level per value (1,2,4,8), or "
                                       "`sweep`: one user at a time, then a closed-loop burst of 256 users for the "
                                       "saturation throughput, then 8 rates between. Default 4 unless --concurrency."),
    arrival: str = typer.Option("poisson", help="Open-loop arrivals: poisson, constant or gamma."),
    burstiness: float = typer.Option(1.0, help="Gamma shape with --arrival gamma (1 is Poisson, <1 burstier)."),
    concurrency: Optional[str] = typer.Option(None, help="Closed loop instead: C users, each sending its next request "
                                              "when its last ends; one level per value (1,4,16,64)."),
    max_concurrency: Optional[int] = typer.Option(None, help="Open loop: cap on requests in flight; the wait at the "
                                                  "cap counts in TTFT and E2EL."),
    duration: Optional[float] = typer.Option(None, help="Seconds of arrivals per level (closed loop: no request "
                                             "starts after it). Default 60 unless --num-requests."),
    num_requests: Optional[int] = typer.Option(None, help="Measured requests per level (warm-up not counted)."),
    warmup: int = typer.Option(0, help="Requests sent first in each level and left out of every figure."),
    input_len: Optional[str] = typer.Option(None, help="Prompt tokens: 512, or a uniform range 128:2048. Default 128."),
    output_len: Optional[str] = typer.Option(None, help="Generated tokens: 128, or a range 64:256. Default 128."),
    workload: Optional[str] = typer.Option(None, help="`chat` (lognormal lengths like ShareGPT's) or a JSONL file of "
                                           "{\"input_len\", \"output_len\"} or {\"prompt\", \"output_len\"} lines."),
    mix: Optional[str] = typer.Option(None, help="Request classes NAME=SHARE:IN:OUT, shares summing to 1, e.g. "
                                      "short=0.8:128:64,long=0.2:4096:512; one row per class plus the total."),
    slo: Optional[str] = typer.Option(None, help="SLOs for goodput, any of ttft=200ms,tpot=50ms,e2e=2s."),
    max_send_lag_ms: float = typer.Option(10.0, help="Send-lag P99 above this marks a level client-bound."),
    timeout: float = typer.Option(30.0, help="Deadline in seconds for the whole request from its intended arrival "
                                  "(TTFT and E2EL); a late request is cancelled and counted as a timeout."),
    workers: Optional[int] = typer.Option(None, help="Client processes, each with its own event loop; default: one "
                                          "per 3,000 offered tokens/s (rate x output tokens) or 64 users, at most "
                                          "half the CPUs."),
    seed: int = typer.Option(0, help="Seed for arrivals, lengths and prompts."),
    model: str = typer.Option("qwen2.5-7b", help="The model behind the endpoint (its vocabulary bounds the prompts "
                                                "and its context the lengths), or the model to launch."),
    weights: Optional[str] = typer.Option(None, help="With --launch: real or random (random: a generated folder "
                                          "with a round-tripping tokenizer, so text clients work too).",
                                          show_default="real"),
    device: Optional[str] = typer.Option(None, help="With --launch of an hf regime: cuda or cpu.", show_default="cuda"),
    dtype: Optional[str] = typer.Option(None, help="With --launch: bf16, fp16 or fp32.", show_default="auto"),
    compile: bool = typer.Option(False, "--compile", help="With --launch of an hf regime: transformers serve --compile."),
    continuous_batching: bool = typer.Option(
        False, "--continuous-batching", help="transformers serve's continuous batching (with --launch it starts the "
        "server so; with --endpoint it says the server runs so, which changes how lengths are forced)."),
    scheduling_policy: Optional[str] = typer.Option(None, help="With --launch vllm-*: fcfs or priority "
                                                    "(vLLM's --scheduling-policy).", show_default="vLLM's (fcfs)"),
    engine_args: Optional[str] = typer.Option(None, help="With --launch: extra engine arguments as a JSON object "
                                              "(vLLM: any `vllm serve` flag by its Python name, e.g. "
                                              "{\"linear_backend\": \"marlin\"}; transformers: cb_* settings of "
                                              "continuous batching, e.g. {\"cb_num_blocks\": 64})."),
    quant: Optional[str] = typer.Option(None, help="With --launch vllm-int4: awq or gptq."),
    spec_acceptance: Optional[float] = typer.Option(None, help="With --launch vllm-* --weights random: speculative "
                                                    "decoding by a random EAGLE-3 head at this ASSUMED per-token "
                                                    "acceptance, in (0, 1] (vLLM's synthetic sampler): a what-if, "
                                                    "not a measurement, and every label says so."),
    spec_tokens: int = typer.Option(2, help="With --spec-acceptance: draft tokens a step."),
    tp: int = typer.Option(1, help="With --launch: tensor-parallel GPUs."),
    pp: int = typer.Option(1, help="With --launch: pipeline-parallel stages."),
    max_model_len: Optional[int] = typer.Option(None, help="With --launch: longest sequence the server admits."),
    gpu_memory_utilization: float = typer.Option(0.9, help="With --launch: share of GPU memory vLLM may take."),
    enforce_eager: bool = typer.Option(False, help="With --launch: no CUDA graphs (faster start, slower decode)."),
    port: int = typer.Option(8000, help="With --launch: the port the server listens on (127.0.0.1)."),
    server_log: Optional[Path] = typer.Option(None, help="With --launch: where the server's log goes (default: a temp file)."),
    gateway: bool = typer.Option(False, "--gateway/--no-gateway", help="Put `qwenopt gateway` (priority classes, "
                                 "caps, admission) between the load and the server, in its own process, started "
                                 "and stopped here; rows say via_gateway. With --scheduling-policy priority it "
                                 "sets vLLM's priority by class."),
    gateway_config: Optional[Path] = typer.Option(None, help="With --gateway: a gateway.toml (see `qwenopt gateway`)."),
    gateway_port: int = typer.Option(8080, help="With --gateway: the port the gateway listens on (127.0.0.1)."),
    out: str = typer.Option("results/load.csv", help="CSV each level's rows are appended to as it finishes "
                            "(raw per-request samples beside it, .samples.jsonl)."),
):
    """Online load against an OpenAI-compatible server (or one it launches): one row per level and class.

    Figures are named as vllm bench serve names them; every time runs from the request's INTENDED arrival.
    TTFT: intended arrival -> first streamed token.
    E2EL (latency_*): intended arrival -> end of the stream.
    TPOT: per request, (E2EL - TTFT) / (output tokens - 1).
    ITL: every gap between streamed tokens, pooled over requests.
    Send lag: when the client got to a request - its intended arrival.
    client-bound: the level's send-lag P99 is over --max-send-lag-ms; the client set its latencies.
    ok: the stream ended properly with the asked token count (by the server's usage); only ok requests
    enter the figures, the rest are counted apart (failed, timeouts, truncated, short, overlong).
    Goodput: ok requests/s that met every --slo.
    Exit 1 when any request was not ok, 2 on bad input.
    """
    from ..results import check_output
    from ..serving.client import DIALECTS, Target, discover
    from ..serving.metrics import parse_slo
    from ..serving.schedule import parse_concurrency, parse_rates
    from ..serving.sweep import LoadRun, run_levels
    from ..telemetry import GPUSampler, fingerprint
    from .load_view import LevelView

    path = check_output(out)
    if gateway_config is not None and not gateway:
        raise QwenoptError("--gateway-config needs --gateway")
    if (endpoint is None) == (launch is None):
        raise QwenoptError("give exactly one of --endpoint URL or --launch REGIME")
    if regime and launch:
        raise QwenoptError("--regime names what serves an --endpoint; --launch already says it")
    if regime:
        from ..regimes import get_regime

        get_regime(regime)
    extra = parse_engine_args(engine_args)
    if spec_acceptance is not None:
        extra = _assumed_speculation(extra, launch, model, weights, spec_acceptance, spec_tokens)
    if dialect not in DIALECTS:
        raise QwenoptError(f"--dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    if rate is not None and concurrency is not None:
        raise QwenoptError("give --rate (open loop) or --concurrency (closed loop), not both")
    if timeout <= 0:
        raise QwenoptError(f"--timeout must be positive, got {timeout:g}")
    mode, values = ("closed", parse_concurrency(concurrency)) if concurrency else ("open", parse_rates(rate or "4"))
    if duration is None and num_requests is None:
        duration = 60.0
    parse_slo(slo)
    source, work = load_workload(model, input_len, output_len, workload, mix, seed)
    run = LoadRun(target=None, workload=work, mode=mode, values=values, out=path, arrival=arrival,
                  burstiness=burstiness, duration_s=duration, num_requests=num_requests, warmup=warmup, seed=seed,
                  max_concurrency=max_concurrency, workers=workers, slo=slo, max_send_lag_ms=max_send_lag_ms)
    first = "sweep" if values == "sweep" else values[0]
    run.level("closed" if first == "sweep" else mode, 1 if first == "sweep" else first)  # options checked now
    view = LevelView()
    with contextlib.ExitStack() as stack:
        context = {}
        if launch:
            server, context = start_server(
                stack, launch, model=model, weights=weights, quant=quant, tp=tp, pp=pp, device=device, dtype=dtype,
                compile=compile, engine_args=extra, continuous_batching=continuous_batching,
                scheduling_policy=scheduling_policy, max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, port=port,
                server_log=server_log, input_len=work.sample(0)[1], output_len=work.sample(0)[2])
            base_url, served, spoken = server.base_url, server.model, server.dialect
        else:
            base_url = endpoint.rstrip("/")
            served, spoken = discover(base_url)
            context["model"] = served
            if regime:  # what serves the endpoint, as the user says: the rows' identity for matrix and compare
                context.update(regime=regime, model=source.name, weights=weights or source.weights, quant=quant,
                               tp=tp, pp=pp, gpus=tp * pp,
                               serve_mode="continuous-batching" if continuous_batching else scheduling_policy)
        spoken = spoken if dialect == "auto" else dialect
        target_url = base_url
        if gateway:
            from ..serving.gateway_launch import launch_gateway
            from ..serving.policy import load_gateway_config

            upstream_priority = True if scheduling_policy == "priority" else None
            context["gateway"] = load_gateway_config(gateway_config, upstream=base_url,
                                                     upstream_priority=upstream_priority).describe()
            target_url = stack.enter_context(launch_gateway(base_url, gateway_port, gateway_config, upstream_priority))
        run.target = Target(target_url, served, spoken, timeout, source.config["vocab_size"], seed,
                            continuous_batching=continuous_batching)
        run.context = {**context, "endpoint": base_url, "server": spoken, "via_gateway": gateway, **fingerprint()}
        rows = run_levels(run, view.begin, view.finish, measure=GPUSampler)
        if gateway:
            from ..console import console
            from ..serving.gateway_launch import gateway_summary

            console.print(gateway_summary(target_url), highlight=False)
    view.summary(rows, out)
    if view.bad_requests(rows):
        raise typer.Exit(1)
