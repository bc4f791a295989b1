"""What the hardware did and what software ran: NVML sampling, device probes, environment fingerprint."""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import socket
import subprocess
import threading
import time
from pathlib import Path

GIB = 2**30


def _nvml():
    """pynvml, initialised, or None where there is no NVIDIA driver (CPU machines)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def wait_for_free_gpus(max_used_share: float = 0.1, timeout_s: float = 30.0, poll_s: float = 0.5) -> float:
    """Wait until every visible GPU has at most `max_used_share` of its memory in use (a stopped server's memory is
    released by the driver a moment after its processes die; vLLM refuses to start without its share free).
    Returns the seconds waited; gives up silently after `timeout_s`, and at once without NVML."""
    nvml = _nvml()
    if nvml is None:
        return 0.0
    began = time.monotonic()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    while time.monotonic() - began < timeout_s:
        infos = [nvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
        if all(info.used <= max_used_share * info.total for info in infos):
            break
        time.sleep(poll_s)
    return time.monotonic() - began


class GPUSampler:
    """Polls every visible GPU every `interval` s in a thread: peak memory, mean utilisation and power, energy.

    Memory is read from NVML rather than torch so that vLLM's worker processes are counted too.
    Use as a context manager around the timed work; `summary()` gives the row's columns (NaN without GPUs).
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.nvml = _nvml()
        self.handles = []
        if self.nvml is not None:
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.nvml.nvmlDeviceGetCount())]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_used = [0] * len(self.handles)
        self.util: list[float] = []
        self.power: list[float] = []
        self.energy_start: list[float | None] = []
        self.energy_j = math.nan

    def _energy_mj(self) -> list[float | None]:
        values = []
        for handle in self.handles:
            try:
                values.append(float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
            except Exception:
                values.append(None)
        return values

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        utils, watts = [], []
        for i, handle in enumerate(self.handles):
            self.peak_used[i] = max(self.peak_used[i], self.nvml.nvmlDeviceGetMemoryInfo(handle).used)
            utils.append(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            try:
                watts.append(self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
            except Exception:
                pass
        if utils:
            self.util.append(sum(utils) / len(utils))
        if watts:
            self.power.append(sum(watts))

    def __enter__(self) -> "GPUSampler":
        if self.handles:
            self.energy_start = self._energy_mj()
            self._sample()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
            end = self._energy_mj()
            if all(v is not None for v in end + self.energy_start):
                self.energy_j = (sum(end) - sum(self.energy_start)) / 1000.0

    def summary(self) -> dict:
        if not self.handles:
            return {"gpu_mem_peak_gib": math.nan, "gpu_util_pct": math.nan, "power_w": math.nan}
        return {
            "gpu_mem_peak_gib": max(self.peak_used) / GIB,
            "gpu_util_pct": sum(self.util) / len(self.util) if self.util else math.nan,
            "power_w": sum(self.power) / len(self.power) if self.power else math.nan,
        }

    def per_gpu_peak_gib(self) -> list[float]:
        return [used / GIB for used in self.peak_used]


def probe_device(device: str) -> dict:
    """Measure memory bandwidth (a large device-to-device copy, bytes read + written) and bf16 matmul
    throughput once per run: the roofline's two ceilings. Empty on CPU."""
    if device != "cuda":
        return {"mem_bw_gbs": math.nan, "matmul_tflops": math.nan}
    import torch

    def timed(fn, iters: int) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters

    n_bytes = 2 * GIB
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 20)
    del src, dst
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    mm_s = timed(lambda: a @ b, 10)
    del a, b
    torch.cuda.empty_cache()
    return {"mem_bw_gbs": 2 * n_bytes / copy_s / 1e9, "matmul_tflops": 2 * n**3 / mm_s / 1e12}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_sha(where: Path = Path(__file__).parent) -> str | None:
    """The checkout's commit, with "-dirty" where tracked files differ from it (a GPU host gets the working tree
    beside an older .git: its rows must not name a commit that is not what ran); QWENOPT_GIT_SHA overrides."""
    if os.environ.get("QWENOPT_GIT_SHA"):
        return os.environ["QWENOPT_GIT_SHA"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"], cwd=where,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def fingerprint() -> dict:
    """The environment columns every row carries, so a figure can always be traced to what produced it."""
    import torch

    from . import __version__

    nvml = _nvml()
    gpu_name = driver = gpu_uuid = None
    gpu_count = 0
    if nvml is not None:
        gpu_count = nvml.nvmlDeviceGetCount()
        driver = nvml.nvmlSystemGetDriverVersion()
        if gpu_count:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpu_count)]
            gpu_name = nvml.nvmlDeviceGetName(handles[0])
            uuids = [nvml.nvmlDeviceGetUUID(h) for h in handles]  # str; bytes from nvidia-ml-py before 11.515
            gpu_uuid = ",".join(u.decode() if isinstance(u, bytes) else str(u) for u in uuids)
    return {
        "gpu_name": gpu_name,
        "gpu_uuid": gpu_uuid,  # which card(s): on the H200 two machines of one kind differed by more than a
        # tuned configuration's gain (results/h200/tune/v2/aa_fp16), so a paired comparison must stay on one
        "gpu_count": gpu_count,
        "driver": driver,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "vllm": _version("vllm"),
        "bitsandbytes": _version("bitsandbytes"),
        "gptqmodel": _version("gptqmodel"),
        "python": platform.python_version(),
        "qwenopt": __version__,
        "git_sha": _git_sha(),
        "host": socket.gethostname(),
    }
