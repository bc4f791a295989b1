"""benchmarks/loadgen_capacity.py's bookkeeping: which tools run, the wall bound, and the static server binary."""
import json
import os
import struct
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loadgen_capacity as capacity  # noqa: E402
import loadgen_tools as tools  # noqa: E402

RUSTC = capacity.rustc_path()


def ladder_args(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"rates": "400,800,1600", "lean_rates": "2400", "duration": 3.0, "run_timeout": 60.0,
                              **kw})


def fake_measure(calls: list, collapse_at: float):
    def measure(runner, args, server, rate, workdir, timeout_s, extra=""):
        calls.append((runner.__name__, rate, extra, timeout_s))
        return {"rate": rate, "collapsed": rate >= collapse_at, "error": "fake"}
    return measure


def test_the_lean_client_runs_first_then_each_tool_climbs_until_it_collapses(monkeypatch):
    calls, said = [], []
    monkeypatch.setattr(capacity, "measure", fake_measure(calls, collapse_at=800))
    results = capacity.ladder(ladder_args(), None, ["qwenopt", "qwenopt@--workers=4"], Path("."),
                              time.monotonic() + 3600, said.append)
    assert [(name, rate, extra) for name, rate, extra, _ in calls] == [
        ("run_lean", 2400, ""), ("run_qwenopt", 400, ""), ("run_qwenopt", 800, ""),
        ("run_qwenopt", 400, "--workers=4"), ("run_qwenopt", 800, "--workers=4")]
    assert list(results) == ["lean", "qwenopt", "qwenopt@--workers=4"]
    assert all(timeout == 63.0 for *_, timeout in calls)  # --duration + --run-timeout while the budget is ample


def test_levels_that_do_not_fit_the_wall_bound_are_skipped_and_named(monkeypatch):
    calls, said = [], []
    monkeypatch.setattr(capacity, "measure", fake_measure(calls, collapse_at=1e9))
    results = capacity.ladder(ladder_args(), None, ["qwenopt"], Path("."), time.monotonic() + 5.0, said.append)
    assert calls == [] and results == {}
    assert len(said) == 4 and all("skipped" in line for line in said)


def test_a_tool_that_is_not_installed_is_named_with_its_reason(tmp_path):
    args = SimpleNamespace(guidellm=str(tmp_path / "absent" / "guidellm"), aiperf=str(tmp_path / "aiperf"))
    (tmp_path / "aiperf").touch()
    assert "not found" in tools.missing("guidellm", args)
    assert tools.missing("aiperf", args) is None
    assert "unknown tool" in tools.missing("nonesuch", args)
    assert "not found" in tools.missing("vllm-bench", SimpleNamespace(vllm_python=str(tmp_path / "python")))


def test_qwenopt_runs_with_the_callers_pythonpath_after_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/deps")
    assert tools.qwenopt_env()["PYTHONPATH"].split(":") == [str(tools.ROOT), "/opt/deps"]


def has_interpreter(binary: Path) -> bool:
    """Whether an ELF64 little-endian binary asks for a dynamic loader (a PT_INTERP program header)."""
    data = binary.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))


@pytest.mark.skipif(RUSTC is None, reason="no rustc here")
def test_the_built_server_is_static_and_serves(tmp_path):
    binary = capacity.build_server(tmp_path / "bin" / "capacity_server")
    assert not has_interpreter(binary)  # no dynamic loader: runs whatever the host's glibc
    server = capacity.TestServer(binary, 0, 5.0, 1.0, 0.3)  # port 0: the server says which it bound
    try:
        with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "capacity-test"
        assert server.stats()["requests"] == 0
        sent = {"model": "capacity-test", "prompt": "a b", "max_tokens": 4, "stream": True, "temperature": 0.5}
        for _ in range(3):
            request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(sent).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert len(events) == 4 + 2  # four tokens, the usage chunk, [DONE]
        stats = server.stats()
        assert stats["requests"] == 3 and stats["first_write_n"] == 3 and stats["tpot_n"] == 3
        assert stats["first_write_p50_us"] >= 5000 * (1 - 0.3)  # never before its jittered schedule
        assert stats["tpot_p50_us"] > 0
        assert stats["last_body"] == sent  # what the client sent, for the report
        server.reset()
        assert server.stats()["tpot_n"] == 0
    finally:
        server.stop()


def test_the_header_names_the_cores_and_the_cpu_model():
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    described = capacity.machine()
    assert f"cores usable of {os.cpu_count()}" in described
    assert not models or models[0] in described
