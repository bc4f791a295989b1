"""What the GPU benchmark scripts share (attn_h100.py, spec_h100.py): one step as a child process in its own
process group, stopped at its deadline, and a number for a Markdown table."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def run_step(name: str, argv: list[str], out: Path, timeout_s: float, env: dict, cwd: Path) -> dict:
    """Run `argv` with its output in OUT/NAME.log; at the deadline SIGINT its whole group (qwenopt keeps every
    finished cell and exits 130), then SIGKILL after 20 s."""
    start = time.monotonic()
    with open(out / f"{name}.log", "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    wall = time.monotonic() - start
    return {"step": name, "exit": code, "wall_s": round(wall, 1), "stopped_at_deadline": wall >= timeout_s}


def md_num(value, digits: int = 1) -> str:
    """A figure for a table cell: thousands separated, or "-" where there is none."""
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return "-"
