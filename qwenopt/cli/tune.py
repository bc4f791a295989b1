"""`qwenopt tune`: the static batch of an HF engine (--regime, offline), or the served engine's settings (--launch,
online: one `vllm serve` or `transformers serve` start per configuration, the engine's defaults first, then
Optuna's TPE)."""
from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from ..errors import QwenoptError
from . import options as o
from .app import MEASURE, command, parse_engine_args

REQUEST_TIMEOUT_S = 30.0  # one deadline per request; far above any SLO worth tuning for
# a trial's expected server start before any has finished (budget): the slowest measured (DESIGN.md) vLLM start on
# the H100, and transformers serve's on the H200 (server up in 16-18 s)
START_ESTIMATE_S = {"vllm": 151.0, "hf": 18.0}


@command(MEASURE)
def tune(
    slo_p99: Optional[float] = typer.Option(None, help="--regime: P99 latency target in seconds for one batch."),
    slo: Optional[str] = typer.Option(None, help="--launch: the SLO a level's P99 figures must meet, any of "
                                      "e2e=2s,ttft=200ms,tpot=50ms."),
    regime: o.Regime = None,
    launch: Optional[str] = typer.Option(None, help="Search the served engine instead: vllm-fp16 or vllm-int4 "
                                         "(`vllm serve`), hf-fp16, hf-nf4, hf-fa2 or hf-fa4 (`transformers serve`). "
                                         "Each trial starts the server with one configuration, loads it, stops it "
                                         "(--model defaults to qwen2.5-7b here)."),
    model: o.Model = None,
    weights: o.Weights = None,
    input_len: Optional[str] = typer.Option(None, help="Prompt tokens (--launch: also a range 128:2048).",
                                            show_default="512"),
    output_len: Optional[str] = typer.Option(None, help="Generated tokens, forced.", show_default="128"),
    workload: Optional[str] = typer.Option(None, help="--launch: `chat` or a JSONL file (as `qwenopt load`)."),
    mix: Optional[str] = typer.Option(None, help="--launch: request classes NAME=SHARE:IN:OUT (as `qwenopt load`)."),
    objective: str = typer.Option("goodput", help="--launch: maximise goodput (req/s within the SLO) or minimise "
                                  "cost ($ per 1M output tokens at that load)."),
    trials: int = typer.Option(12, help="--launch: trials in the whole search (resumed ones count), trial 0 "
                                        "being the engine's defaults."),
    budget_minutes: Optional[float] = typer.Option(None, help="--launch: wall minutes this run may take, engine "
                                                   "starts included; no trial starts whose expected time (the mean "
                                                   "of finished trials) would overrun it."),
    resume: bool = typer.Option(False, "--resume", help="--launch: go on with the finished trials of the same "
                                "search in --out (OUT.trials.jsonl)."),
    space: Optional[str] = typer.Option(None, help="--launch: search only these knobs and values (the others stay at "
                                        "the engine's default), KNOB=V1,V2 separated by ';', e.g. "
                                        "'max_num_seqs=64,128,256;kv_cache_dtype=auto,fp8'. Knobs (vLLM 0.26 "
                                        "names): linear_backend, quantization (int4 only), max_num_seqs, "
                                        "max_num_batched_tokens, enable_chunked_prefill, gpu_memory_utilization, "
                                        "kv_cache_dtype, cudagraph_mode, enforce_eager, async_scheduling, "
                                        "enable_prefix_caching; tensor_parallel_size, pipeline_parallel_size "
                                        "(several GPUs); spec_acceptance, num_speculative_tokens, spec_method. "
                                        "transformers serve's: continuous_batching, compile, attn_implementation, "
                                        "dtype, cb_num_blocks, cb_max_batch_tokens, cb_block_size, "
                                        "cb_max_memory_percent, cb_use_cuda_graph. `default` leaves a flag to "
                                        "the engine."),
    try_: Optional[list[str]] = typer.Option(None, "--try", help="--launch: measure this configuration right after "
                                             "the defaults, before the sampler's own (repeatable; --space syntax, "
                                             "one value a knob, e.g. 'linear_backend=marlin'): a hunch tested, and "
                                             "the sampler learns from it. Its trials say step `given`."),
    spec_acceptance: Optional[str] = typer.Option(None, help="--launch: also try speculative decoding with a "
                                                  "random-weight EAGLE-3 head (--space spec_method=eagle3,draft_model "
                                                  "adds a random Qwen2.5-0.5B draft) at these ASSUMED per-token "
                                                  "acceptance rates (vLLM's synthetic rejection sampling), e.g. "
                                                  "0.6,0.8."),
    level_duration: float = typer.Option(15.0, help="--launch: seconds of arrivals per load level."),
    probes: int = typer.Option(3, help="--launch: open-loop rates per trial, bisected between the rates that met "
                                       "and missed the SLO; trial 0 (the defaults) gets 2 more, as every gain is "
                                       "read against its bracket."),
    level_requests: int = typer.Option(300, help="--launch: an open-loop level lasts until at least this many "
                                       "requests have arrived (longer than --level-duration at low rates), so that "
                                       "its P99 rests on its few worst, not on one; 0: --level-duration only."),
    burst_users: int = typer.Option(256, help="--launch: closed-loop users of the saturation burst."),
    gpu_hour_usd: o.GpuHourUsd = o.GPU_HOUR_USD,
    max_model_len: Optional[int] = typer.Option(None, help="--launch: longest sequence the server admits."),
    port: int = typer.Option(8000, help="--launch: the port each server listens on (127.0.0.1)."),
    max_send_lag_ms: float = typer.Option(10.0, help="--launch: send-lag P99 above this marks a level client-bound."),
    max_batch: Optional[int] = typer.Option(None, help="--regime: largest batch the search may try.",
                                            show_default="256"),
    repeats: Optional[int] = typer.Option(None, help="--regime: timed iterations per probed batch.", show_default="3"),
    warmup: o.Warmup = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    seed: o.Seed = None,
    quant: o.Quant = None,
    tp: o.TP = None,
    compile: o.Compile = None,
    kernel: o.Kernel = None,
    attn: o.Attn = None,
    engine_args: o.EngineArgs = None,
    out: o.out_option("Result CSV.", "--regime: results/tune_REGIME_MODEL.csv; --launch: results/tune.csv") = None,
    isolate: o.Isolate = None,
    timeout: o.Timeout = 3600.0,
):
    """Tune for a latency SLO: an HF engine's static batch, or a served engine's settings.

    --regime: the static batch with the most throughput whose P99 meets --slo-p99
    (doubling, then bisection, each probe a bench cell). --launch: the served engine's settings (vLLM's, or
    transformers serve's for hf-*) with the most goodput (or the lowest cost) whose P99 meets --slo, found by
    Optuna's TPE after the engine's defaults (trial 0); every level of every trial is a load row with trial
    columns, every trial a line of OUT.trials.jsonl, every trial's server log OUT.server-logs/trial-N.log."""
    if launch is None:
        online_only = {"--slo": slo, "--workload": workload, "--mix": mix, "--budget-minutes": budget_minutes,
                       "--space": space, "--try": try_ or None, "--spec-acceptance": spec_acceptance,
                       "--max-model-len": max_model_len, "--resume": resume or None}
        given = [name for name, value in online_only.items() if value is not None]
        if given:
            raise QwenoptError(f"{', '.join(given)} go with --launch (the online search)")
        if slo_p99 is None:
            raise QwenoptError("give --slo-p99 SECONDS (--regime: batch search) or --launch vllm-* --slo e2e=2s")
        from .bench import tune_batch

        return tune_batch(slo_p99, regime=regime, model=model, weights=weights, input_len=int(input_len or 512),
                          output_len=int(output_len or 128), max_batch=max_batch or 256, repeats=repeats or 3,
                          warmup=warmup, device=device, dtype=dtype, seed=seed, quant=quant, tp=tp, compile=compile,
                          kernel=kernel, attn=attn, engine_args=engine_args, out=out, isolate=isolate,
                          timeout=timeout)
    from ..regimes import get_regime

    hf = get_regime(launch).engine == "hf"
    offline_only = {"--slo-p99": slo_p99, "--regime": regime, "--max-batch": max_batch, "--repeats": repeats,
                    "--warmup": warmup, "--compile": compile, "--kernel": kernel, "--attn": attn, "--isolate": isolate,
                    **({} if hf else {"--device": device, "--dtype": dtype})}
    given = [name for name, value in offline_only.items() if value is not None]
    if given:
        knob = hf and compile is not None
        also = " (transformers serve's --compile is a knob: --space compile=true)" if knob else ""
        raise QwenoptError(f"{', '.join(given)} go with --regime (the batch search), not --launch{also}")
    tune_online(launch, slo, model or "qwen2.5-7b", weights, input_len, output_len, workload, mix, objective,
                trials, budget_minutes, resume, space, spec_acceptance, level_duration, probes, level_requests,
                burst_users, gpu_hour_usd, max_model_len, port, max_send_lag_ms, seed or 0, quant, tp,
                parse_engine_args(engine_args), out or "results/tune.csv", device, dtype, try_)


def tune_online(launch, slo, model, weights, input_len, output_len, workload, mix, objective, trials, budget_minutes,
                resume, space_text, spec_acceptance, level_duration, probes, level_requests, burst_users,
                gpu_hour_usd, max_model_len, port, max_send_lag_ms, seed, quant, tp, extra_args, out, device=None,
                dtype=None, tries=None):
    from ..console import console
    from ..models import default_weights
    from ..regimes import get_regime
    from ..results import append_jsonl, check_output
    from ..schema import TUNE_LOAD_COLUMNS
    from ..serving.client import Target
    from ..serving.metrics import format_slo, parse_slo
    from ..serving.sweep import LoadRun
    from ..serving.tune_online import (SearchSettings, probe_hint, read_trials, require_optuna, search, study_key,
                                       trials_path)
    from ..serving.tune_space import VLLM, engine_args_of, gpus_of, key_space, parse_space, parse_tries
    from ..serving.tune_trial import TrialPlan, TrialRunner
    from ..telemetry import GPUSampler, fingerprint, wait_for_free_gpus
    from .load import load_workload, start_server
    from .load_view import LevelView

    began = time.monotonic()  # the budget counts from here: imports and checks are this run's time too
    path = check_output(out)
    spec = get_regime(launch)
    slo_map = parse_slo(slo)
    if not slo_map:
        raise QwenoptError("--launch needs --slo, e.g. e2e=2s or e2e=2s,ttft=500ms")
    if objective not in ("goodput", "cost"):
        raise QwenoptError(f"--objective must be goodput or cost, got {objective!r}")
    if trials < 1 or probes < 0 or burst_users < 1 or level_duration <= 0 or level_requests < 0:
        raise QwenoptError("--trials and --burst-users must be >= 1, --probes and --level-requests >= 0, "
                           "--level-duration > 0")
    if budget_minutes is not None and budget_minutes <= 0:
        raise QwenoptError(f"--budget-minutes must be positive, got {budget_minutes:g}")
    if quant is not None and (spec.quant == "none" or spec.engine != "vllm"):
        raise QwenoptError(f"--quant is for vllm-int4; {launch} has no int4 format")
    source, work = load_workload(model, input_len or "512", output_len or "128", workload, mix, seed)
    if spec.engine == "vllm":
        from ..regimes import gpu_count

        acceptance = _rates(spec_acceptance)
        space = parse_space(space_text, spec.quant != "none", quant, acceptance, gpus=gpu_count(),
                            heads=source.config.get("num_attention_heads"), tp=tp)
        knobs = VLLM
    else:
        if spec_acceptance is not None:
            raise QwenoptError("--spec-acceptance is vLLM's speculative decoding; transformers serve has none")
        from ..serving.tune_space_hf import hf_space

        acceptance = None
        space, knobs, hf_args = hf_space(spec, space_text, device, dtype, quant, extra_args)
    given = parse_tries(tries, space, knobs)
    require_optuna()
    tp = tp or 1
    weights = weights or default_weights(model)
    plan = TrialPlan(burst_users=burst_users, probes=probes, level_s=level_duration, level_requests=level_requests)
    key = study_key(regime=launch, model=source.name, weights=weights, quant=quant, tp=tp, engine_args=extra_args,
                    max_model_len=max_model_len, workload=work.describe(), slo=format_slo(slo_map),
                    objective=objective, space=key_space(space), plan=asdict(plan),
                    gpu_hour_usd=gpu_hour_usd, seed=seed,
                    # trials measured when later levels resent the first one's prompts (prefix-cache hits) are
                    # another search: never resumed into this one
                    prompts="per-level",
                    **({} if spec.engine == "vllm" else {"device": device, "dtype": dtype}))
    finished, others = read_trials(path, key)
    if others:  # one file, one search: trial numbers, server logs and the outcome file would collide
        raise QwenoptError(f"{trials_path(path)} holds {others} trials of another search (other regime, workload, "
                           f"SLO, space or load plan, or levels that resent each other's prompts): choose another "
                           f"--out")
    if finished and path.is_file():  # trials recorded before they kept their bracket: from their rows
        from ..results import read_csv
        from ..serving.tune_trial import fill_brackets

        rows = read_csv(path)
        fill_brackets(finished, rows[(rows["study"] == key) & (rows["class"] == "all")])
    if finished and not resume:
        raise QwenoptError(f"{trials_path(path)} already holds {len(finished)} trials of this search: pass --resume "
                           f"to go on with them, or choose another --out")
    run = LoadRun(target=None, workload=work, mode="closed", values=[burst_users], out=path, duration_s=level_duration,
                  seed=seed, slo=slo, max_send_lag_ms=max_send_lag_ms, columns=TUNE_LOAD_COLUMNS)
    run.level("closed", burst_users)  # the load options checked now, before any server starts
    drafters = None
    if acceptance:  # the random-weight drafter of each speculative method searched
        from ..engines.vllm_spec import drafter_dir

        drafters = {method: str(drafter_dir(method, source, max_model_len)) for method in space["spec_method"]}

    def launch_args(config: dict) -> dict:
        """start_server's per-trial arguments: the configuration's flags (vLLM engine args, or serve's settings)."""
        if spec.engine != "vllm":
            return hf_args(config)
        return {"quant": config.get("quantization", quant), "device": None, "dtype": None, "compile": False,
                "continuous_batching": False, "attn": None,
                "engine_args": {**extra_args, **engine_args_of(config, drafters)}}

    current = {"trial": 0}  # the trial being measured: its server's log is OUT.server-logs/trial-N.log

    def start(stack: contextlib.ExitStack, config: dict):
        wait_for_free_gpus()  # the last trial's server may still be giving its memory back
        first = work.sample(0)
        return start_server(stack, launch, model=model, weights=weights, tp=config.get("tensor_parallel_size", tp),
                            pp=config.get("pipeline_parallel_size", 1), scheduling_policy=None,
                            max_model_len=max_model_len, gpu_memory_utilization=0.9, enforce_eager=False, port=port,
                            server_log=server_log_path(path, current["trial"]), input_len=first[1],
                            output_len=first[2], **launch_args(config))

    def identity(config: dict) -> dict:
        args = launch_args(config)
        return {"regime": launch, "model": source.name, "weights": weights,
                "tp": config.get("tensor_parallel_size", tp), "pp": config.get("pipeline_parallel_size", 1),
                "gpus": gpus_of(config, tp), "quant": args["quant"] or spec.quant, "attn": args["attn"],
                "engine_args": json.dumps(args["engine_args"], sort_keys=True)}

    view = LevelView()
    runner = TrialRunner(run, start, lambda server: Target(server.base_url, server.model, server.dialect,
                                                           REQUEST_TIMEOUT_S, source.config["vocab_size"], seed),
                         plan, slo_map, gpu_hour_usd, key, identity, view.begin, view.finish, GPUSampler,
                         extra_context=fingerprint(), knobs=knobs)
    settings = SearchSettings(key, objective, trials, budget_minutes * 60 if budget_minutes else None,
                              first_estimate_s=plan.baseline_load_s + START_ESTIMATE_S[spec.engine], seed=seed, given=given)
    done = list(finished)
    resumed = sum(r.finished for r in finished)
    console.print(f"[bold]tune {launch}[/bold] ({source.name}, {weights} weights), {work.describe()}, SLO P99 "
                  f"{format_slo(slo_map)}, objective {objective}; {resumed} trials resumed; grid: "
                  f"{knobs.grid_size(space):,} configurations -> {path}", highlight=False)

    def measure(number: int, step: str, config: dict):
        current["trial"] = number
        runner.hint_req_s = probe_hint(done, gpus_of(config, tp))  # per GPU: layouts differ
        result = runner(number, step, config)
        if number == 0 and result.status == "start-failed":  # the setup is broken, not a configuration
            raise QwenoptError(f"{knobs.label} did not start, so no other configuration will: {result.reason}")
        return result

    def keep(result) -> None:
        append_jsonl(trials_path(path), result.record(key))
        done.append(result)

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a `timeout` kill stops the server as Ctrl-C does
    try:
        results = search(space, settings, measure, finished, on_trial=keep, started=began,
                         say=lambda text: console.print(text, highlight=False, markup=False), knobs=knobs)
    except KeyboardInterrupt:
        show_outcome(done, objective, knobs.grid_size(space), resumed, path, exit_code=False, knobs=knobs)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    show_outcome(results, objective, knobs.grid_size(space), resumed, path, knobs=knobs)


def server_log_path(out: Path, trial: int) -> Path:
    """Where trial N's server log is kept (what the engine chose: kernels, runner, start-up phases), beside OUT."""
    return out.with_name(out.stem + ".server-logs") / f"trial-{trial}.log"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _rates(text: Optional[str]) -> list[float] | None:
    if text is None:
        return None
    from ..engines.vllm_spec import check_acceptance

    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        rates = []
    check_acceptance(rates, repr(text))
    return rates


def show_outcome(results, objective: str, grid: int, resumed: int, path, exit_code: bool = True,
                 knobs=None) -> None:
    """The table of trials, the winner against the defaults, the Pareto front and the serve line; also written
    to OUT.outcome.txt."""
    from ..console import stdout
    from ..results import atomic_write_text
    from ..serving.tune_online import trials_path, winner
    from ..serving.tune_view import card_note, outcome_lines

    lines = outcome_lines(results, objective, grid, resumed, *([knobs] if knobs else []))
    best = winner(results, objective)
    if best is not None and best.trial != 0:  # one short level each: a gain is a claim until re-measured
        from ..results import read_csv

        note = card_note(read_csv(path), best.trial) if path.is_file() else None
        lines += [*([note] if note else []), "confirm the gain (fresh starts, the same arrivals for both):",
                  f"  qwenopt confirm {path}"]
    for line in lines:
        stdout.print(line, highlight=False, markup=False, soft_wrap=True)
    target = path.with_suffix(".outcome.txt")
    atomic_write_text(target, "\n".join(lines) + "\n")
    stdout.print(f"wrote {path}, {trials_path(path)} and {target}", highlight=False)
    if exit_code and results and not any(r.status == "ok" for r in results):
        raise typer.Exit(1)
