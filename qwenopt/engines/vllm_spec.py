"""Speculative decoding as a what-if (vLLM 0.26): random-weight drafters and the speculative_config that runs them
at an ASSUMED acceptance, through vLLM's synthetic rejection sampler.

Random weights accept nothing real, so vLLM is told how often to accept (`rejection_sample_method: "synthetic"`,
config/speculative.py): `synthetic_acceptance_rates` holds, per draft position i, the unconditional chance that the
first i+1 draft tokens are all accepted (non-increasing); `synthetic_acceptance_length` L is turned into
[1]*floor(L-1) + [frac] + [0]*... (SpeculativeConfig._acceptance_length_to_rates). Either way a verification step
yields on average 1 + sum(rates) tokens: the accepted drafts plus the target's own token.

Two drafters, both loaded with the target's `load_format="dummy"` (SpeculativeConfig.draft_load_config defaults
to the target's load config):
  - `eagle3`: one Llama decoder layer over the target's hidden states (vLLM's Eagle3LlamaForCausalLM: vLLM 0.26
    has no Qwen2-specific EAGLE-3 class, so a Qwen2.5 target's heads run as this one, model_executor/models/
    registry.py; its config is the target's sizes, one layer, the 32,000-token draft vocabulary common to published
    EAGLE-3 heads). vLLM 0.26 runs it on its V2 model runner with async scheduling and full CUDA graphs for the
    draft steps. With dummy weights no lm_head is loaded, so
    vLLM shares the target's (v1/worker/gpu/spec_decode/eagle/utils.py): each draft step multiplies the target's
    full-vocabulary lm_head, more than a trained head's own 32K one, so the what-if errs against the head.
  - `draft_model`: a separate small model of the Qwen2.5-0.5B architecture (24 layers). vLLM 0.26's V2 model
    runner does not take it, so the whole engine falls back to the V1 runner, without async scheduling and with
    piecewise CUDA graphs for the drafter (why it lost on the H100: the README's speculative what-if).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import QwenoptError
from ..models import ModelSource, cache_dir

SPEC_METHODS = ("eagle3", "draft_model")  # the first is the one searched unless --space names others
EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"  # vLLM 0.26 registry: llama_eagle3.Eagle3LlamaForCausalLM
EAGLE3_DRAFT_VOCAB = 32000  # the draft vocabulary common to published EAGLE-3 heads (Llama 3.1, Qwen3 ones)


def acceptance_rates(rate: float, tokens: int) -> list[float]:
    """vLLM's synthetic_acceptance_rates for a per-token acceptance rate: position i's entry is the unconditional
    chance that the first i+1 draft tokens are all accepted, rate ** (i + 1) (non-increasing, as vLLM requires)."""
    return [round(rate ** (i + 1), 6) for i in range(tokens)]


def mean_acceptance_length(rates: list[float]) -> float:
    """Tokens a verification step yields on average: the accepted drafts (sum of the unconditional rates) + 1."""
    return 1.0 + sum(rates)


def assumed_acceptance(engine_args: dict) -> str | None:
    """A plain note for a configuration whose speculative decoding runs at an ASSUMED acceptance (vLLM's synthetic
    rejection sampler), None for any other: labels must not let a what-if read as a measurement."""
    spec = engine_args.get("speculative_config") if isinstance(engine_args, dict) else None
    if not isinstance(spec, dict) or spec.get("rejection_sample_method") != "synthetic":
        return None
    rates = spec.get("synthetic_acceptance_rates")
    length = mean_acceptance_length(rates) if rates else spec.get("synthetic_acceptance_length")
    mean = f", mean acceptance length {float(length):.2f}" if isinstance(length, (int, float)) else ""
    return f"speculation at an ASSUMED acceptance{mean}, not measured"


def eagle3_head_config(target: dict, draft_vocab: int = EAGLE3_DRAFT_VOCAB) -> dict:
    """config.json of a one-layer EAGLE-3 head for `target` (a Qwen2 config): the keys vLLM 0.26's
    Eagle3LlamaForCausalLM and its LlamaDecoderLayer read. The head's layer has the target's width and heads; its
    input is the target's token embedding next to a projection (`fc`) of three of the target's hidden states."""
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
            "max_position_embeddings", "vocab_size")
    missing = [k for k in keys if k not in target]
    if missing:
        raise QwenoptError(f"an EAGLE-3 head needs the target's {', '.join(missing)}")
    config = {k: target[k] for k in keys}
    config.update(
        architectures=[EAGLE3_ARCHITECTURE], model_type="llama", num_hidden_layers=1, hidden_act="silu",
        draft_vocab_size=min(draft_vocab, target["vocab_size"]), target_hidden_size=target["hidden_size"],
        tie_word_embeddings=False, torch_dtype="bfloat16", attention_bias=False,
        head_dim=target.get("head_dim") or target["hidden_size"] // target["num_attention_heads"],
    )
    if "rope_theta" in target:
        config["rope_theta"] = target["rope_theta"]
    if "rope_parameters" in target:
        config["rope_parameters"] = target["rope_parameters"]
    return config


def eagle3_head_dir(target: ModelSource, max_model_len: int | None = None) -> Path:
    """A random-weight EAGLE-3 head folder for `target` (config.json only: vLLM loads it with the target's dummy
    load format and the target's tokenizer); written once per target and context length."""
    from ..models import with_yarn
    from ..results import atomic_write_text

    head = dataclasses.replace(target, name=f"{target.name}-eagle3", config=eagle3_head_config(target.config))
    folder = cache_dir("vllm", head, f"eagle3-head-{max_model_len or 'native'}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(with_yarn(head.config, max_model_len), indent=2) + "\n")
    return folder


def draft_model_dir(target: ModelSource, max_model_len: int | None = None) -> Path:
    """A random-weight Qwen2.5-0.5B-architecture folder to draft for `target` in speculative decoding: vLLM loads it
    with the target's dummy load format; its vocabulary is the target's (draft and target must share token ids)."""
    from ..models import resolve_model
    from .vllm import write_random_model_dir

    draft = resolve_model("qwen2.5-0.5b", "random")
    draft = dataclasses.replace(draft, config={**draft.config, "vocab_size": target.config["vocab_size"]})
    folder = cache_dir("vllm", draft, f"draft-vocab{target.config['vocab_size']}-{max_model_len or 'native'}")
    return write_random_model_dir(draft, "none", folder, max_model_len)


def drafter_dir(method: str, target: ModelSource, max_model_len: int | None = None) -> Path:
    """The random-weight folder a speculative method drafts with."""
    if method == "eagle3":
        return eagle3_head_dir(target, max_model_len)
    if method == "draft_model":
        return draft_model_dir(target, max_model_len)
    raise QwenoptError(f"speculative method {method!r}: qwenopt drafts with {' or '.join(SPEC_METHODS)}")


def with_random_drafter(options):
    """EngineOptions whose speculative_config names an eagle3 or draft_model method but no `model`, with the random
    drafter folder filled in, for a random-weight target (it inherits the dummy load format): so
    `--engine-args '{"speculative_config": {"method": "eagle3", "num_speculative_tokens": 4, ...}}'` needs no path,
    offline (bench) or served (load --launch). Anything else is returned as it is, for vLLM to judge."""
    spec = options.engine_args.get("speculative_config")
    if (options.source.weights != "random" or not isinstance(spec, dict) or spec.get("model")
            or spec.get("method") not in SPEC_METHODS):
        return options
    folder = drafter_dir(spec["method"], options.source, options.max_model_len)
    engine_args = {**options.engine_args, "speculative_config": {**spec, "model": str(folder)}}
    return dataclasses.replace(options, engine_args=engine_args)


def speculative_config(method: str, model: str, tokens: int, rates: list[float] | None = None,
                       length: float | None = None) -> dict:
    """vLLM 0.26's speculative_config (engine argument / `--speculative-config` JSON) at an ASSUMED acceptance:
    the per-position unconditional `rates`, or a mean acceptance `length` (give one)."""
    if method not in SPEC_METHODS:
        raise QwenoptError(f"speculative method {method!r}: qwenopt drafts with {' or '.join(SPEC_METHODS)}")
    if (rates is None) == (length is None):
        raise QwenoptError("give the assumed acceptance as rates or as a mean length, one of them")
    config = {"method": method, "model": str(model), "num_speculative_tokens": int(tokens),
              "rejection_sample_method": "synthetic"}
    if rates is not None:
        config["synthetic_acceptance_rates"] = list(rates)
    else:
        config["synthetic_acceptance_length"] = float(length)
    return config


def check_acceptance(rates: list[float], given: str) -> None:
    """The one range check of an ASSUMED per-token acceptance (load's one rate, tune's list): (0, 1]."""
    if not rates or not all(0 < rate <= 1 for rate in rates):
        raise QwenoptError(f"--spec-acceptance takes per-token rates in (0, 1], e.g. 0.8 (tune: 0.6,0.8); got {given}")


def assumed_speculation(engine_args: dict, rate: float, tokens: int, method: str = "eagle3") -> dict:
    """engine_args plus a speculative_config that drafts `tokens` a step with the random `method` drafter (its folder
    filled in at launch, with_random_drafter) at an ASSUMED per-token acceptance `rate`: `load --spec-acceptance`,
    the what-if at a user's own load (on the H200 an EAGLE-3 head at 0.8 or 0.6 cut mean E2E at 4-72 req/s, past
    saturation, and added no capacity: results/h200/tune/v2/spec_load*.csv)."""
    check_acceptance([rate], f"{rate:g}")
    if not 1 <= tokens <= 8:
        raise QwenoptError(f"--spec-tokens takes 1 to 8 draft tokens a step, got {tokens}")
    if "speculative_config" in engine_args:
        raise QwenoptError("--spec-acceptance writes the speculative_config: leave it out of --engine-args")
    config = {"method": method, "num_speculative_tokens": tokens, "rejection_sample_method": "synthetic",
              "synthetic_acceptance_rates": acceptance_rates(rate, tokens)}
    return {**engine_args, "speculative_config": config}


def spec_label(spec) -> str | None:
    """How a row names the speculative decoding it ran (vLLM's resolved SpeculativeConfig, or None): method, draft
    tokens and, for the synthetic sampler, `assumed-L` + the mean acceptance length it was told to produce."""
    if spec is None:
        return None
    label = f"spec-{spec.method}-k{spec.num_speculative_tokens}"
    if getattr(spec, "rejection_sample_method", None) == "synthetic":
        rates = spec.synthetic_acceptance_rates or []
        label += f"-assumed-L{mean_acceptance_length(rates):.2f}"
    return label
