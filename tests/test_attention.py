"""Attention kernels: what each needs, the one-line errors, the attn column, and what `qwenopt regimes` lists."""
import pytest
from typer.testing import CliRunner

from qwenopt import attention
from qwenopt.attention import KERNELS, check_kernel, resolve, why_not
from qwenopt.bench import BenchOptions, plan_sweep
from qwenopt.cli import app
from qwenopt.engines.base import EngineOptions
from qwenopt.engines.hf import HFEngine
from qwenopt.errors import QwenoptError
from qwenopt.models import max_context, resolve_model
from qwenopt.regimes import REGIMES, availability

HOPPER, AMPERE = (9, 0), (8, 0)


@pytest.fixture
def packages(monkeypatch):
    """Pretend exactly the given pip distributions are installed."""
    present: set[str] = set()
    monkeypatch.setattr(attention, "installed", lambda dist: dist in present)
    return present


@pytest.fixture
def gpu(monkeypatch):
    """Pretend one CUDA GPU of the compute capability set in the returned list is visible."""
    capability = [HOPPER]
    monkeypatch.setattr(attention, "gpu_capability", lambda: capability[0])
    monkeypatch.setattr("qwenopt.regimes.gpu_count", lambda: 1)
    monkeypatch.setattr("qwenopt.bench.gpu_count", lambda: 1)
    return capability


def test_fa4_needs_its_package_then_hopper_or_blackwell(packages):
    fa4 = KERNELS["flash_attention_4"]
    assert why_not(fa4, "cuda", HOPPER) == "needs flash-attn-4: pip install 'qwenopt[fa4]'"
    packages.add("flash-attn-4")
    assert why_not(fa4, "cuda", HOPPER) is None
    assert why_not(fa4, "cuda", (10, 0)) is None
    assert why_not(fa4, "cuda", AMPERE) == "needs a Hopper or Blackwell GPU (this one is sm_80)"
    assert why_not(fa4, "cpu", None) == "needs a CUDA GPU"


def test_fa2_is_told_apart_from_fa4_by_distribution(packages):
    packages.add("flash-attn-4")  # installs the module flash_attn too, but not FlashAttention-2
    assert resolve("flash_attention_2", fallback=True).name == "sdpa-flash"
    assert why_not(KERNELS["flash_attention_2"], "cuda", HOPPER) == "needs flash-attn: pip install 'qwenopt[fa2]'"
    packages.add("flash-attn")
    assert resolve("flash_attention_2", fallback=True).name == "flash_attention_2"


def test_check_kernel_is_one_line_naming_who_asked(packages):
    with pytest.raises(QwenoptError, match=r"^regime 'hf-fa4' runs flash_attention_4, which needs flash-attn-4: "
                                           r"pip install 'qwenopt\[fa4\]'$"):
        check_kernel(KERNELS["flash_attention_4"], "cuda", HOPPER, "regime 'hf-fa4'")
    with pytest.raises(QwenoptError, match=r"^--attn sdpa-flash needs a CUDA GPU$"):
        check_kernel(KERNELS["sdpa-flash"], "cpu", None, "--attn sdpa-flash")
    with pytest.raises(QwenoptError, match="unknown --attn 'fa3'; choose one of: sdpa, sdpa-flash, sdpa-efficient"):
        resolve("fa3", fallback=False)


def test_plan_checks_the_kernel_before_any_model_loads(packages, gpu):
    options = dict(model="qwen2-tiny", batch="1", input_len="8", output_len="2")
    with pytest.raises(QwenoptError, match=r"regime 'hf-fa4' runs flash_attention_4, which needs flash-attn-4"):
        plan_sweep(BenchOptions(regime="hf-fa4", **options))
    packages.add("flash-attn-4")
    gpu[0] = AMPERE
    with pytest.raises(QwenoptError, match=r"--attn flash_attention_4 needs a Hopper or Blackwell GPU \(this one is sm_80\)"):
        plan_sweep(BenchOptions(regime="hf-fp16", attn="flash_attention_4", **options))
    gpu[0] = HOPPER
    assert plan_sweep(BenchOptions(regime="hf-fa4", **options)).attn == "flash_attention_4"
    assert plan_sweep(BenchOptions(regime="hf-fp16", attn="sdpa-efficient", **options)).attn == "sdpa-efficient"
    assert plan_sweep(BenchOptions(regime="hf-fa2", **options)).attn == "sdpa-flash"


def test_sdpa_flash_with_compile_is_refused_before_any_model_loads(packages, gpu):
    """A static cache always passes a mask, which SDPA's flash backend rejects (an error row per cell on the H100)."""
    gpu[0] = HOPPER
    options = dict(model="qwen2-tiny", batch="1", input_len="8", output_len="2", compile=True)
    with pytest.raises(QwenoptError, match=r"^--attn sdpa-flash cannot run with --compile: .* use --attn sdpa"):
        plan_sweep(BenchOptions(regime="hf-fp16", attn="sdpa-flash", **options))
    with pytest.raises(QwenoptError, match=r"^regime 'hf-fa2' runs sdpa-flash, which cannot run with --compile"):
        plan_sweep(BenchOptions(regime="hf-fa2", **options))
    assert plan_sweep(BenchOptions(regime="hf-fp16", attn="sdpa", **options)).attn == "sdpa"


@pytest.mark.parametrize("requested, label, implementation", [
    (None, "sdpa", "sdpa"),
    ("sdpa-efficient", "sdpa-efficient", "sdpa"),
    ("sdpa-flash", "sdpa-flash", "sdpa"),
    ("flash_attention_4", "flash_attention_4", "flash_attention_4"),
])
def test_engine_asks_transformers_for_the_kernel_and_labels_the_row_with_it(requested, label, implementation):
    options = EngineOptions(source=resolve_model("qwen2-tiny"), device="cpu", dtype="fp32", attn=requested)
    engine = HFEngine(REGIMES["hf-fp16"], options)
    assert engine.attn_implementation == implementation and engine.attn_label == label
    assert (engine.kernel.sdpa_backend is None) == (label in ("sdpa", "flash_attention_4"))


def test_sdpa_efficient_row_says_so(tmp_results):
    """The attn column of a real (tiny, CPU) sweep names the kernel; SDPA's efficient backend runs on CPU too."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 4, 8)
    try:
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        pytest.skip("this torch has no CPU memory-efficient SDPA kernel")
    from qwenopt.bench import execute

    plan = plan_sweep(BenchOptions(batch="1", input_len="8", output_len="3", repeats=1))
    plan.options.attn = "sdpa-efficient"  # past the plan's GPU check: the kernel itself runs on CPU
    rows = execute(plan)
    assert [(r["attn"], r["status"]) for r in rows] == [("sdpa-efficient", "ok")]


def test_regimes_lists_hf_fa4_and_the_attention_kernels_this_machine_runs(packages, gpu):
    assert availability(REGIMES["hf-fa4"]) == (False, "needs flash-attn-4: pip install 'qwenopt[fa4]'")
    packages.add("flash-attn-4")
    assert availability(REGIMES["hf-fa4"]) == (True, "ready")
    gpu[0] = AMPERE
    assert availability(REGIMES["hf-fa4"]) == (False, "needs a Hopper or Blackwell GPU (this one is sm_80)")
    gpu[0] = HOPPER
    result = CliRunner().invoke(app, ["regimes"])
    assert result.exit_code == 0, result.output
    listing = " ".join(result.output.split())
    assert "hf-fa4" in listing and "attention kernels for transformers regimes (--attn; sm_90)" in listing
    for name in ("sdpa", "sdpa-flash", "sdpa-efficient", "flash_attention_4"):
        assert f"{name} yes" in listing  # on this pretend Hopper with flash-attn-4 installed
    assert "flash_attention_2 no: needs flash-attn:" in listing


def test_yarn_gives_a_random_weight_transformers_model_128k(tmp_results):
    plan = plan_sweep(BenchOptions(model="qwen2-tiny", batch="1", input_len="100000", output_len="2",
                                   max_model_len=131072))
    assert max_context(plan.source.config) >= 131072
    scaling = plan.source.config.get("rope_scaling") or plan.source.config.get("rope_parameters")
    assert scaling["rope_type"] == "yarn"


def test_matrix_labels_and_the_gate_keep_attention_kernels_apart():
    import pandas as pd

    from qwenopt.compare import compare
    from qwenopt.matrix import config_label

    def row(regime, attn, tok_s=100.0):
        return {"regime": regime, "attn": attn, "model": "qwen2.5-7b", "weights": "random", "quant": "none",
                "tp": 1, "pp": 1, "decode_mode": "dynamic", "batch_size": 1, "input_len": 8192, "output_len": 32,
                "status": "ok", "output_tok_s": tok_s, "latency_p50_s": 1.0, "tpot_p50_ms": 10.0}

    assert config_label(row("hf-fp16", "sdpa")) == "hf-fp16"
    assert config_label(row("hf-fp16", "sdpa-efficient")) == "hf-fp16 sdpa-efficient"
    assert config_label(row("hf-fa2", "sdpa-flash")) == "hf-fa2"  # hf-fa2's own fallback, named in its attn column
    assert config_label(row("hf-fa4", "flash_attention_4")) == "hf-fa4"
    assert config_label(row("vllm-fp16", "vllm")) == "vllm-fp16"
    # A faster FA4 row is no evidence about the SDPA cell: the gate finds that cell missing, not improved.
    report = compare(pd.DataFrame([row("hf-fp16", "sdpa")]), pd.DataFrame([row("hf-fp16", "sdpa-flash", 200.0)]), 0.05)
    assert set(report["verdict"]) == {"missing"}


def test_sdpa_efficient_turns_off_grouped_query_sdpa_only_while_generating():
    """PyTorch's memory-efficient backend refuses enable_gqa, so transformers must take its no-GQA path under it."""
    import torch
    from transformers.integrations import sdpa_attention

    key = torch.zeros(1, 2, 4, 8)
    options = EngineOptions(source=resolve_model("qwen2-tiny"), device="cpu", dtype="fp32", attn="sdpa-efficient")
    engine = HFEngine(REGIMES["hf-fp16"], options)
    assert sdpa_attention.use_gqa_in_sdpa(None, key, key) is True
    with engine._attention_context():
        assert sdpa_attention.use_gqa_in_sdpa(None, key, key) is False
    assert sdpa_attention.use_gqa_in_sdpa(None, key, key) is True
    flash = HFEngine(REGIMES["hf-fp16"], EngineOptions(source=options.source, device="cpu", dtype="fp32",
                                                       attn="sdpa-flash"))
    with flash._attention_context():  # SDPA's flash backend takes grouped KV heads as they are
        assert sdpa_attention.use_gqa_in_sdpa(None, key, key) is True


def test_fa4_splitkv_passes_num_splits_to_the_functions_transformers_loaded(monkeypatch):
    from transformers import modeling_flash_attention_utils as fa_utils

    calls = []
    monkeypatch.setattr(fa_utils, "_flash_fn", lambda *args, **kwargs: calls.append(("fn", kwargs)))
    monkeypatch.setattr(fa_utils, "_flash_varlen_fn", lambda *args, **kwargs: calls.append(("varlen", kwargs)))
    source = resolve_model("qwen2-tiny")
    split = HFEngine(REGIMES["hf-fa4"], EngineOptions(source=source, device="cpu", dtype="fp32",
                                                      attn="flash_attention_4+splitkv"))
    assert split.attn_implementation == "flash_attention_4" and split.attn_label == "flash_attention_4+splitkv"
    with split._attention_context():
        fa_utils._flash_fn(1, causal=True)
        fa_utils._flash_varlen_fn(1)
    fa_utils._flash_fn(1)  # outside generate: transformers' own call, untouched
    plain = HFEngine(REGIMES["hf-fa4"], EngineOptions(source=source, device="cpu", dtype="fp32"))
    with plain._attention_context():
        fa_utils._flash_fn(1)
    assert calls == [("fn", {"num_splits": 0, "causal": True}), ("varlen", {"num_splits": 0}), ("fn", {}), ("fn", {})]
    monkeypatch.setattr(fa_utils, "_flash_fn", None)  # the model was never loaded with a flash kernel
    with pytest.raises(QwenoptError, match="transformers has no loaded _flash_fn"):
        split._attention_context()
