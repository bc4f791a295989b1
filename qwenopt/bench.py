"""The sweep runner: validate everything up front, load once, then warm-up + timed repeats per cell.

Every cell becomes a row, failures included (`oom`, `error`, `invalid`), and each row reaches the
result file the moment its cell ends, so an interrupted sweep keeps every finished cell.
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .attention import kernel_for_regime
from .engines.base import EngineOptions, LoadInfo
from .errors import QwenoptError
from .models import ModelSource, resolve_model, with_yarn
from .regimes import RegimeSpec, check_runnable, get_regime, gpu_count
from .limits import check_at_most, check_sweep
from .results import SCHEMA_VERSION, ResultWriter, check_output, read_rows
from .roofline import roofline
from .stats import cell_metrics, count_mismatches
from .tune import BatchSearch, Searcher
from .workload import Cell, make_grid, make_prompts, parse_sizes

DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTS = {"vllm-int4": ("awq", "gptq")}
# gptqmodel backends that serve GPTQ int4 g128 layers (gptqmodel's BACKEND names without the "gptq_" prefix).
GPTQ_KERNELS = ("auto", "marlin", "machete", "exllama_v2", "triton", "torch", "torch_fused", "torch_aten", "bitblas")


@dataclass
class BenchOptions:
    """Everything a sweep needs; a config file and the command line fill the same fields."""

    regime: str = "hf-fp16"
    model: str = "qwen2-tiny"
    weights: str | None = None
    batch: str = "1,8"
    input_len: str = "128,512"
    output_len: str = "64"
    repeats: int = 5
    warmup: int = 1
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    out: str | None = None
    quant: str | None = None
    tp: int = 1
    pp: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    compile: bool = False
    kernel: str = "auto"
    attn: str | None = None  # transformers regimes: the attention kernel (attention.py), default the regime's
    engine_args: dict = field(default_factory=dict)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "dict": dict}.get(f.type)
            if expected and (not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))):
                raise QwenoptError(f"option {f.name} must be {f.type}, got {value!r}")
        if self.repeats < 1:
            raise QwenoptError(f"--repeats must be at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise QwenoptError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.device not in DEVICES:
            raise QwenoptError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise QwenoptError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.tp < 1 or self.pp < 1:
            raise QwenoptError(f"--tp and --pp must be at least 1, got tp={self.tp} pp={self.pp}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise QwenoptError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class Plan:
    """A validated sweep: nothing in here can fail for a reason the user could have told us up front."""

    options: BenchOptions
    spec: RegimeSpec
    source: ModelSource
    device: str
    dtype: str
    quant: str
    cells: list[Cell]
    out: Path
    attn: str | None = None  # the attention kernel transformers regimes run (attention.py); None for vLLM
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    search: BatchSearch | None = None  # tune: cells chosen one by one from the rows before them

    def cell_source(self) -> tuple[Iterable[Cell], Callable[[dict], None] | None]:
        """The cells to run, and what to tell about each finished row (the tuner listens; a grid does not)."""
        if self.search is None:
            return self.cells, None
        searcher = Searcher(self.search)
        return searcher.cells(), searcher.record

    def engine_options(self) -> EngineOptions:
        o = self.options
        return EngineOptions(
            source=self.source, device=self.device, dtype=self.dtype, seed=o.seed, tp=o.tp, pp=o.pp,
            quant=self.quant, max_model_len=o.max_model_len, gpu_memory_utilization=o.gpu_memory_utilization,
            max_num_seqs=o.max_num_seqs, enforce_eager=o.enforce_eager, compile=o.compile, kernel=o.kernel,
            attn=self.attn, engine_args=dict(o.engine_args),
        )


def plan_sweep(options: BenchOptions, gpus: int | None = None) -> Plan:
    """Check the whole request before any model is loaded; raise QwenoptError naming what is wrong."""
    spec = get_regime(options.regime)
    gpus = gpu_count() if gpus is None else gpus
    device = options.device if options.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda" and gpus == 0:
        raise QwenoptError("--device cuda asked for, but no CUDA GPU is visible")
    if options.compile and spec.engine != "hf":
        raise QwenoptError("--compile applies to transformers regimes; vLLM compiles and captures CUDA graphs itself")
    if (options.tp > 1 or options.pp > 1) and spec.engine != "vllm":
        raise QwenoptError("--tp/--pp need a vllm regime; transformers here runs on one device")
    if options.kernel != "auto" and spec.name != "hf-gptq":
        raise QwenoptError("--kernel picks the gptqmodel kernel of hf-gptq; vLLM picks its int4 kernel itself")
    if options.kernel not in GPTQ_KERNELS:
        raise QwenoptError(f"--kernel must be one of {', '.join(GPTQ_KERNELS)}, got {options.kernel!r}")
    quant = options.quant or spec.quant
    allowed = QUANTS.get(spec.name, (spec.quant,))
    if quant not in allowed:
        raise QwenoptError(f"--quant {quant!r} does not apply to {spec.name}; it takes {', '.join(allowed)}")
    attn = kernel_for_regime(spec, options.attn, device, gpus, options.compile)
    check_runnable(spec, device)
    if options.tp * options.pp > max(gpus, 1) and device == "cuda":
        raise QwenoptError(f"--tp {options.tp} x --pp {options.pp} needs {options.tp * options.pp} GPUs, {gpus} visible")
    dtype = options.dtype if options.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    source = resolve_model(options.model, options.weights, quant)
    if options.max_model_len and spec.engine != "vllm":
        if source.weights != "random":
            raise QwenoptError("--max-model-len applies to vllm regimes, and to transformers with --weights random "
                               "(a real checkpoint keeps its own config)")
        source = dataclasses.replace(source, config=with_yarn(source.config, options.max_model_len))
    context = options.max_model_len or source.max_context
    sizes = [parse_sizes(options.batch, "--batch"), parse_sizes(options.input_len, "--input-len"),
             parse_sizes(options.output_len, "--output-len")]
    check_sweep(*sizes)
    cells = make_grid(*sizes, context)
    out = Path(options.out) if options.out else Path("results") / f"{spec.name}_{Path(source.name).name}.csv"
    check_output(out)
    return Plan(options, spec, source, device, dtype, quant, cells, out, attn=attn)


def plan_tune(options: BenchOptions, slo_p99_s: float, max_batch: int, gpus: int | None = None) -> Plan:
    """A plan whose cells are chosen by the batch search (see tune.py); checked like any sweep first."""
    if not slo_p99_s > 0:
        raise QwenoptError(f"--slo-p99 must be a positive number of seconds, got {slo_p99_s}")
    if max_batch < 1:
        raise QwenoptError(f"--max-batch must be at least 1, got {max_batch}")
    check_at_most(max_batch, "batch", "--max-batch")
    plan = plan_sweep(dataclasses.replace(options, batch="1"), gpus)
    if options.out is None:
        plan.out = check_output(Path("results") / f"tune_{plan.spec.name}_{Path(plan.source.name).name}.csv")
    if len(plan.cells) != 1:
        raise QwenoptError("tune searches the batch size for one workload: give one --input-len and one --output-len")
    cell = plan.cells[0]
    check_sweep([max_batch], [cell.input_len], [cell.output_len])  # the largest batch the search may probe
    plan.search = BatchSearch(slo_p99_s, cell.input_len, cell.output_len, max_batch)
    return plan


def describe(exc: BaseException) -> str:
    """An exception as one line for the row's error column."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def cell_row(base: dict, cell: Cell, status: str, error: str | None) -> dict:
    return dict(base, batch_size=cell.batch_size, input_len=cell.input_len, output_len=cell.output_len,
                status=status, error=error)


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _measure_cell(plan: Plan, engine, cell: Cell, probes: dict, on_iteration, warmups: list[float]
                  ) -> tuple[dict, list[dict], list[float]]:
    """Warm-up (each one's seconds appended to `warmups`), then timed repeats under the GPU sampler; returns the
    cell's metric columns, raw samples and the peak memory of each GPU (tensor-parallel workers hold their own)."""
    from .telemetry import GPUSampler

    prompts = make_prompts(cell.batch_size, cell.input_len, plan.source.config["vocab_size"], plan.options.seed)
    for _ in range(plan.options.warmup):
        start = time.perf_counter()
        engine.generate(prompts, cell.output_len)
        warmups.append(time.perf_counter() - start)
        if on_iteration:
            on_iteration(cell, "warm-up")
    engine.reset_memory_stats()
    iterations, walls = [], []
    with GPUSampler() as sampler:
        for _ in range(plan.options.repeats):
            start = time.perf_counter()
            iterations.append(engine.generate(prompts, cell.output_len))  # returns once the batch is done
            walls.append(time.perf_counter() - start)
            if on_iteration:
                on_iteration(cell, "timed")
    samples = [dataclasses.asdict(s) for batch in iterations for s in batch]
    mismatches = count_mismatches(iterations, cell.output_len)
    if mismatches:  # a cell that did not do the asked-for work is marked, never averaged in
        return {"samples": len(samples), "timings": None, "status": "invalid",
                "error": f"{mismatches} requests did not produce exactly {cell.output_len} tokens"}, samples, []
    metrics = cell_metrics(iterations, walls, cell.input_len, cell.output_len,
                           static_batch=not getattr(engine, "timings_per_request", False))
    metrics.update(sampler.summary())
    metrics.update(engine.memory_stats())
    produced = sum(s["output_tokens"] for s in samples)
    metrics["energy_j_per_tok"] = sampler.energy_j / produced if produced else math.nan
    if plan.device == "cuda":
        # Tensor parallelism spreads one step over tp GPUs; pipeline stages run one after another.
        tok_s = roofline(plan.source.config, plan.quant, plan.dtype, cell.batch_size, cell.input_len, cell.output_len,
                         probes.get("mem_bw_gbs", math.nan), probes.get("matmul_tflops", math.nan), plan.options.tp)
        tpot_s = metrics["tpot_p50_ms"] / 1e3
        metrics["roofline_tok_s"] = tok_s
        metrics["roofline_eff"] = (cell.batch_size / tok_s) / tpot_s if tpot_s > 0 else math.nan
    return metrics, samples, sampler.per_gpu_peak_gib()


def run_sweep(
    plan: Plan,
    engine,
    base_row: dict,
    writer: ResultWriter,
    on_iteration: Callable[[Cell, str], None] | None = None,
    probes: dict | None = None,
) -> list[dict]:
    """Run every cell on an already-loaded engine and append one row per cell to `writer`."""
    rows = []
    cells, on_row = plan.cell_source()
    for cell in cells:
        row = cell_row(base_row, cell, "ok", None)
        samples: list[dict] = []
        per_gpu: list[float] = []
        warmups: list[float] = []  # kept apart in the sidecar: a run's first call pays JIT and torch.compile
        try:
            metrics, samples, per_gpu = _measure_cell(plan, engine, cell, probes or {}, on_iteration, warmups)
            row.update(metrics)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed cell is data; the sweep goes on
            row["status"] = "oom" if is_oom(exc) else "error"
            row["error"] = describe(exc)
            _free_device(plan.device)
        writer.append(row, samples, per_gpu, warmups)
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


def _free_device(device: str) -> None:
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def base_row(plan: Plan, load: LoadInfo, fingerprint: dict, probes: dict) -> dict:
    """The columns every cell of this sweep shares: identity, load, footprint, fingerprint."""
    o = plan.options
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": plan.run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "regime": plan.spec.name,
        "engine": plan.spec.engine,
        "model": plan.source.name,
        "weights": plan.source.weights,
        "dtype": plan.dtype,
        "quant": load.quant or plan.quant,
        "attn": load.attn or plan.spec.attn,
        "decode_mode": load.decode_mode,
        "device": plan.device,
        "tp": o.tp,
        "pp": o.pp,
        "warmup": o.warmup,
        "repeats": o.repeats,
        "load_s": load.load_s,
        "load_from": load.load_from,
        "weights_gib": load.weights_gib,
        "kv_cache_gib": load.kv_cache_gib,
        "kv_capacity_tokens": load.kv_capacity_tokens,
        **probes,
        **fingerprint,
    }


def execute(plan: Plan, on_iteration: Callable[[Cell, str], None] | None = None) -> list[dict]:
    """Load the regime's engine once, sweep every cell on it, close it. Returns this run's rows."""
    from .engines import make_engine
    from .telemetry import fingerprint, probe_device

    writer = ResultWriter(plan.out)
    probes = probe_device(plan.device)
    engine = make_engine(plan.spec, plan.engine_options())
    try:
        try:
            load = engine.load()
        except QwenoptError:
            raise
        except Exception as exc:  # a regime that cannot even load is still a result: one failed row per cell
            reason = f"load failed: {describe(exc)}"[:300]
            return fail_cells(plan, plan.cells, "oom" if is_oom(exc) else "error", reason, writer, fingerprint(), probes)
        row = base_row(plan, load, fingerprint(), probes)
        return run_sweep(plan, engine, row, writer, on_iteration, probes)
    finally:
        engine.close()


def fail_cells(plan: Plan, cells: list[Cell], status: str, reason: str, writer: ResultWriter,
               env: dict, probes: dict) -> list[dict]:
    """Rows for cells that never ran, so the file says what happened to every cell asked for."""
    base = base_row(plan, LoadInfo(load_s=math.nan), env, probes)
    rows = []
    for cell in cells:
        row = cell_row(base, cell, status, reason)
        writer.append(row, [])
        rows.append(row)
    return rows


def _child_main(plan: Plan) -> None:
    from .console import sweep_progress

    with sweep_progress(plan) as on_iteration:
        execute(plan, on_iteration)


def execute_isolated(plan: Plan, timeout_s: float | None = None) -> list[dict]:
    """Run `execute` in a fresh child process, so a crash, an OOM or a hang in one regime becomes failed
    rows and the GPU is free again afterwards. The parent blocks in join() (no busy-wait)."""
    import multiprocessing

    from .telemetry import fingerprint

    process = multiprocessing.get_context("spawn").Process(target=_child_main, args=(plan,), name=f"qwenopt-{plan.spec.name}")
    process.start()
    try:
        process.join(timeout_s)
    except KeyboardInterrupt:
        process.join(30)  # the child got the same Ctrl-C and is saving its finished cells
        if process.is_alive():
            process.terminate()
        raise
    if process.is_alive():
        process.kill()
        process.join()
        reason = f"timeout: the engine process ran over {timeout_s:.0f} s and was killed"
    elif process.exitcode != 0:
        reason = f"the engine process died with exit code {process.exitcode}"
    else:
        reason = None
    writer = ResultWriter(plan.out)
    ours = read_rows(plan.out, plan.run_id)
    if plan.search:  # replay the search over the rows written: the cell it would run next is the one that died
        searcher = Searcher(plan.search)
        for row in ours:
            searcher.record(row)
        following = next(searcher.cells(), None)
        missing = [following] if following and reason else []
    else:
        done = {(r["batch_size"], r["input_len"], r["output_len"]) for r in ours}
        missing = [c for c in plan.cells if (c.batch_size, c.input_len, c.output_len) not in done]
    if missing:
        fail_cells(plan, missing, "error", reason or "the engine process ended without running this cell",
                   writer, fingerprint(), {})
    return read_rows(plan.out, plan.run_id)
