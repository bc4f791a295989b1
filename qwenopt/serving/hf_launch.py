"""Start `transformers serve` (transformers' own OpenAI-compatible server) for an hf regime, and stop it.

This is how a transformers-only deployment serves the model, so the HF baseline's online figures are
the ones such a deployment gets: plain (one `generate` at a time) or `--continuous-batching`.

The command is `python -m transformers.cli.transformers serve MODEL ...`, the module behind the
`transformers` console script in 5.17 and 5.24, run by this interpreter. MODEL is the forced model:
a local folder (random weights are saved once into the qwenopt cache, with qwenopt's round-tripping
tokenizer, since the server tokenizes text) or a Hub id.

What a client must know of transformers serve 5.17 (cli/serving/completion.py, utils.py):
  - `prompt` must be a string (a list of token ids gets 400 "prompt must be a string.");
  - the body may hold only the OpenAI fields plus `generation_config` (a JSON string), `seed` and
    `stream`: `ignore_eos`, `min_tokens` and other extras get 422 "Unexpected fields in the request";
    `stream_options` is accepted and ignored (usage is always sent);
  - `model`, if given, must equal the forced model string (`Server.model`), else 400;
  - the stream has no `data: [DONE]`: its last chunk carries `usage`, `finish_reason` and empty text;
    a token whose bytes do not yet form text is sent with the next one, so count tokens from usage;
  - `generation_config` replaces the model's whole generation config; `max_tokens` then sets
    `max_new_tokens`. See `transformers_request_extras` for forcing output lengths.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..engines.base import EngineOptions
from ..errors import QwenoptError
from ..regimes import RegimeSpec
from ..tokenizer import has_tokenizer, write_for_config
from . import launcher

SERVE_MODULE = "transformers.cli.transformers"  # [console_scripts] transformers = ...:main
SERVE_PACKAGES = ("fastapi", "uvicorn", "openai", "pydantic")  # transformers' is_serve_available()
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
QUANTIZATION = {"none": None, "nf4": "bnb-4bit"}  # bnb-4bit: NF4 with double quant (model_manager.py)
SWITCH = re.compile(r"Switching from \S+ to (flash_attention_\d)")  # the continuous-batching worker's warning
WARMUP_PROMPT = " a b c d e f g h"  # words of qwenopt's random-weight tokenizer; plain text for a real one
# --cb-* settings of transformers serve 5.17 (cli/serve.py) -> their kinds
CB_SETTINGS = {"block_size": int, "num_blocks": int, "max_batch_tokens": int, "max_memory_percent": float,
               "use_cuda_graph": bool}


def require_serve() -> None:
    missing = [p for p in SERVE_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise QwenoptError(f"transformers serve needs {', '.join(missing)}: install it with pip install 'qwenopt[serve]'")


def check_regime(spec: RegimeSpec) -> None:
    from ..attention import get_kernel, installed

    if spec.engine != "hf" or spec.quant not in QUANTIZATION:
        raise QwenoptError(f"transformers serve launches hf-fp16, hf-nf4, hf-fa2 and hf-fa4, not {spec.name!r}")
    kernel = get_kernel(spec.attn)
    if kernel.distribution and not installed(kernel.distribution):
        # bench falls back to SDPA pinned to its flash backend for hf-fa2; the server can only ask for the package
        raise QwenoptError(f"{spec.name} served by transformers needs {kernel.distribution}: install it with "
                           f"pip install 'qwenopt[{kernel.extra}]'")


def cb_flags(cb_args: dict | None) -> list[str]:
    """{"num_blocks": 4096, "use_cuda_graph": False} -> ["--cb-num-blocks", "4096", "--no-cb-use-cuda-graph"]."""
    argv: list[str] = []
    for key, value in (cb_args or {}).items():
        if key not in CB_SETTINGS:
            raise QwenoptError(f"unknown continuous-batching setting {key!r}; choose from {', '.join(CB_SETTINGS)}")
        if value is None:
            continue
        flag = "cb-" + key.replace("_", "-")
        if CB_SETTINGS[key] is bool:
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(CB_SETTINGS[key](value))]
    return argv


def served_attention(name: str) -> str:
    """The attn_implementation transformers serve gets for a kernel of attention.py; serve takes only the name, so
    a kernel that needs more (SDPA pinned to one backend, flash-attn-4's num_splits) cannot be served."""
    from ..attention import get_kernel

    kernel = get_kernel(name)
    if kernel.sdpa_backend or kernel.num_splits is not None:
        raise QwenoptError(f"transformers serve takes an attn_implementation name only, so it cannot run {name} "
                           f"(qwenopt runs that kernel in process: bench --attn {name})")
    return kernel.transformers_name


def serve_command(spec: RegimeSpec, options: EngineOptions, model: str, port: int, host: str = "127.0.0.1",
                  continuous_batching: bool = False, cb_args: dict | None = None) -> list[str]:
    """The argv of `transformers serve` for the regime: its dtype, attention, quantization and decode mode."""
    if cb_args and not continuous_batching:
        raise QwenoptError("continuous-batching settings need --continuous-batching")
    argv = [sys.executable, "-m", SERVE_MODULE, "serve", model,
            "--device", options.device, "--dtype", DTYPES[options.dtype],
            "--attn-implementation", served_attention(options.attn or spec.attn)]
    if QUANTIZATION[spec.quant]:
        argv += ["--quantization", QUANTIZATION[spec.quant]]
    if options.compile:
        argv.append("--compile")  # static KV cache + torch.compile on the plain path
    if continuous_batching:
        argv += ["--continuous-batching", *cb_flags(cb_args)]
    return [*argv, "--default-seed", str(options.seed), "--host", host, "--port", str(port)]


def model_folder(options: EngineOptions) -> str:
    """The forced model: the real weights' location, or the random checkpoint saved once, with a tokenizer."""
    source = options.source
    if source.weights != "random":
        return str(source.location)
    from ..engines.hf import random_checkpoint

    folder = random_checkpoint(source, options.dtype, options.seed)
    if not has_tokenizer(folder):
        write_for_config(folder, source.config)
    return str(folder)


def transformers_request_extras(continuous_batching: bool, output_len: int) -> dict:
    """Body fields that make transformers serve produce exactly output_len tokens (it refuses ignore_eos).

    `max_tokens` caps the output. EOS is kept away by what each path honours: the plain path's
    `generate` takes `min_new_tokens`; the continuous-batching path passes only `max_new_tokens` and
    `eos_token_id` of the request on, so its EOS id is set to one no token has. `generation_config`
    replaces the model's (do_sample False: greedy). Send the same on every request: continuous
    batching takes its shared sampling settings from the first request it sees."""
    config = {"eos_token_id": -1} if continuous_batching else {"min_new_tokens": output_len}
    return {"max_tokens": output_len, "generation_config": json.dumps(config)}


def switched_attention(log_path: str | Path | None) -> str | None:
    """The kernel continuous batching switched to, from the server's log, or None. transformers 5.17 and 5.24
    (continuous_api.switch_to_cb_friendly_attn) replace sdpa or eager by flash_attention_3 or _2 wherever one is
    installed (or loadable through `kernels`), and say so in a warning: the row must name what ran."""
    if log_path is None or not Path(log_path).is_file():
        return None
    found = SWITCH.findall(Path(log_path).read_text(errors="replace"))
    return found[-1] if found else None


def warm_up(server: launcher.Server, continuous_batching: bool, timeout_s: float) -> None:
    """One short completion before the load: the continuous-batching worker starts on the first request
    (transformers 5.17 on the CPU: 43 s for the tiny model, then 0.3 s a request), so a load would
    otherwise meet it as one slow request. It carries the same extras as the load's requests, because
    continuous batching keeps the first request's sampling settings for all."""
    import httpx

    body = {"model": server.model, "prompt": WARMUP_PROMPT, "stream": False,
            **transformers_request_extras(continuous_batching, 2)}
    try:
        response = httpx.post(f"{server.base_url}/completions", json=body, timeout=timeout_s, trust_env=False)
        error = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:300]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__} {exc}"
    if error:
        raise QwenoptError(f"transformers serve failed its warm-up request ({error}); "
                           f"last lines of {server.log_path}:\n{launcher.log_tail(server.log_path)}")


@contextmanager
def launch_transformers(spec: RegimeSpec, options: EngineOptions, port: int = 8000,
                        log_path: str | Path | None = None, continuous_batching: bool = False,
                        cb_args: dict | None = None, ready_timeout_s: float = 600,
                        host: str = "127.0.0.1", warmup: bool = True) -> Iterator[launcher.Server]:
    """Run `transformers serve` for the regime while the block runs; yields a Server once /health answers
    and (warmup) one short completion came back. startup_s is to /health: the forced model is loaded
    before the server listens. --compile's graphs still compile on the first requests of each shape."""
    check_regime(spec)
    require_serve()
    model = model_folder(options)
    command = serve_command(spec, options, model, port, host, continuous_batching, cb_args)
    env = dict(os.environ)  # CUDA_VISIBLE_DEVICES, HF_HOME and the rest pass through untouched
    env.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")  # the CLI asks PyPI for a newer version at start
    env.setdefault("PYTHONUNBUFFERED", "1")  # a failed start shows its last lines in the error
    with launcher.run_server(command, "transformers serve", port, host, log_path, ready_timeout_s, env) as (
            root, process, log, up_s):
        server = launcher.Server(base_url=f"{root}/v1", model=model, startup_s=up_s, log_path=log,
                                 command=command, process=process, dialect="transformers")
        if warmup:
            warm_up(server, continuous_batching, ready_timeout_s)  # the continuous-batching worker starts here
            server.attn = switched_attention(log) if continuous_batching else None
        yield server
