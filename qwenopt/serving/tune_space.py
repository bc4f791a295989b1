"""The engine knobs `tune --launch` searches, each by vLLM 0.26's own engine-argument name, and the flags each turns into.

Every knob's first choice is its default: what `vllm serve` does when the flag is left out (trial 0 runs all of
them), written "default" where vLLM decides by itself (by GPU, model or other settings) and as vLLM's own value
where it has one ("auto"). Names and choices are read from vLLM 0.26.0's source: engine/arg_utils.py,
config/kernel.py (LinearBackend), config/cache.py (CacheDType), config/scheduler.py (stream_interval),
config/compilation.py (CUDAGraphMode), config/vllm.py (performance_mode), config/speculative.py (synthetic rejection
sampling), config/parallel.py (tensor_parallel_size, pipeline_parallel_size) and entrypoints/openai/cli_args.py
(api_server_count, a `vllm serve` option: entrypoints/cli/serve.py runs that many API processes for one engine).

The parallel layout is searched only where several GPUs are visible, and no configuration may ask for more GPUs than
are visible (tensor_parallel_size x pipeline_parallel_size at their largest, so every pair the space holds fits).
A trial on N GPUs is scored per GPU (tune_trial.TrialResult.score): twice the goodput on twice the GPUs is no gain.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from ..engines.vllm_spec import SPEC_METHODS, acceptance_rates, speculative_config
from ..errors import QwenoptError

DEFAULT = "default"
SPEC_OFF = "off"
# vLLM 0.26 choices for the knobs that take names (a --space value outside them is refused before any start)
LINEAR_BACKENDS = ("auto", "cutlass", "flashinfer_cutlass", "flashinfer_cutedsl", "flashinfer_trtllm",
                   "flashinfer_cudnn", "flashinfer_b12x", "marlin", "humming", "triton", "deep_gemm", "torch",
                   "aiter", "machete", "fbgemm", "conch", "exllama", "emulation", "xpu", "xpu_woq")
CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")
CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
QUANT_FORMATS = ("awq", "gptq")
PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")  # config/vllm.py PerformanceMode


@dataclass(frozen=True)
class Knob:
    name: str  # vLLM's engine-argument name (cudagraph_mode: the key of --compilation-config)
    choices: tuple  # the first is the default
    help: str
    int4_only: bool = False
    allowed: tuple | None = None  # every value vLLM takes, where it is a closed set
    kind: type | None = None  # int or float for numeric knobs


KNOBS = (
    Knob("linear_backend", ("auto", "machete", "marlin"), "int4 GEMM kernel (auto picks Machete on Hopper)",
         int4_only=True, allowed=LINEAR_BACKENDS),
    Knob("quantization", ("awq", "gptq"), "int4 weight format (fixed by --quant)", int4_only=True,
         allowed=QUANT_FORMATS),
    Knob("max_num_seqs", (DEFAULT, 64, 128, 256, 512), "sequences per step (default 1024 on >= 70 GiB GPUs)",
         kind=int),
    Knob("max_num_batched_tokens", (DEFAULT, 2048, 4096, 16384), "tokens per step (default 8192 on >= 70 GiB)",
         kind=int),
    Knob("enable_chunked_prefill", (DEFAULT, False), "split long prefills across steps (default on)"),
    Knob("gpu_memory_utilization", (DEFAULT, 0.95), "share of GPU memory for weights + KV cache (default 0.9)",
         kind=float),
    Knob("kv_cache_dtype", ("auto", "fp8"), "KV cache storage type", allowed=CACHE_DTYPES),
    Knob("cudagraph_mode", (DEFAULT, "PIECEWISE", "FULL_DECODE_ONLY"),
         "CUDA graph mode (compilation_config; default FULL_AND_PIECEWISE)", allowed=CUDAGRAPH_MODES),
    Knob("enforce_eager", (DEFAULT, True), "no CUDA graphs, no torch.compile"),
    Knob("async_scheduling", (DEFAULT, False), "schedule the next step while this one runs (default: on where "
                                               "supported)"),
    Knob("enable_prefix_caching", (DEFAULT, False), "reuse KV of shared prefixes (default on)"),
    Knob("stream_interval", (DEFAULT, 4, 16), "tokens per streamed chunk (default 1): fewer chunks, less host work "
                                              "per token; ITL then times the gaps between chunks", kind=int),
    Knob("performance_mode", (DEFAULT, "interactivity", "throughput"),
         "vLLM's runtime trade-off (default balanced): interactivity captures CUDA graphs at every batch size up to "
         "32; throughput doubles the default max_num_batched_tokens and max_num_seqs", allowed=PERFORMANCE_MODES),
    Knob("api_server_count", (DEFAULT, 2, 4), "API server processes in front of the one engine (default 1): HTTP, "
                                              "tokenising and streaming in parallel", kind=int),
)
# speculative decoding at an ASSUMED acceptance (engines/vllm_spec.py): the per-token rate, the draft tokens, the
# drafter (an EAGLE-3 head unless --space names draft_model too)
SPEC_KNOBS = ("spec_acceptance", "num_speculative_tokens", "spec_method")
# the parallel layout: the server's --tensor-parallel-size / --pipeline-parallel-size (start_server's tp, pp), and
# the GPUs a trial occupies; default 1 each (vLLM's)
PARALLEL_KNOBS = ("tensor_parallel_size", "pipeline_parallel_size")
KNOB_NAMES = tuple(k.name for k in KNOBS) + PARALLEL_KNOBS + SPEC_KNOBS
# knobs the launcher sets itself when not given (bench's settings): "default" must undo that to be vLLM's
LAUNCHER_SETS = {"enable_prefix_caching"}
# knobs added after searches were recorded (results/h200/tune/v2): while a space fixes one at its default, it stays
# out of the study key, so those searches still resume (their trials ran it at vLLM's default: it had no flag yet)
KNOBS_ADDED_LATER = ("performance_mode", "api_server_count")


def _value(text: str):
    """A --space value: true/false, an int, a float, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(low)
        except ValueError:
            pass
    return text.strip()


def parse_space(text: str | None, int4: bool, quant: str | None,
                spec_acceptance: list[float] | None = None, gpus: int = 1, heads: int | None = None,
                tp: int | None = None) -> dict[str, tuple]:
    """The search space {knob: choices}: every knob of KNOBS for the regime, or with --space
    'max_num_seqs=64,128;kv_cache_dtype=auto,fp8' only the knobs listed, with exactly the values given (the others
    stay at their default; speculation, when asked for, still varies unless listed).

    `gpus` visible GPUs: with two or more, tensor_parallel_size is a knob (powers of two up to `gpus` that divide
    the model's `heads` attention heads, as vLLM requires), unless `tp` (--tp) fixes it; pipeline_parallel_size only
    where --space lists it. A space whose largest tp x pp exceeds `gpus` is refused."""
    space = {k.name: k.choices if text is None else k.choices[:1] for k in KNOBS if int4 or not k.int4_only}
    if int4 and quant:
        space["quantization"] = (quant,)
    if tp is not None and (tp > 1 or gpus >= 2):  # --tp fixes the size (where there is a choice to fix)
        space["tensor_parallel_size"] = (tp,)
    elif gpus >= 2 and text is None:
        space["tensor_parallel_size"] = tuple(n for n in (1, 2, 4, 8, 16)
                                              if n <= gpus and (not heads or heads % n == 0))
    if spec_acceptance:
        space["spec_acceptance"] = (SPEC_OFF, *spec_acceptance)
        space["num_speculative_tokens"] = (2, 3, 4)
        space["spec_method"] = SPEC_METHODS[:1]
    for name, choices in space_items(text):
        if name not in KNOB_NAMES:
            raise QwenoptError(f"--space: unknown knob {name!r}; knobs: {', '.join(KNOB_NAMES)}")
        if name not in space and name not in PARALLEL_KNOBS:
            why = "vllm-int4 only" if name in ("linear_backend", "quantization") else "needs --spec-acceptance"
            raise QwenoptError(f"--space: {name} does not apply here ({why})")
        if name == "quantization" and quant:
            raise QwenoptError("--space quantization and --quant both fix the int4 format; give one")
        if name == "tensor_parallel_size" and tp is not None:
            raise QwenoptError("--space tensor_parallel_size and --tp both fix the tensor parallel size; give one")
        for value in choices:
            check_value(name, value)
            if name == "tensor_parallel_size" and heads and heads % value:
                raise QwenoptError(f"--space: tensor_parallel_size {value} does not divide the model's {heads} "
                                   f"attention heads (vLLM refuses it)")
        space[name] = choices
    check_gpus(space, gpus)
    return space


def key_space(space: dict[str, tuple]) -> dict[str, list]:
    """The space as a study's key holds it: every knob and its choices, but a knob added later only where it varies
    or is set away from its default."""
    return {k: list(v) for k, v in space.items() if not (k in KNOBS_ADDED_LATER and tuple(v) == (DEFAULT,))}


def gpus_of(config: dict, tp: int = 1) -> int:
    """The GPUs a configuration occupies: tensor x pipeline parallel size (`tp` where the space has no tp knob)."""
    return int(config.get("tensor_parallel_size", tp)) * int(config.get("pipeline_parallel_size", 1))


def check_gpus(space: dict[str, tuple], gpus: int) -> None:
    """Refuse a space whose largest layout needs more GPUs than are visible (a layout of one GPU is always let
    through: without a GPU the server says so itself)."""
    need = max(space.get("tensor_parallel_size", (1,))) * max(space.get("pipeline_parallel_size", (1,)))
    if need > 1 and need > gpus:
        raise QwenoptError(f"--space: tensor_parallel_size x pipeline_parallel_size up to {need} needs {need} GPUs; "
                           f"{gpus} visible")


def space_items(text: str | None):
    """--space 'KNOB=V1,V2;KNOB=V3' -> (knob, its values parsed, in order, once each) per item, the format checked."""
    for item in filter(None, (part.strip() for part in (text or "").split(";"))):
        name, eq, values = item.partition("=")
        if not eq or not values.strip():
            raise QwenoptError(f"--space items are KNOB=V1,V2 separated by ';', got {item!r}")
        yield name.strip(), tuple(dict.fromkeys(_value(v) for v in values.split(",") if v.strip()))


def parse_tries(texts: list[str] | None, space: dict[str, tuple], knobs: "EngineKnobs") -> tuple[dict, ...]:
    """--try 'linear_backend=marlin;kv_cache_dtype=fp8' (repeatable) -> whole configurations of the space: the knobs
    named take the value given, which must be one of the space's choices; the others stay at the engine's default."""
    configs = []
    for text in texts or []:
        config = knobs.defaults(space)
        for name, values in space_items(text):
            if name not in space:
                raise QwenoptError(f"--try: {name} is not a knob of this search; its knobs: {', '.join(space)}")
            if len(values) != 1 or values[0] not in space[name]:
                raise QwenoptError(f"--try: {name} takes one of this search's values "
                                   f"({', '.join(map(str, space[name]))}), got {','.join(map(str, values))}")
            config[name] = values[0]
        configs.append(config)
    return tuple(configs)


def check_value(name: str, value) -> None:
    """Refuse a value vLLM 0.26 would refuse (or that means nothing), before any server starts."""
    knob = next((k for k in KNOBS if k.name == name), None)
    if value == DEFAULT and name not in ("quantization", "spec_acceptance"):
        return
    bad = None
    if name == "spec_acceptance":
        bad = value != SPEC_OFF and not (isinstance(value, (int, float)) and 0 < value <= 1)
    elif name == "spec_method":
        bad = value not in SPEC_METHODS
    elif name in ("num_speculative_tokens", *PARALLEL_KNOBS):
        bad = not (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    elif knob.allowed is not None:
        bad = value not in knob.allowed
    elif knob.kind is int:
        bad = not (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    elif knob.kind is float:
        bad = not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1)
    else:
        bad = not isinstance(value, bool)
    if bad:
        choices = knob.allowed if knob else (SPEC_METHODS if name == "spec_method" else None)
        allowed = f" (one of {', '.join(map(str, choices))})" if choices else ""
        raise QwenoptError(f"--space: {value!r} is not a value of {name}{allowed}")


def defaults(space: dict[str, tuple]) -> dict:
    """Trial 0: every knob at vLLM's default (the regime's int4 format), whatever the space's choices."""
    base = {k.name: k.choices[0] for k in KNOBS if k.name in space}
    if "quantization" in space:
        base["quantization"] = space["quantization"][0] if len(space["quantization"]) == 1 else "awq"
    if "spec_acceptance" in space:
        base.update(spec_acceptance=SPEC_OFF, num_speculative_tokens=space["num_speculative_tokens"][0],
                    spec_method=space["spec_method"][0])
    for name in PARALLEL_KNOBS:  # vLLM's 1, unless the space fixes another (--tp 2)
        if name in space:
            base[name] = space[name][0] if len(space[name]) == 1 else 1
    return base


def changed(config: dict) -> dict:
    """The knobs set away from their default (the speculative ones only with speculation on): the trial_config."""
    base = {k.name: k.choices[0] for k in KNOBS} | {name: 1 for name in PARALLEL_KNOBS}
    out = {k: v for k, v in config.items() if k not in SPEC_KNOBS and v != base.get(k)}
    if config.get("spec_acceptance", SPEC_OFF) != SPEC_OFF:
        out.update(spec_acceptance=config["spec_acceptance"], num_speculative_tokens=config["num_speculative_tokens"],
                   spec_method=config.get("spec_method", SPEC_METHODS[0]))
    if config.get("quantization") == "awq":
        out.pop("quantization", None)
    return out


def runs_as(config: dict) -> dict:
    """The configuration as the server runs it: with speculation off, its token count and drafter do nothing."""
    if config.get("spec_acceptance", 0) != SPEC_OFF:  # on, or no speculation in the space: as it is
        return config
    return {k: v for k, v in config.items() if k not in ("num_speculative_tokens", "spec_method")}


def engine_args_of(config: dict, drafters: dict[str, str] | None = None) -> dict:
    """vLLM engine arguments (Python names) for a configuration; `quantization` goes to --quant and the parallel
    sizes to start_server's tp and pp (which also count the row's GPUs), not here. `drafters`: the random-weight
    folder of each speculative method (engines/vllm_spec.drafter_dir)."""
    args: dict = {}
    for name, value in config.items():
        if name in SPEC_KNOBS or name in PARALLEL_KNOBS or name == "quantization":
            continue
        if value in (DEFAULT, "auto"):
            if name in LAUNCHER_SETS:
                args[name] = None  # leave it to vLLM, over the launcher's own setting
            continue
        if name == "cudagraph_mode":
            args["compilation_config"] = {"cudagraph_mode": value}
        else:
            args[name] = value
    acceptance = config.get("spec_acceptance", SPEC_OFF)
    if acceptance != SPEC_OFF:
        method = config.get("spec_method", SPEC_METHODS[0])
        if not drafters or method not in drafters:
            raise QwenoptError(f"speculative decoding with {method} needs its drafter's folder")
        tokens = int(config["num_speculative_tokens"])
        args["speculative_config"] = speculative_config(method, drafters[method], tokens,
                                                        rates=acceptance_rates(acceptance, tokens))
    return args


def config_json(config: dict) -> str:
    return json.dumps(changed(config), sort_keys=True)


def grid_size(space: dict[str, tuple]) -> int:
    """Configurations a full grid over the space would start (speculation off counts once, not per token count or
    drafter)."""
    size = 1
    for name, choices in space.items():
        if name in ("num_speculative_tokens", "spec_method"):
            continue
        if name == "spec_acceptance":
            size *= 1 + (len(choices) - 1) * len(space["num_speculative_tokens"]) * len(space.get("spec_method", (1,)))
        else:
            size *= len(choices)
    return size


@dataclass(frozen=True)
class EngineKnobs:
    """What the search, a trial and the outcome need to know of one engine's knobs: vLLM's (here) or transformers
    serve's (tune_space_hf.py). The search itself is the same for both."""
    label: str  # how the outcome names trial 0's configuration
    defaults: Callable[[dict], dict]  # the space -> trial 0: every knob at the engine's default
    changed: Callable[[dict], dict]  # a configuration -> the knobs set away from their default (trial_config)
    grid_size: Callable[[dict], int]  # configurations a full grid over the space would start
    serve_prefix: str  # what a ready serve line starts with, before `serve MODEL --flags`
    canonical: Callable[[dict], dict] | None = None  # the configuration as the server runs it (None: as it is):
    # two that differ only in knobs that then do nothing are one configuration, measured once

    def runs_as(self, config: dict) -> dict:
        return self.canonical(config) if self.canonical else config

    def config_json(self, config: dict) -> str:
        return json.dumps(self.changed(config), sort_keys=True)

    def serve_line(self, command: list[str]) -> str | None:
        """`vllm serve MODEL --flags` (or `transformers serve ...`) from the launcher's argv (python -m ... serve)."""
        if "serve" not in command:
            return None
        return self.serve_prefix + shlex.join(command[command.index("serve"):])


VLLM = EngineKnobs("vLLM defaults", defaults, changed, grid_size, "VLLM_USE_FLASHINFER_SAMPLER=0 vllm ", runs_as)
