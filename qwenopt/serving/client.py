"""Stream one completion and say what the user saw: every time from the request's *intended* arrival.

aiohttp (on uvloop) was chosen by measurement (benchmarks/http_clients.py, results/cpu/http_clients.txt): on the
2-core machine, 1,000 req/s of 16-chunk streams from one process, it held 965 streams/s (15,400 chunks/s) with
send-lag P99 2.0 ms and TTFT P50 20.8 ms (truth 20 ms); httpx managed 264 streams/s and fell seconds behind.

Dialects (what the server honours and how its stream ends):
- `vllm`: token-id prompt, `min_tokens` + `ignore_eos` force the length, usage in a last chunk with no choice
  (`stream_options.include_usage`), then `data: [DONE]`; every chunk with a choice carries a token.
- `openai` / `transformers` (transformers serve 5.x): only standard fields (serve answers 422 to others), a
  text prompt (serve takes only strings), the usage in the last chunk, which also carries an *empty* choice
  with the finish reason: that choice is no token. Serve sends no [DONE]: the usage chunk is the proper end.
A stream without its proper end is `truncated`; fewer tokens than asked (by the usage) `short`, more
`overlong`; an HTTP error or an `error` object in the stream `failed`; past `timeout_s` from the intended
arrival `timeout` (the request is cancelled).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from ..errors import QwenoptError
from .hf_launch import transformers_request_extras
from .samples import RequestPlan, RequestRecord

DIALECTS = ("auto", "vllm", "openai", "transformers")
JSON_HEADERS = {"Content-Type": "application/json"}
WORDS = [a + b for a in "bcdfghklmnprstvw" for b in "aeiou"]  # text prompts: one short word ~ one token


@dataclass(frozen=True)
class Target:
    """Where requests go and how to speak to it; picklable, so worker processes get it as is."""
    base_url: str  # OpenAI-compatible root ending in /v1
    model: str  # the served model string requests must carry
    dialect: str = "vllm"
    timeout_s: float = 30.0
    vocab_size: int = 151643
    seed: int = 0
    continuous_batching: bool = False  # transformers serve's mode: it decides how output lengths are forced

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"


def default_prompts(vocab_size: int, seed: int):
    """Prompts for a level built without a workload: the default workload's seeded token ids (workload.py makes
    every online prompt)."""
    from ..workload import make_workload

    return make_workload(seed=seed, vocab_size=vocab_size)


def as_text(ids: list[int]) -> str:
    """Token ids as words, for servers that take only text: about one token per word, the usage says how many."""
    return "".join(" " + WORDS[i % len(WORDS)] for i in ids)  # ' ba be': each a word of qwenopt's tokenizer


def request_body(target: Target, plan: RequestPlan, prompts) -> dict:
    """The JSON body for one plan: forced length on vLLM, only standard fields elsewhere."""
    body = {"model": target.model, "max_tokens": plan.output_len, "stream": True, "temperature": 0.0}
    prompt = prompts.prompt(plan.index, plan.input_len)  # token ids, or a workload file's text
    if target.dialect == "vllm":
        body["prompt"] = prompt
        body.update(min_tokens=plan.output_len, ignore_eos=True, stream_options={"include_usage": True})
    else:
        body["prompt"] = prompt if isinstance(prompt, str) else as_text(prompt)
        if target.dialect == "openai":
            body["stream_options"] = {"include_usage": True}
        elif target.dialect == "transformers":  # it refuses ignore_eos/min_tokens; generation_config forces length
            body.update(transformers_request_extras(target.continuous_batching, plan.output_len))
    return body


def encode_body(target: Target, plan: RequestPlan, prompts) -> bytes:
    """The body as bytes, built before the request is due so that sending it costs the least at its time."""
    return json.dumps(request_body(target, plan, prompts), separators=(",", ":")).encode()


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


async def stream_completion(session, target: Target, plan: RequestPlan, body: bytes, intended: float,
                            level_start: float, lag_s: float) -> RequestRecord:
    """Send one plan's body (encode_body) due at `intended` (perf_counter seconds) and return its record.

    Never raises for the server's faults: they are the record's outcome and error.
    """
    import aiohttp

    record = RequestRecord(index=plan.index, cls=plan.cls, warmup=plan.warmup, intended_s=intended - level_start,
                           send_lag_s=lag_s, input_len=plan.input_len, output_len=plan.output_len)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (intended + target.timeout_s - time.perf_counter())
    try:
        async with asyncio.timeout_at(deadline):
            await _stream(session, target, body, intended, record)
    except TimeoutError:
        record.outcome, record.error = "timeout", f"no complete answer within {target.timeout_s:g} s"
    except aiohttp.ClientPayloadError as exc:  # the connection broke inside the body
        record.outcome, record.error = "truncated", _one_line(f"stream broke: {exc}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: aiohttp's "line too long" and kin
        outcome = "truncated" if record.token_times_s else "failed"
        record.outcome, record.error = outcome, _one_line(f"{type(exc).__name__}: {exc}")
    if record.token_times_s:
        record.ttft_s = record.token_times_s[0]
    if record.e2e_s is None and record.outcome != "timeout":
        record.e2e_s = time.perf_counter() - intended
    return record


async def _stream(session, target: Target, body: bytes, intended: float, record: RequestRecord) -> None:
    """Read the SSE stream into `record`, then judge its outcome."""
    times = record.token_times_s
    ended = False
    usage_tokens = prompt_tokens = None
    vllm = target.dialect == "vllm"
    async with session.post(target.completions_url, data=body, headers=JSON_HEADERS) as response:
        if response.status != 200:
            text = (await response.read()).decode(errors="replace")
            record.outcome, record.error = "failed", _one_line(f"HTTP {response.status}: {text}")
            return
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter()
            data = line[5:].strip()
            if data == b"[DONE]":
                ended = True
                break
            try:
                chunk = json.loads(data)
                choices = chunk.get("choices") or []
                error = chunk.get("error")
            except (ValueError, AttributeError):
                record.outcome, record.error = "failed", _one_line(f"malformed chunk: {data[:120]!r}")
                return
            if error:
                message = error.get("message", error) if isinstance(error, dict) else error
                record.outcome, record.error = "failed", _one_line(f"error in stream: {message}")
                return
            if choices:
                choice = choices[0] if isinstance(choices[0], dict) else {}
                if vllm or choice.get("text") or choice.get("finish_reason") is None:
                    times.append(now - intended)
            usage = chunk.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
                prompt_tokens = usage.get("prompt_tokens")
                if not vllm:  # transformers serve ends with its usage chunk and sends no [DONE]
                    ended = True
        record.e2e_s = time.perf_counter() - intended
    record.output_tokens = usage_tokens if usage_tokens is not None else len(times)
    record.prompt_tokens = prompt_tokens
    if not ended:
        record.outcome, record.error = "truncated", f"stream ended without its end after {len(times)} tokens"
    elif record.output_tokens < record.output_len:
        record.outcome, record.error = "short", f"{record.output_tokens} of {record.output_len} tokens"
    elif record.output_tokens > record.output_len:
        record.outcome, record.error = "overlong", f"{record.output_tokens} tokens, {record.output_len} asked"


def new_session():
    """One aiohttp session per worker: unbounded connections (the runner decides what is in flight), no env proxy."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar(),
                                 auto_decompress=False)


async def _discover(base_url: str) -> tuple[str, str]:
    import aiohttp

    async with new_session() as session:
        try:
            async with session.get(f"{base_url}/models", timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != 200:
                    raise QwenoptError(f"{base_url}/models answered HTTP {response.status}; is this an "
                                       "OpenAI-compatible endpoint?")
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise QwenoptError(_one_line(f"cannot reach an OpenAI-compatible endpoint at {base_url}: "
                                         f"{type(exc).__name__}: {exc}", 300)) from None
    try:
        first = json.loads(text)["data"][0]
        return str(first["id"]), ("vllm" if first.get("owned_by") == "vllm" else "openai")
    except (ValueError, KeyError, IndexError, TypeError):
        raise QwenoptError(f"{base_url}/models did not list a model as OpenAI's API does "
                           f"(expected {{\"data\": [{{\"id\": ...}}]}}), got: {_one_line(text, 120)}") from None


def discover(base_url: str) -> tuple[str, str]:
    """The first served model and the dialect its /models answer suggests (vLLM says owned_by "vllm")."""
    return asyncio.run(_discover(base_url))
