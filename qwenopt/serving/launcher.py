"""Start `vllm serve` for a regime, wait until it answers, and stop it with everything it spawned.

The server gets the offline engine's settings (`engine_args`), spelled as vLLM 0.26's CLI flags, so an
online figure and an offline one differ by the serving path only. A random-weight folder carries qwenopt's
round-tripping tokenizer, so the server loads it (no `--skip-tokenizer-init`) and takes text prompts
(vllm bench serve, guidellm, aiperf) as well as token-id ones; `usage.completion_tokens`
(stream_options.include_usage) counts the generated token ids. A folder without one is still served
with `--skip-tokenizer-init` (token-id prompts only, chunks with empty text).

`launch_server` is the one entry point: it starts `vllm serve` for vllm regimes and `transformers serve`
(serving/hf_launch.py) for hf ones; both share the port check, readiness wait and group stop below.

The command is `python -m vllm.entrypoints.cli.main serve`, the module behind the `vllm` console script,
run by this interpreter so no PATH lookup can pick another environment's vLLM. vLLM must be pip-installed
either way: 0.26 reads its own package metadata to detect the CUDA platform.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..engines.base import EngineOptions
from ..engines.vllm import engine_args, model_location, resolve_quant
from ..errors import QwenoptError
from ..regimes import RegimeSpec
from ..tokenizer import has_tokenizer

SERVED_MODEL = "qwenopt"
# Flags vLLM 0.26 registers with action="store_true" (engine/arg_utils.py, entrypoints/openai/cli_args.py):
# they have no --no- form, so False means leaving them out. Every other bool is a BooleanOptionalAction.
STORE_TRUE = {"disable_log_stats", "aggregate_engine_logging", "headless", "grpc",
              "data_parallel_multi_port_external_lb"}
POLL_S = 0.25  # between readiness checks
STOP_GRACE_S = 30.0  # SIGINT, SIGTERM, each with half of it, then SIGKILL
LOG_TAIL_LINES = 25


def cli_flags(args: dict) -> list[str]:
    """Keyword arguments of `vllm.LLM` as `vllm serve` flags: booleans as --x/--no-x, dicts as JSON."""
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue  # vLLM's own default
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif key not in STORE_TRUE:
                argv.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):  # nargs="+" options
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def serve_command(spec: RegimeSpec, options: EngineOptions, model_dir: str, port: int,
                  host: str = "127.0.0.1") -> list[str]:
    """The argv of `vllm serve` equivalent to the offline engine's `engine_args`; host and port always ours."""
    args = {
        "served_model_name": SERVED_MODEL,
        # one log line per request, written by the API server process the benchmark loads
        "disable_uvicorn_access_log": True,
        **engine_args(spec, options, model_dir),  # pass-through engine_args last, as offline
        "host": host,
        "port": port,
    }
    if has_tokenizer(model_dir) and "skip_tokenizer_init" not in options.engine_args:
        args.pop("skip_tokenizer_init", None)  # the folder has qwenopt's tokenizer: serve text too
    model = str(args.pop("model"))
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, *cli_flags(args)]


@dataclass
class Server:
    base_url: str  # OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1
    model: str  # the served model name requests must use
    startup_s: float  # process start to the first healthy answer
    log_path: Path
    command: list[str]
    process: subprocess.Popen
    dialect: str = "vllm"  # whose OpenAI dialect it speaks: "vllm" or "transformers" (stream and body quirks)
    attn: str | None = None  # transformers serve: the attention kernel its log says it switched to, if it did
    compile_cache: str | None = None  # vllm serve: whether its torch.compile graphs were compiled or loaded (below)


def served_name(options: EngineOptions) -> str:
    """The model name requests must use: qwenopt's, unless the engine args chose one (the first, if several)."""
    name = options.engine_args.get("served_model_name") or SERVED_MODEL
    return name if isinstance(name, str) else name[0]


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise QwenoptError("serving needs vllm: install it with pip install 'qwenopt[vllm]'")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


COMPILED, LOADED = "Compiling a graph for", "Directly load the compiled graph"  # vLLM 0.26's backends.py log lines


def compile_cache(path: Path) -> str | None:
    """Whether this start compiled its torch.compile graphs ("compiled"), loaded them from vLLM's compile cache
    (~/.cache/vllm/torch_compile_cache, "loaded"), or some of each ("mixed"); None where the log shows neither
    (enforce_eager, no log). Said per row because in both A/A runs of vLLM's defaults on the H200 the start that
    compiled had the lowest P99 at every rate (results/h200/README.md): whether the cache or start order did it,
    only rows that say which start loaded can tell."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    compiled, loaded = COMPILED in text, LOADED in text
    return "mixed" if compiled and loaded else "compiled" if compiled else "loaded" if loaded else None


def check_port_free(host: str, port: int) -> None:
    """A server already on the port would answer our health checks and pass for the one we start."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as vLLM binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise QwenoptError(f"port {port} on {host} is in use ({exc.strerror}); pick another with --port") from None


def wait_ready(process: subprocess.Popen, health_url: str, log_path: Path, timeout_s: float,
               name: str = "vllm serve") -> None:
    """Poll GET /health until 200 (both servers answer only once the model is loaded); fail fast if it dies."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0, trust_env=False) as client:  # no proxy between us and localhost
        while True:
            if process.poll() is not None:
                raise QwenoptError(f"{name} exited with code {process.returncode} before it was ready; "
                                   f"last lines of {log_path}:\n{log_tail(log_path)}")
            try:
                if client.get(health_url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise QwenoptError(f"{name} was not ready after {timeout_s:g} s; "
                                   f"last lines of {log_path}:\n{log_tail(log_path)}")
            time.sleep(POLL_S)


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the group; zombies hold no GPU memory."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after "(comm)": state, ppid, pgrp
            return True
    return False


def _gone_within(process: subprocess.Popen, pgid: int, seconds: float) -> bool:
    """Whether the group has no live member within `seconds` (checked every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        process.poll()  # reap the leader, or it stays a member as a zombie
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop the whole group (API server, engine core, workers): SIGINT (vllm serve shuts down on it, as on Ctrl-C;
    SIGTERM can leave it running), then SIGTERM, each with half the grace, then SIGKILL what is left."""
    pgid = process.pid  # start_new_session=True: the server leads its own group
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _gone_within(process, pgid, grace_s / 2):
            break
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def run_server(command: list[str], name: str, port: int, host: str, log_path: str | Path | None,
               ready_timeout_s: float, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen, Path, float]]:
    """Start `command` in its own process group, yield (root URL, process, log path, startup s) once
    /health answers, and stop the whole group when the block ends, however it ends."""
    check_port_free(host, port)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"qwenopt-{name.replace(' ', '-')}-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    client_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    root = f"http://{f'[{client_host}]' if ':' in client_host else client_host}:{port}"

    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        wait_ready(process, f"{root}/health", log_path, ready_timeout_s, name)
        yield root, process, log_path, time.perf_counter() - start
    finally:
        stop(process)


@contextmanager
def launch(spec: RegimeSpec, options: EngineOptions, port: int = 8000, log_path: str | Path | None = None,
           ready_timeout_s: float = 600, host: str = "127.0.0.1",
           scheduling_policy: str | None = None) -> Iterator[Server]:
    """Run `vllm serve` for the regime while the block runs; yields a Server once /health answers.

    scheduling_policy: vLLM's --scheduling-policy ("fcfs" or "priority": then a request's `priority`
    field orders admission, lower first)."""
    require_vllm()
    quant = resolve_quant(spec, options)
    model_dir, options = model_location(options, quant)
    if scheduling_policy is not None:
        options = dataclasses.replace(options, engine_args={**options.engine_args,
                                                            "scheduling_policy": scheduling_policy})
    command = serve_command(spec, options, str(model_dir), port, host)
    env = dict(os.environ)  # NCCL_*, CUDA_VISIBLE_DEVICES and the rest pass through untouched
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # its JIT build adds ~100 s to a fresh start
    with run_server(command, "vllm serve", port, host, log_path, ready_timeout_s, env) as (root, process, log, up_s):
        yield Server(base_url=f"{root}/v1", model=served_name(options), startup_s=up_s, log_path=log,
                     command=command, process=process, compile_cache=compile_cache(log))


def launch_server(spec: RegimeSpec, options: EngineOptions, port: int = 8000, log_path: str | Path | None = None,
                  **mode):
    """The server for the regime's engine: `vllm serve` for vllm regimes, `transformers serve` for hf ones.

    mode: ready_timeout_s, host; vllm: scheduling_policy; transformers: continuous_batching, cb_args."""
    if spec.engine == "vllm":
        hf_only = [key for key in ("continuous_batching", "cb_args") if mode.get(key)]
        if hf_only:
            raise QwenoptError(f"{', '.join(hf_only)} apply to transformers serve (hf regimes); "
                               f"vLLM always batches continuously")
        mode.pop("continuous_batching", None), mode.pop("cb_args", None)
        return launch(spec, options, port, log_path, **mode)
    if mode.get("scheduling_policy"):
        raise QwenoptError("--scheduling-policy applies to vllm serve; transformers serve has none")
    mode.pop("scheduling_policy", None)
    from .hf_launch import launch_transformers

    return launch_transformers(spec, options, port, log_path, **mode)
