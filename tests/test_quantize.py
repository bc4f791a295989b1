"""GPTQ int4 checkpoints: the random writer against what gptqmodel itself writes, calibration, guard rails."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from qwenopt.cli import app

from qwenopt.engines.hf import gptq_kernel
from qwenopt.errors import QwenoptError
from qwenopt.models import cache_dir, resolve_model
from qwenopt.results import read_results
from qwenopt.quantize import (
    SYMMETRIC_ZEROS, calibration_samples, check_shapes, import_gptqmodel, quantize, random_gptq_tensors,
    write_random_gptq_checkpoint,
)

MANIFEST = json.loads((Path(__file__).parent / "data" / "qwen2-tiny-gptq-manifest.json").read_text())["tensors"]
SAFETENSORS_DTYPES = {torch.int32: "I32", torch.float16: "F16", torch.bfloat16: "BF16"}


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_random_gptq_tensors_match_a_checkpoint_gptqmodel_wrote():
    # The manifest lists every tensor of gptqmodel 7.5.0's own GPTQ quantization of qwen2-tiny (bf16).
    written = {name: [list(t.shape), SAFETENSORS_DTYPES[t.dtype]]
               for name, t in random_gptq_tensors(resolve_model("qwen2-tiny").config, seed=0)}
    assert written == MANIFEST


def test_random_gptq_values_follow_the_symmetric_v1_format():
    tensors = dict(random_gptq_tensors(resolve_model("qwen2-tiny").config, seed=0))
    zeros = tensors["model.layers.0.mlp.down_proj.qzeros"]
    assert zeros.shape == (3, 16) and bool((zeros == SYMMETRIC_ZEROS).all())
    assert SYMMETRIC_ZEROS == 2004318071  # eight nibbles of 7 = 8 - 1, the v1 encoding of the symmetric zero 8
    g_idx = tensors["model.layers.0.mlp.down_proj.g_idx"]  # 384 inputs in groups of 128
    assert g_idx.tolist() == [0] * 128 + [1] * 128 + [2] * 128
    again = dict(random_gptq_tensors(resolve_model("qwen2-tiny").config, seed=0))
    assert torch.equal(again["model.layers.1.mlp.up_proj.qweight"], tensors["model.layers.1.mlp.up_proj.qweight"])


def test_random_gptq_checkpoint_is_a_complete_folder(tmp_path):
    folder = write_random_gptq_checkpoint(resolve_model("qwen2-tiny"), tmp_path / "gptq", seed=0, shard_gib=1e-4)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True, "format": "gptq",
        "checkpoint_format": "gptq", "damp_percent": 0.01, "true_sequential": True}
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(MANIFEST)
    shards = sorted({*index.values()})
    assert len(shards) > 1  # the tiny shard size forces several files
    found = set()
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            found |= set(f.keys())
    assert found == set(MANIFEST)
    assert not (tmp_path / "gptq.partial").exists()


def test_gptq_needs_group_aligned_widths():
    config = dict(resolve_model("qwen2-tiny").config, intermediate_size=200)
    with pytest.raises(QwenoptError, match="mlp.down_proj is 200x128: GPTQ int4 g128 needs inputs divisible by 128"):
        check_shapes(config)


def test_calibration_is_cut_into_full_windows():
    samples = calibration_samples(list(range(40)), 16)
    assert [s["input_ids"] for s in samples] == [list(range(16)), list(range(16, 32))]
    assert samples[0]["attention_mask"] == [1] * 16
    with pytest.raises(QwenoptError, match="has 10 tokens, fewer than one window of 16"):
        calibration_samples(list(range(10)), 16)
    with pytest.raises(QwenoptError, match="at least 16"):
        calibration_samples(list(range(100)), 8)


def test_quantize_refuses_a_bad_method_or_a_used_folder_before_loading(tmp_path):
    with pytest.raises(QwenoptError, match="--method must be one of gptq, awq"):
        quantize("model", "int3", tmp_path / "out", [], "cpu")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(QwenoptError, match="already exists and is not empty"):
        quantize("model", "gptq", tmp_path / "out", [], "cpu")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_missing_gptqmodel_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gptqmodel", None)  # import gptqmodel now raises ImportError
    with pytest.raises(QwenoptError, match=r"pip install 'qwenopt\[gptq\]'"):
        import_gptqmodel()


def test_kernel_label_comes_from_the_layer_class_gptqmodel_chose():
    class Backend:
        value = "gptq_triton"

    class TritonLayer(torch.nn.Module):
        SUPPORTS_BACKENDS = [Backend()]

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), TritonLayer())
    assert gptq_kernel(model) == "triton"
    with pytest.raises(QwenoptError, match="without any GPTQ layer"):
        gptq_kernel(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_hf_gptq_without_its_packages_is_refused_naming_the_extra(tmp_results, monkeypatch):
    import qwenopt.regimes

    monkeypatch.setattr(qwenopt.regimes, "missing_packages", lambda spec: list(spec.packages))
    result = invoke("bench", "--regime", "hf-gptq")
    assert result.exit_code == 2
    assert "regime 'hf-gptq' needs gptqmodel, optimum: install it with pip install 'qwenopt[gptq]'" in " ".join(
        result.output.split())


def test_kernel_must_be_a_gptqmodel_backend(tmp_results):
    result = invoke("bench", "--regime", "hf-gptq", "--kernel", "cutlass")
    assert result.exit_code == 2 and "--kernel must be one of auto, marlin" in " ".join(result.output.split())


# With gptqmodel installed (pip install 'qwenopt[gptq]'), the real GPTQ path runs end to end on the CPU.
SMALL = ["--batch", "1,2", "--input-len", "8", "--output-len", "4", "--repeats", "2", "--warmup", "1"]


def test_hf_gptq_benchmarks_a_random_gptq_checkpoint_through_gptqmodel(tmp_results, monkeypatch):
    pytest.importorskip("gptqmodel")
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    result = invoke("bench", "--regime", "hf-gptq", *SMALL)
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_results / "results" / "hf-gptq_qwen2-tiny.csv")
    assert set(frame["status"]) == {"ok"} and set(frame["load_from"]) == {"checkpoint"}
    assert frame["quant"].str.startswith("gptq:").all() and frame["quant"].iloc[0] != "gptq:"
    assert (frame["samples"] > 0).all()
    assert (cache_dir("quantized", resolve_model("qwen2-tiny"), "gptq-fp32-seed0") / "config.json").is_file()


def test_quantize_writes_a_gptq_checkpoint_that_bench_loads(tmp_results):
    pytest.importorskip("gptqmodel")
    result = invoke("quantize", "--model", "qwen2-tiny", "--out", "tiny-gptq", "--calibration-len", "128")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_results / "tiny-gptq" / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["bits"], config["group_size"]) == ("gptq", 4, 128)
    result = invoke("bench", "--regime", "hf-gptq", "--model", "tiny-gptq", "--out", "q.csv", *SMALL)
    assert result.exit_code == 0, result.output
    frame = read_results(tmp_results / "q.csv")
    assert set(frame["status"]) == {"ok"} and set(frame["weights"]) == {"real"}


def test_quality_scores_hf_gptq_and_names_its_kernel(tmp_results, monkeypatch):
    pytest.importorskip("gptqmodel")
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    result = invoke("quality", "--regime", "hf-gptq", "--window", "256", "--out", "quality.csv")
    assert result.exit_code == 0, result.output
    import pandas as pd

    row = pd.read_csv(tmp_results / "quality.csv").iloc[0]
    assert row["quant"].startswith("gptq:") and row["tokenizer"] == "utf8-bytes" and row["perplexity"] > 1


def test_quantize_command_fails_fast_without_gptqmodel_or_with_a_bad_method(tmp_results, monkeypatch):
    monkeypatch.setitem(sys.modules, "gptqmodel", None)
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_results / "cache"))
    result = invoke("quantize", "--model", "qwen2-tiny", "--out", "q")
    assert result.exit_code == 2 and "pip install 'qwenopt[gptq]'" in result.output
    result = invoke("quantize", "--model", "qwen2-tiny", "--out", "q", "--method", "nf4")
    assert result.exit_code == 2 and "--method must be one of gptq, awq, got 'nf4'" in result.output
    assert not (tmp_results / "cache").exists() and not (tmp_results / "q").exists()  # nothing written
