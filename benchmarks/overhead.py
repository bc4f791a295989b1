"""qwenopt's vLLM engine against a bare `LLM.generate` loop on the same cells, in one process.

The bare loop is what a user would write: `vllm.LLM` with its defaults (stats off), prompts as token ids,
wall-clock around each `generate`. qwenopt's engine adds per-request stats and sample parsing; it must
keep at least 0.99 of the bare output throughput. Run on a GPU host with vLLM:

    python3 benchmarks/overhead.py --out overhead.csv
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import pandas as pd

os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

from qwenopt.engines.base import EngineOptions  # noqa: E402
from qwenopt.engines.vllm import VLLMEngine, engine_args  # noqa: E402
from qwenopt.models import resolve_model  # noqa: E402
from qwenopt.regimes import get_regime  # noqa: E402
from qwenopt.workload import make_prompts  # noqa: E402

CELLS = [(1, 128, 256), (64, 512, 256), (256, 512, 256)]


def timed_runs(generate, prompts, output_len, repeats):
    generate(prompts, output_len)  # warm-up
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(prompts, output_len)
        walls.append(time.perf_counter() - start)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="vllm-fp16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="overhead.csv")
    args = parser.parse_args()

    import vllm
    from vllm import SamplingParams, TokensPrompt

    spec = get_regime(args.regime)
    source = resolve_model("qwen2.5-7b", "random")
    options = EngineOptions(source=source, device="cuda", dtype="bf16", quant=spec.quant, max_model_len=4096)
    engine = VLLMEngine(spec, options)
    rows = []

    # 1. the bare loop: vLLM's defaults, except what makes the workload identical (dummy weights, no prefix cache)
    from qwenopt.engines.vllm import default_model_dir, write_random_model_dir

    folder = write_random_model_dir(source, spec.quant, default_model_dir(source, spec.quant, 4096), 4096)
    bare_args = {k: v for k, v in engine_args(spec, options, folder).items() if k != "disable_log_stats"}
    llm = vllm.LLM(**bare_args)

    def bare(prompts, output_len):
        params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                                detokenize=False)
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    for batch, inp, out in CELLS:
        prompts = make_prompts(batch, inp, source.config["vocab_size"], 0)
        walls = timed_runs(bare, prompts, out, args.repeats)
        rows.append({"who": "bare", "batch": batch, "input": inp, "output": out,
                     "out_tok_s": batch * out / statistics.median(walls)})
    llm.llm_engine.engine_core.shutdown()
    del llm
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()

    # 2. qwenopt's engine, same cells
    engine.load()
    for batch, inp, out in CELLS:
        prompts = make_prompts(batch, inp, source.config["vocab_size"], 0)
        walls = timed_runs(engine.generate, prompts, out, args.repeats)
        rows.append({"who": "qwenopt", "batch": batch, "input": inp, "output": out,
                     "out_tok_s": batch * out / statistics.median(walls)})
    engine.close()

    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index=["batch", "input", "output"], columns="who", values="out_tok_s")
    table["ratio"] = table["qwenopt"] / table["bare"]
    table.to_csv(args.out)
    print(table.to_string(float_format=lambda v: f"{v:,.3f}"))
    print("qwenopt / bare >= 0.99 on every cell:", bool((table["ratio"] >= 0.99).all()))


if __name__ == "__main__":
    main()
