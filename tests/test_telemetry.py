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
    assert info["git_sha"] == "abc1234" and info["gpu_count"] == 0
    assert info["torch"] and info["transformers"] and info["python"] and info["qwenopt"] == "0.1.0"
