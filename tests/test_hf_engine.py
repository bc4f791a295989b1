"""The transformers engine on the tiny model: the real generate path, random checkpoints, the quantized cache."""
import dataclasses

import pytest

from qwenopt.engines.base import EngineOptions
from qwenopt.engines.hf import HFEngine, TokenClock, random_checkpoint, save_atomically
from qwenopt.models import cache_dir, resolve_model
from qwenopt.regimes import REGIMES
from qwenopt.workload import make_prompts

TINY = resolve_model("qwen2-tiny")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path / "cache"))


def engine(spec=REGIMES["hf-fp16"], **options):
    return HFEngine(spec, EngineOptions(source=TINY, device="cpu", dtype="fp32", **options))


@pytest.mark.parametrize("compile_, mode", [(False, "dynamic"), (True, "static")])
def test_generate_forces_the_output_length_and_times_each_request(compile_, mode):
    e = engine(compile=compile_)
    info = e.load()
    assert info.load_from == "random-init" and info.decode_mode == mode and info.attn == "sdpa"
    assert info.weights_gib == pytest.approx(TINY_PARAMS * 4 / 2**30, rel=0.01)
    samples = e.generate(make_prompts(3, 10, 8192, 0), output_len=6)
    assert len(samples) == 3
    assert {s.output_tokens for s in samples} == {6}
    assert all(0 < s.ttft_s < s.e2e_s for s in samples)
    e.close()


TINY_PARAMS = 2 * 8192 * 128 + 2 * (128 * 128 * 2 + 2 * 128 * 64 + 2 * 64 + 128 + 3 * 128 * 384 + 2 * 128) + 128


def test_token_clock_skips_the_prompt_and_stamps_each_token():
    clock = TokenClock()
    for _ in range(4):
        clock.put(None)
    assert len(clock.stamps) == 3 and clock.stamps == sorted(clock.stamps)


def test_random_checkpoint_is_written_once_and_reused():
    folder = random_checkpoint(TINY, "fp32", seed=0)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert random_checkpoint(TINY, "fp32", seed=0) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert not folder.with_name(folder.name + ".partial").exists()


def test_quantized_regime_loads_from_its_cache_when_present():
    # Stand in for a saved quantized model with a saved tiny one: the cache lookup and the
    # from_pretrained path are what is under test (bitsandbytes itself needs a GPU).
    spec = dataclasses.replace(REGIMES["hf-nf4"], needs_gpu=False)
    e = engine(spec)
    folder = cache_dir("quantized", TINY, "nf4-fp32-seed0")
    source_model = engine()
    source_model.load()
    save_atomically(source_model.model, folder)
    info = e.load()
    assert info.load_from == "quantized-cache" and info.quant == "nf4"
    assert {s.output_tokens for s in e.generate(make_prompts(1, 4, 8192, 0), 3)} == {3}


def test_fa2_without_flash_attn_pins_sdpa_to_its_flash_backend_and_says_so():
    e = engine(REGIMES["hf-fa2"])
    assert e.attn_implementation == "sdpa" and e.attn_label == "sdpa-flash"
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (the context the engine enters)

    assert e._attention_context() is not None
    assert engine().attn_label == "sdpa"
