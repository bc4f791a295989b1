"""`load --launch` end to end on the CPU: transformers serve on the tiny random model, loaded, then stopped."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from qwenopt.cli import app
from qwenopt.results import read_samples
from .helpers import free_port


def serve_processes(port: int) -> list[str]:
    """Live processes whose command line is a transformers serve on this port (none may outlive the command)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(port).encode() in argv:
            found.append(cmdline.parent.name)
    return found


def test_load_launches_transformers_serve_measures_it_and_stops_it(tmp_results, monkeypatch):
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    port = free_port()
    result = CliRunner().invoke(app, [
        "load", "--launch", "hf-fp16", "--model", "qwen2-tiny", "--weights", "random", "--device", "cpu",
        "--dtype", "fp32", "--concurrency", "1,2", "--num-requests", "3", "--input-len", "16", "--output-len", "6",
        "--port", str(port), "--timeout", "120", "--out", "online.csv",
        # the CPU model server and the client share 2 cores here: the client's lag is not what this test is about
        "--max-send-lag-ms", "5000"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_results / "online.csv")
    assert list(frame["concurrency"]) == [1, 2] and set(frame["class"]) == {"all"}
    assert set(frame["status"]) == {"ok"} and list(frame["completed"]) == [3, 3]
    assert set(frame["regime"]) == {"hf-fp16"} and set(frame["server"]) == {"transformers"}
    assert set(frame["serve_mode"]) == {"plain"} and set(frame["weights"]) == {"random"}
    assert (frame["startup_s"] > 0).all() and (frame["gpus"] == 1).all()
    assert frame["compile_cache"].isna().all()  # vLLM's torch.compile cache: transformers serve has none
    # the forced length held on transformers' own path: usage counted exactly 6 tokens for every request,
    # and the prompt was 16 tokens of qwenopt's tokenizer (one word each)
    records = [r for level in read_samples(tmp_results / "online.csv") for r in level["samples"]]
    assert len(records) == 6 and {r["output_tokens"] for r in records} == {6}
    assert {r["prompt_tokens"] for r in records} == {16}
    assert serve_processes(port) == []
