"""The settings `tune --launch hf-*` searches, each by `transformers serve`'s own parameter name, and what each
turns into when the server starts.

The names are the parameters of `transformers.cli.serve.Serve` (its typer options: `continuous_batching` is
`--continuous-batching`, `cb_num_blocks` is `--cb-num-blocks`), the same in transformers 5.17 and 5.24. The
`--cb-*` settings fill transformers' `ContinuousBatchingConfig` and only matter with continuous batching on.
A knob the installed transformers' serve does not take is refused, never guessed: `serve_parameters()` reads
them from the installed `Serve`.

Each knob's first choice is what `transformers serve` does when the flag is left out (trial 0 runs them all),
"default" where transformers decides by itself (continuous batching sizes its cache from free memory), with two
exceptions the regime fixes: the attention kernel (the regime's: sdpa, transformers' own default, for hf-fp16
and hf-nf4) and the dtype (qwenopt's --dtype, else bf16 on a GPU and fp32 on the CPU; for a random-weight
checkpoint that is the dtype it is saved in, which is what serve's `--dtype auto` picks). On the CPU the
continuous-batching cache has no default: transformers sizes it from 90% of the host's RAM there.
"""
from __future__ import annotations

import functools
import math

from ..errors import QwenoptError
from .hf_launch import CB_SETTINGS, DTYPES
from .tune_space import DEFAULT, EngineKnobs, Knob, space_items

GATE = "continuous_batching"  # the cb_* knobs matter only with it on
CB_KNOBS = tuple(f"cb_{name}" for name in CB_SETTINGS)  # --cb-* of transformers serve 5.17 / 5.24
SERVE_DTYPES = {serve: ours for ours, serve in DTYPES.items()}  # bfloat16 -> bf16 ...
# a knob's kind where it is not a plain bool; the choices searched when --space does not list it (cuda, cpu)
KINDS = {"cb_block_size": int, "cb_num_blocks": int, "cb_max_batch_tokens": int, "cb_max_memory_percent": float,
         "attn_implementation": str, "dtype": str}
SEARCHED = {
    "continuous_batching": ((False, True), (False, True)),
    "compile": ((False, True), (False, True)),
    "cb_num_blocks": ((DEFAULT, 512, 2048), (64, 256)),
    "cb_max_batch_tokens": ((DEFAULT, 1024, 4096), (DEFAULT, 256, 1024)),
    "cb_block_size": ((DEFAULT, 32, 128), (DEFAULT, 32)),
    "cb_use_cuda_graph": ((DEFAULT, False, True), None),  # CUDA graphs: GPUs only
    "cb_max_memory_percent": (None, None),  # --space only
}


@functools.lru_cache(maxsize=1)
def serve_parameters() -> tuple[str, ...]:
    """The parameters of the installed transformers serve (its CLI options, by their Python names)."""
    import inspect

    try:
        from transformers.cli.serve import Serve
    except ImportError as exc:
        raise QwenoptError(f"this transformers has no `transformers serve` to tune ({exc})") from None
    return tuple(inspect.signature(Serve.__init__).parameters)


def knob_names() -> tuple[str, ...]:
    return ("continuous_batching", "compile", "attn_implementation", "dtype", *CB_KNOBS)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def servable_kernels(device: str, capability) -> list[str]:
    """attention.py kernels transformers serve can run here: a name it takes as is, the package there, the GPU."""
    from ..attention import kernels_here

    kernels = kernels_here(capability if device == "cuda" else None)
    return [k.name for k, why in kernels if why is None and not k.sdpa_backend and k.num_splits is None]


def make_knobs(regime_attn: str, dtype: str, device: str, capability=None) -> tuple[Knob, ...]:
    """The knobs for this regime and machine, each with its searched choices (the first: serve's default)."""
    gpu = device == "cuda"
    kernels = servable_kernels(device, capability)
    dtypes = [DTYPES[dtype]] + ([] if gpu else [d for d in ("bfloat16", "float32") if d != DTYPES[dtype]])
    knobs = [Knob("attn_implementation", tuple(dict.fromkeys([regime_attn, *kernels])), "attention kernel",
                  allowed=tuple(kernels) or (regime_attn,), kind=str),
             Knob("dtype", tuple(dtypes), "weights and compute dtype (the regime's by default)",
                  allowed=tuple(SERVE_DTYPES), kind=str)]
    for name, per_device in SEARCHED.items():
        choices = per_device[0 if gpu else 1] or (DEFAULT if name in CB_KNOBS else False,)
        knobs.append(Knob(name, tuple(choices), f"transformers serve {flag(name)}", kind=KINDS.get(name)))
    return tuple(knobs)


def parse_hf_space(text: str | None, knobs: tuple[Knob, ...]) -> dict[str, tuple]:
    """{knob: choices}: the searched choices of every knob the installed serve takes (a knob with one choice stays
    put), or with --space 'continuous_batching=true;cb_num_blocks=64,256' only the knobs listed, with those values."""
    known = serve_parameters()
    by_name = {k.name: k for k in knobs}
    space = {k.name: (k.choices if text is None else k.choices[:1]) for k in knobs if k.name in known}
    for name, choices in space_items(text):
        if name not in by_name:
            raise QwenoptError(f"--space: {name!r} is not a transformers serve setting qwenopt tunes; knobs: "
                               f"{', '.join(by_name)}")
        if name not in known:
            import transformers

            raise QwenoptError(f"--space: transformers {transformers.__version__}'s serve has no {flag(name)}")
        for value in choices:
            _check(by_name[name], value)
        space[name] = choices
    return space


def _check(knob: Knob, value) -> None:
    if value == DEFAULT and knob.name in CB_KNOBS:
        return
    if knob.kind is int:
        bad = not (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    elif knob.kind is float:
        bad = not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1)
    elif knob.kind is str:
        bad = value not in knob.allowed
    else:
        bad = not isinstance(value, bool)
    if bad:
        allowed = f" (one of {', '.join(map(str, knob.allowed))} here)" if knob.allowed else ""
        raise QwenoptError(f"--space: {value!r} is not a value of {knob.name}{allowed}")


def canonical(config: dict) -> dict:
    """The configuration as the server runs it: with continuous batching off, its settings are left out."""
    if config.get(GATE):
        return dict(config)
    return {k: v for k, v in config.items() if k not in CB_KNOBS}


def launch_settings(config: dict) -> dict:
    """start_server's arguments for a configuration: continuous_batching, compile, attn, dtype (qwenopt's name) and
    the cb_* engine arguments it turns into --cb-* flags (those left at "default" are not passed)."""
    run = canonical(config)
    return {"continuous_batching": bool(run.get(GATE, False)), "compile": bool(run.get("compile", False)),
            "attn": run.get("attn_implementation"),
            "dtype": SERVE_DTYPES[run["dtype"]] if "dtype" in run else None,
            "engine_args": {k: v for k, v in run.items() if k in CB_KNOBS and v != DEFAULT}}


def hf_knobs(knobs: tuple[Knob, ...]) -> EngineKnobs:
    """The search's view of transformers serve's knobs (trial 0, trial_config, grid, serve line)."""
    base = {k.name: k.choices[0] for k in knobs}

    def defaults(space: dict) -> dict:
        return {name: base[name] for name in space}

    def changed(config: dict) -> dict:
        return {k: v for k, v in canonical(config).items() if v != base.get(k)}

    def grid_size(space: dict) -> int:
        rest = math.prod(len(v) for k, v in space.items() if k != GATE and k not in CB_KNOBS)
        batched = math.prod(len(v) for k, v in space.items() if k in CB_KNOBS)
        return rest * sum(batched if on else 1 for on in space.get(GATE, (False,)))

    return EngineKnobs("transformers serve defaults", defaults, changed, grid_size, "transformers ",
                       canonical=canonical)


def hf_space(spec, text: str | None, device: str | None, dtype: str | None, quant: str | None, extra_args: dict):
    """(the space, its EngineKnobs, config -> start_server's arguments) for an hf regime on this machine; the
    regime's server checked first (its package, serve's own dependencies)."""
    from ..attention import gpu_capability
    from ..bench import gpu_count
    from .hf_launch import check_regime, require_serve

    check_regime(spec)
    require_serve()
    gpus = gpu_count()
    device = device if device not in (None, "auto") else ("cuda" if gpus else "cpu")
    if device not in ("cuda", "cpu") or (device == "cuda" and not gpus):
        raise QwenoptError(f"--device must be auto, cuda (with a CUDA GPU visible) or cpu, got {device!r}")
    dtype = dtype if dtype not in (None, "auto") else ("bf16" if device == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise QwenoptError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    knobs = make_knobs(spec.attn, dtype, device, gpu_capability() if device == "cuda" else None)
    space = parse_hf_space(text, knobs)

    def launch_args(config: dict) -> dict:
        settings = launch_settings(config)
        return {**settings, "device": device, "quant": quant, "engine_args": {**extra_args, **settings["engine_args"]}}

    return space, hf_knobs(knobs), launch_args
