import json

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.models import max_context, resolve_model
from qwenopt.workload import make_prompts


def test_bundled_qwen_architecture_matches_the_published_config():
    source = resolve_model("qwen2.5-7b", "random")
    c = source.config
    assert (c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]) == (3584, 28, 18944)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]) == (28, 4, 152064)
    assert source.location is None and source.max_context == 32768


def test_bundled_names_default_to_the_hub_for_real_weights():
    assert resolve_model("qwen2.5-7b").location == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("qwen2.5-7b", "real", "awq").location == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert resolve_model("qwen2.5-7b", "real", "gptq").location == "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"
    assert resolve_model("qwen2-tiny").weights == "random"


def test_local_folder_is_read_and_needs_a_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(QwenoptError, match="has no config.json"):
        resolve_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"max_position_embeddings": 99, "vocab_size": 10}))
    source = resolve_model(str(tmp_path / "m"))
    assert source.weights == "real" and source.location == str(tmp_path / "m") and source.max_context == 99


def test_yarn_scaling_extends_the_context():
    config = {"max_position_embeddings": 32768,
              "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    assert max_context(config) == 131072


def test_prompts_are_exact_seeded_and_in_vocabulary():
    a = make_prompts(3, 17, vocab_size=100, seed=1)
    assert len(a) == 3 and all(len(p) == 17 for p in a)
    assert a == make_prompts(3, 17, vocab_size=100, seed=1)
    assert a != make_prompts(3, 17, vocab_size=100, seed=2)
    assert all(0 < t < 100 for p in a for t in p)


def test_a_changed_config_never_reuses_a_generated_folder(monkeypatch, tmp_path):
    import dataclasses

    from qwenopt.models import cache_dir, resolve_model, with_yarn

    monkeypatch.setenv("QWENOPT_CACHE", str(tmp_path))
    source = resolve_model("qwen2.5-7b", "random")
    yarn = dataclasses.replace(source, config=with_yarn(source.config, 131072))
    assert cache_dir("random", source, "bf16-seed0") == cache_dir("random", source, "bf16-seed0")
    assert cache_dir("random", source, "bf16-seed0") != cache_dir("random", yarn, "bf16-seed0")
    assert cache_dir("random", source, "bf16-seed0").parent == tmp_path / "random"
