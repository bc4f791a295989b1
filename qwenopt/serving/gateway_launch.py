"""Run `qwenopt gateway` as a child process in front of an endpoint, for `qwenopt load --gateway`.

A child process, not a thread of the load client: the gateway then has its own interpreter and event
loop, as it has in production, and the client's timing is not slowed by the gateway's work.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import QwenoptError
from .launcher import check_port_free, log_tail, stop

READY_TIMEOUT_S = 60.0
POLL_S = 0.1


def gateway_command(upstream: str, port: int, config: str | Path | None = None,
                    upstream_priority: bool | None = None) -> list[str]:
    argv = [sys.executable, "-m", "qwenopt", "gateway", "--upstream", upstream, "--port", str(port),
            "--host", "127.0.0.1"]
    if config is not None:
        argv += ["--config", str(config)]
    if upstream_priority is not None:
        argv.append("--upstream-priority" if upstream_priority else "--no-upstream-priority")
    return argv


@contextmanager
def launch_gateway(upstream: str, port: int, config: str | Path | None = None, upstream_priority: bool | None = None,
                   log_path: str | Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Start the gateway, wait until its /metrics answers, yield its base URL (…/v1); stop it afterwards."""
    import httpx

    check_port_free("127.0.0.1", port)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="qwenopt-gateway-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    root = f"http://127.0.0.1:{port}"
    package_root = str(Path(__file__).resolve().parents[2])  # this qwenopt, whatever the working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(gateway_command(upstream, port, config, upstream_priority),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise QwenoptError(f"the gateway exited with code {process.returncode} before it was ready; "
                                       f"last lines of {log_path}:\n{log_tail(log_path)}")
                try:
                    if client.get(f"{root}/metrics").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise QwenoptError(f"the gateway was not ready after {ready_timeout_s:g} s; "
                                       f"last lines of {log_path}:\n{log_tail(log_path)}")
                time.sleep(POLL_S)
        yield f"{root}/v1"
    finally:
        stop(process, grace_s=10.0)


def gateway_summary(base_url: str) -> str:
    """One line from the gateway's /metrics: its requests by outcome, and by class where shed or timed out."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{base_url.removesuffix('/v1')}/metrics", timeout=5.0, trust_env=False).text
    except httpx.HTTPError as exc:
        return f"gateway: no metrics ({exc!r})"
    outcomes: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "qwenopt_gateway_requests_total" and sample.value:
                by_class = outcomes.setdefault(sample.labels["outcome"], {})
                by_class[sample.labels["class"]] = sample.value
    parts = []
    for outcome, by_class in outcomes.items():
        detail = ", ".join(f"{klass} {count:.0f}" for klass, count in by_class.items())
        parts.append(f"{outcome} {sum(by_class.values()):.0f} ({detail})")
    return "gateway: " + ("; ".join(parts) or "no requests")
