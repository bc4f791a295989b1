"""Telemetry without a GPU: empty (NaN) columns, never zeros, and a fingerprint that names the software."""
import math

import pytest

from qwenopt.telemetry import GPUSampler, _nvml, fingerprint, probe_device

pytestmark = pytest.mark.skipif(_nvml() is not None, reason="this machine has an NVIDIA driver: these are CPU cases")


def test_sampler_without_gpus_reports_nothing_rather_than_zero():
    with GPUSampler(interval=0.001) as sampler:
        pass
    summary = sampler.summary()
    assert set(summary) == {"gpu_mem_peak_gib", "gpu_util_pct", "power_w"}
    assert all(math.isnan(v) for v in summary.values())
    assert math.isnan(sampler.energy_j) and sampler.per_gpu_peak_gib() == []


def test_device_probes_are_empty_on_the_cpu():
    probes = probe_device("cpu")
    assert math.isnan(probes["mem_bw_gbs"]) and math.isnan(probes["matmul_tflops"])


def test_fingerprint_names_the_software_and_honours_an_explicit_commit(monkeypatch):
    monkeypatch.setenv("QWENOPT_GIT_SHA", "abc1234")
    info = fingerprint()
    assert info["git_sha"] == "abc1234" and info["gpu_count"] == 0 and info["gpu_uuid"] is None
    assert info["torch"] and info["transformers"] and info["python"] and info["qwenopt"] == "0.1.0"


def test_fingerprint_names_every_card_by_its_uuid(monkeypatch):
    """Two machines of one kind can differ by more than a tuned gain (results/h200/tune/v2/aa_fp16): each row names
    its card(s), read from NVML (here a stand-in with two GPUs)."""
    import types

    from qwenopt import telemetry

    fake = types.SimpleNamespace(nvmlDeviceGetCount=lambda: 2, nvmlSystemGetDriverVersion=lambda: "580.159.04",
                                 nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetName=lambda h: "NVIDIA H200",
                                 nvmlDeviceGetUUID=lambda h: f"GPU-{h}abc")
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    info = telemetry.fingerprint()
    assert info["gpu_uuid"] == "GPU-0abc,GPU-1abc" and info["gpu_name"] == "NVIDIA H200" and info["gpu_count"] == 2
    fake.nvmlDeviceGetUUID = lambda h: f"GPU-{h}abc".encode()  # older nvidia-ml-py returns bytes
    assert telemetry.fingerprint()["gpu_uuid"] == "GPU-0abc,GPU-1abc"


def test_git_sha_says_dirty_when_the_tree_is_not_the_commit(tmp_path, monkeypatch):
    """A GPU host gets the working tree beside an older .git: its rows must not name that commit as what ran."""
    import subprocess

    from qwenopt.telemetry import _git_sha

    monkeypatch.delenv("QWENOPT_GIT_SHA", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)  # a tag must not replace the commit in the column
    sha = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert _git_sha(tmp_path) == sha
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _git_sha(tmp_path) == f"{sha}-dirty"
    assert _git_sha(tmp_path / "nowhere") is None
