"""The gateway against a fake upstream it cannot tell from vLLM's API, run in the test's own event loop.

The upstream (tests/gateway_upstream.py) holds each answer after its first chunk until the test opens
`upstream.gate`: contention is made with events, never with sleeps, and nothing asserts a speed.
Requests are tagged by the OpenAI `user` field, which the gateway passes through untouched.
"""
import asyncio
import json
import re
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from qwenopt.errors import QwenoptError  # noqa: E402
from qwenopt.serving.gateway import build_app  # noqa: E402
from qwenopt.serving.policy import (Admission, BadRequest, GatewayConfig, apply_rules,  # noqa: E402
                                    load_gateway_config, words)

from .gateway_upstream import WAIT_S, Upstream, serving, until  # noqa: E402
from .helpers import free_port

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "qwenopt-gateway.json"
VLLM_METRICS = {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                "vllm:time_to_first_token_seconds"}


@asynccontextmanager
async def stack(tokens=3, root=None, **config):
    """A fake upstream, a gateway in front of it, and a client of the gateway."""
    upstream = Upstream(tokens)
    upstream.root = str(root or upstream.root)
    async with serving(upstream) as upstream_url:
        app = build_app(GatewayConfig(upstream=f"{upstream_url}/v1", **config))
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S, trust_env=False) as client:
            yield upstream, app.state.gateway, client


def completion(tag, prompt_words=4, stream=True, **extra):
    return {"model": "fake-qwen", "prompt": " ".join(["word"] * prompt_words), "stream": stream, "user": tag, **extra}


async def scrape(client) -> dict:
    """/metrics as {(name, labels as a sorted tuple): value}."""
    text = (await client.get("/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def run(coroutine):
    return asyncio.run(coroutine)


# --- the rules, without HTTP ---

def test_classes_follow_prompt_length_in_ids_words_or_a_tokenizer():
    config = GatewayConfig()
    assert apply_rules({"prompt": [1] * 127}, False, config, words).klass == "high"
    assert apply_rules({"prompt": [1] * 128}, False, config, words).klass == "medium"
    assert apply_rules({"prompt": [[1] * 1000, [2] * 1048]}, False, config, words).klass == "low"
    assert apply_rules({"prompt": "a b c"}, False, config, words).prompt_len == 3
    chat = {"messages": [{"role": "user", "content": "one two"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    assert apply_rules(chat, True, config, words).prompt_len == 3
    assert apply_rules(chat, True, config, lambda text: 100 * len(text)).prompt_len == 800  # a tokenizer's count
    with pytest.raises(BadRequest):
        apply_rules({"prompt": 7}, False, config, words)


def test_caps_clamp_or_reject_and_priority_is_set_for_vllm():
    config = GatewayConfig(max_tokens=16, max_prompt_tokens=10, upstream_priority=True)
    admitted = apply_rules({"prompt": [1] * 10, "max_tokens": 100}, False, config, words)
    assert admitted.body["max_tokens"] == 16 and admitted.body["priority"] == 0
    assert apply_rules({"prompt": "a"}, False, config, words).body["max_tokens"] == 16  # none asked: the cap
    assert apply_rules({"prompt": "a", "max_tokens": 5}, False, config, words).body["max_tokens"] == 5
    with pytest.raises(BadRequest, match="at most 10"):
        apply_rules({"prompt": [1] * 11}, False, config, words)
    reject = GatewayConfig(max_tokens=16, max_tokens_over_cap="reject")
    with pytest.raises(BadRequest, match="at most 16"):
        apply_rules({"prompt": "a", "max_tokens": 17}, False, reject, words)
    long = apply_rules({"prompt": [1] * 3000}, False, GatewayConfig(upstream_priority=True), words)
    assert long.klass == "low" and long.body["priority"] == 2
    assert "priority" not in apply_rules({"prompt": "a"}, False, GatewayConfig(), words).body


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nmax-in-flight = 4\nqueue_low = 2\ntimeout_s = 5.0\n')
    config = load_gateway_config(path, upstream="http://x/v1/", timeout_s=7.0)
    assert (config.max_in_flight, config.queue_low, config.timeout_s, config.upstream) == (4, 2, 7.0, "http://x/v1")
    path.write_text("max_inflight = 4\n")
    with pytest.raises(QwenoptError, match="unknown option.*max_inflight"):
        load_gateway_config(path)
    with pytest.raises(QwenoptError, match="high_below"):
        GatewayConfig(high_below=4096)


def test_admission_queue_order_and_shedding_without_http():
    async def scenario():
        admission = Admission(GatewayConfig(max_in_flight=1, queue_high=1, queue_medium=2, queue_low=1, max_queued=2))
        first = admission.enter("low")
        low, medium = admission.enter("low"), admission.enter("medium")
        with pytest.raises(Exception, match="low priority queue is full"):
            admission.enter("low")
        high = admission.enter("high")  # the queue is full: the low waiter is pushed out, not the high
        with pytest.raises(Exception, match="pushed out"):
            await low.wait()
        with pytest.raises(Exception, match="gateway queue is full"):
            admission.enter("medium")  # nothing below medium to push out
        first.release()
        first.release()  # a second release frees nothing
        assert high.state == "granted" and medium.state == "queued" and sum(admission.in_flight.values()) == 1
        high.release()
        await medium.wait()
        medium.release()
        assert sum(admission.in_flight.values()) == 0 and admission.queued() == 0

    run(scenario())


def test_a_class_at_its_own_cap_waits_while_others_use_the_free_places():
    async def scenario():
        admission = Admission(GatewayConfig(max_in_flight=3, in_flight_low=1))
        long_one = admission.enter("low")
        long_two = admission.enter("low")  # the low class holds its one place: queued though two are free
        short_one, short_two = admission.enter("high"), admission.enter("high")  # not stuck behind the low waiter
        assert (long_one.state, long_two.state, short_one.state, short_two.state) == \
            ("granted", "queued", "granted", "granted")
        short_three = admission.enter("high")  # all three places taken: it queues, ahead of the low waiter
        short_one.release()
        await short_three.wait()
        assert long_two.state == "queued" and admission.in_flight == {"high": 2, "medium": 0, "low": 1}
        long_one.release()  # the low class's place frees: its waiter goes upstream
        await long_two.wait()
        for ticket in (long_two, short_two, short_three):
            ticket.release()
        assert sum(admission.in_flight.values()) == 0 and admission.queued() == 0

    run(scenario())
    settings = GatewayConfig(max_in_flight=0, in_flight_low=8).describe()
    assert settings.endswith("in-flight unbounded, low at most 8, queues 256/128/64")
    with pytest.raises(QwenoptError, match="in_flight_low must be 0 or more"):
        GatewayConfig(in_flight_low=-1)


# --- the gateway over HTTP ---

def test_a_short_request_behind_queued_long_ones_is_served_first():
    async def scenario():
        async with stack(max_in_flight=1, high_below=8, medium_below=16) as (upstream, gateway, client):
            first = asyncio.ensure_future(client.post("/v1/completions", json=completion("first", 20)))
            await until(lambda: len(upstream.arrivals) == 1)
            longs = [asyncio.ensure_future(client.post("/v1/completions", json=completion(f"long{i}", 20)))
                     for i in range(2)]
            await until(lambda: gateway.admission.queued() == 2, "two long requests queued")
            short = asyncio.ensure_future(client.post("/v1/completions", json=completion("short", 2)))
            await until(lambda: gateway.admission.queued() == 3, "the short request queued")
            upstream.gate.set()
            answers = await asyncio.gather(first, *longs, short)
            assert [a.status_code for a in answers] == [200] * 4
            assert [a["user"] for a in upstream.arrivals] == ["first", "short", "long0", "long1"]
            assert answers[-1].headers["x-qwenopt-class"] == "high"
            assert answers[0].headers["x-qwenopt-class"] == "low"
            assert "data: [DONE]" in answers[-1].text and answers[-1].text.count('"text": "x"') == 3

    run(scenario())


def test_caps_answer_400_and_the_capped_value_reaches_upstream():
    async def scenario():
        async with stack(max_tokens=16, max_prompt_tokens=10) as (upstream, gateway, client):
            upstream.gate.set()
            over = await client.post("/v1/completions", json=completion("big", 11))
            assert over.status_code == 400
            error = over.json()["error"]
            assert "at most 10" in error["message"] and error["type"] == "invalid_request_error"
            assert error["param"] == "prompt"
            ok = await client.post("/v1/completions", json=completion("capped", 3, max_tokens=5000))
            assert ok.status_code == 200
            assert [(a["user"], a["max_tokens"]) for a in upstream.arrivals] == [("capped", 16)]

    run(scenario())


def test_bad_input_gets_openai_errors_and_the_gateway_keeps_serving():
    async def scenario():
        async with stack() as (upstream, gateway, client):
            upstream.gate.set()
            malformed = await client.post("/v1/completions", content=b"{not json",
                                          headers={"content-type": "application/json"})
            assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
            unknown = await client.post("/v1/completions", json={**completion("x"), "model": "gpt-9"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            assert "fake-qwen" in unknown.json()["error"]["message"]
            not_a_prompt = await client.post("/v1/chat/completions", json={"model": "fake-qwen", "messages": []})
            assert not_a_prompt.status_code == 400 and not_a_prompt.json()["error"]["param"] == "messages"
            assert upstream.arrivals == []
            fine = await client.post("/v1/chat/completions", json={
                "model": "fake-qwen", "messages": [{"role": "user", "content": "hi"}], "stream": False, "user": "c"})
            assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] == 3

    run(scenario())


def test_a_gateway_bug_is_a_500_and_the_gateway_keeps_serving():
    def count(text):
        if text == "boom":
            raise RuntimeError("counter broke")
        return len(text.split())

    async def scenario():
        upstream = Upstream()
        upstream.gate.set()
        async with serving(upstream) as upstream_url:
            app = build_app(GatewayConfig(upstream=f"{upstream_url}/v1"), count_text=count, prompt_unit="words")
            async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client:
                broken = await client.post("/v1/completions", json={**completion("x"), "prompt": "boom"})
                assert broken.status_code == 500 and "counter broke" in broken.json()["error"]["message"]
                assert (await client.post("/v1/completions", json=completion("y"))).status_code == 200
                metrics = await scrape(client)
        assert metrics[("qwenopt_gateway_requests_total", (("class", "none"), ("outcome", "error")))] == 1
        assert [a["user"] for a in upstream.arrivals] == ["y"]

    run(scenario())


def test_timeout_answers_an_error_and_cancels_the_upstream_request():
    async def scenario():
        async with stack(timeout_s=0.3) as (upstream, gateway, client):
            streamed = await client.post("/v1/completions", json=completion("streamed"))
            assert streamed.status_code == 200  # the stream had begun: the error is its last event
            events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
            assert json.loads(events[0])["choices"][0]["text"] == "x"
            assert json.loads(events[-2])["error"]["type"] == "timeout_error" and events[-1] == "[DONE]"
            plain = await client.post("/v1/completions", json=completion("plain", stream=False))
            assert plain.status_code == 504 and "0.3 s timeout" in plain.json()["error"]["message"]
            await until(lambda: sorted(upstream.cancelled) == ["plain", "streamed"], "upstream cancellations")
            assert upstream.finished == []
            metrics = await scrape(client)
            assert metrics[("qwenopt_gateway_timeouts_total", (("class", "high"),))] == 2
            assert sum(gateway.admission.in_flight.values()) == 0

    run(scenario())


def test_full_queue_answers_429_and_no_request_is_lost_or_duplicated():
    async def scenario():
        limits = dict(max_in_flight=1, queue_high=1, queue_medium=1, queue_low=1, max_queued=2, retry_after_s=3,
                      high_below=8, medium_below=16)
        async with stack(**limits) as (upstream, gateway, client):
            def post(tag, length):
                return asyncio.ensure_future(client.post("/v1/completions", json=completion(tag, length)))

            sent = {"busy": post("busy", 2)}
            await until(lambda: len(upstream.arrivals) == 1)
            sent["low"] = post("low", 20)
            await until(lambda: gateway.admission.queued() == 1)
            sent["medium"] = post("medium", 10)
            await until(lambda: gateway.admission.queued() == 2)
            low_again = await client.post("/v1/completions", json=completion("low-again", 20))
            assert low_again.status_code == 429 and low_again.headers["retry-after"] == "3"
            assert low_again.json()["error"]["type"] == "rate_limit_error"
            sent["high"] = post("high", 2)  # the queue is full: the queued low request is shed for it
            answers = {"low-again": low_again}
            answers["low"] = await sent.pop("low")
            assert answers["low"].status_code == 429
            upstream.gate.set()
            for tag, task in sent.items():
                answers[tag] = await task
            served = sorted(tag for tag, answer in answers.items() if answer.status_code == 200)
            assert served == ["busy", "high", "medium"]
            assert {tag for tag, a in answers.items() if a.status_code == 429} == {"low", "low-again"}
            assert sorted(a["user"] for a in upstream.arrivals) == served  # each served once, the shed never
            assert sorted(upstream.finished) == served

    run(scenario())


def test_metrics_after_a_known_sequence():
    async def scenario():
        async with stack(max_prompt_tokens=3000, max_in_flight=1, queue_low=0) as (upstream, gateway, client):
            upstream.gate.set()
            for tag in ("a", "b"):
                assert (await client.post("/v1/completions", json=completion(tag, 4))).status_code == 200
            assert (await client.post("/v1/completions", json=completion("m", 200, stream=False))).status_code == 200
            assert (await client.post("/v1/completions", json=completion("big", 3001))).status_code == 400
            upstream.gate.clear()
            held = asyncio.ensure_future(client.post("/v1/completions", json=completion("held", 4)))
            await until(lambda: len(upstream.arrivals) == 4)
            assert (await client.post("/v1/completions", json=completion("low", 2500))).status_code == 429
            metrics = await scrape(client)
            assert metrics[("qwenopt_gateway_in_flight", (("class", "high"),))] == 1
            assert metrics[("qwenopt_gateway_queue_depth", (("class", "low"),))] == 0
            upstream.gate.set()
            assert (await held).status_code == 200
            metrics = await scrape(client)

        def value(name, **labels):
            return metrics.get((name, tuple(sorted(labels.items()))), 0)

        assert value("qwenopt_gateway_requests_total", **{"class": "high", "outcome": "ok"}) == 3
        assert value("qwenopt_gateway_requests_total", **{"class": "medium", "outcome": "ok"}) == 1
        assert value("qwenopt_gateway_requests_total", **{"class": "low", "outcome": "rejected"}) == 1
        assert value("qwenopt_gateway_requests_total", **{"class": "low", "outcome": "shed"}) == 1
        assert value("qwenopt_gateway_shed_total", **{"class": "low"}) == 1
        assert value("qwenopt_gateway_e2e_seconds_count", **{"class": "high"}) == 3
        assert value("qwenopt_gateway_ttft_seconds_count", **{"class": "high"}) == 3  # all three streamed
        assert value("qwenopt_gateway_e2e_seconds_count", **{"class": "medium"}) == 1
        assert value("qwenopt_gateway_ttft_seconds_count", **{"class": "medium"}) == 0  # not streamed
        assert value("qwenopt_gateway_in_flight", **{"class": "high"}) == 0
        assert value("qwenopt_gateway_info", prompt_length_unit="words", upstream_priority="false",
                     max_in_flight="1") == 1

    run(scenario())


def test_a_stream_passes_through_chunk_by_chunk():
    async def scenario():
        async with stack() as (upstream, gateway, client):
            async with client.stream("POST", "/v1/completions", json=completion("s")) as response:
                lines = response.aiter_lines()
                first = await anext(line async for line in lines if line.startswith("data: "))
                assert json.loads(first[6:])["choices"][0]["text"] == "x"
                assert upstream.finished == []  # the first chunk came while the upstream still holds the rest
                upstream.gate.set()
                rest = [line async for line in lines if line.startswith("data: ")]
            assert rest[-1] == "data: [DONE]" and len(rest) == 4  # two more tokens, the usage, [DONE]

    run(scenario())


def test_a_client_that_disconnects_frees_its_slot_and_cancels_upstream():
    async def scenario():
        async with stack(max_in_flight=1) as (upstream, gateway, client):
            async with client.stream("POST", "/v1/completions", json=completion("leaver")) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # the first token came through; the client leaves mid-stream
            await until(lambda: upstream.cancelled == ["leaver"], "the upstream sees the disconnect")
            await until(lambda: sum(gateway.admission.in_flight.values()) == 0, "the slot is freed")
            upstream.gate.set()
            after = await client.post("/v1/completions", json=completion("next"))
            assert after.status_code == 200 and upstream.finished == ["next"]
            metrics = await scrape(client)
            assert metrics[("qwenopt_gateway_requests_total", (("class", "high"), ("outcome", "disconnected")))] == 1

    run(scenario())


def test_a_client_that_leaves_while_queued_frees_its_place():
    async def scenario():
        async with stack(max_in_flight=1) as (upstream, gateway, client):
            busy = asyncio.ensure_future(client.post("/v1/completions", json=completion("busy")))
            await until(lambda: len(upstream.arrivals) == 1)
            waiter = asyncio.ensure_future(client.post("/v1/completions", json=completion("waiter")))
            await until(lambda: gateway.admission.queued() == 1)
            waiter.cancel()  # httpx closes the connection
            await until(lambda: gateway.admission.queued() == 0, "the queue place is freed")
            upstream.gate.set()
            assert (await busy).status_code == 200
            assert [a["user"] for a in upstream.arrivals] == ["busy"]

    run(scenario())


def test_upstream_priority_and_health():
    async def scenario():
        async with stack(upstream_priority=True, high_below=8, medium_below=16) as (upstream, gateway, client):
            upstream.gate.set()
            for tag, length in (("short", 2), ("middle", 10), ("long", 20)):
                await client.post("/v1/completions", json=completion(tag, length))
            assert [(a["user"], a["priority"]) for a in upstream.arrivals] == [("short", 0), ("middle", 1), ("long", 2)]
            assert (await client.get("/health")).status_code == 200
            upstream.healthy = False
            unhealthy = await client.get("/health")
            assert unhealthy.status_code == 503 and unhealthy.json()["upstream_health"] == "HTTP 503"
            assert (await client.get("/v1/models")).json()["data"][0]["id"] == "fake-qwen"

    run(scenario())


def test_the_gateway_command_runs_as_a_process_in_front_of_a_server(tmp_path, monkeypatch):
    from qwenopt.serving.gateway_launch import launch_gateway
    from qwenopt.serving.launcher import check_port_free
    from tests.stream_server import serve_in_thread

    monkeypatch.chdir(tmp_path)  # the child must import this qwenopt from anywhere
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nmax_tokens = 3\n")
    port = free_port()
    body = {"model": "fake-qwen", "prompt": [1, 2], "max_tokens": 50, "stream": True, "ignore_eos": True}
    with serve_in_thread(ttft_s=0, gap_s=0) as (upstream, _), launch_gateway(upstream, port, config) as url:
        answer = httpx.post(f"{url}/completions", json=body, timeout=WAIT_S, trust_env=False)
        assert answer.status_code == 200 and answer.headers["x-qwenopt-class"] == "high"
        assert answer.text.count('"text": "x"') == 3  # the config's cap reached the upstream
        assert "qwenopt_gateway_requests_total" in httpx.get(f"{url[:-3]}/metrics", trust_env=False).text
    check_port_free("127.0.0.1", port)  # stopped: the port is free again


def test_text_prompts_are_counted_by_the_upstream_models_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # "," is a token of its own: 4 tokens, 3 words
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}')

    async def scenario():
        async with stack(root=tmp_path) as (upstream, gateway, client):
            upstream.gate.set()
            answer = await client.post("/v1/completions", json={**completion("t"), "prompt": "hello world, hello"})
            assert answer.headers["x-qwenopt-prompt-length"] == "4"
            metrics = await scrape(client)
        assert metrics[("qwenopt_gateway_info", (("max_in_flight", "64"), ("prompt_length_unit", "tokens"),
                                                 ("upstream_priority", "false")))] == 1

    run(scenario())


def test_grafana_dashboard_names_only_exported_or_vllm_metrics():
    async def exported():
        async with stack() as (upstream, gateway, client):
            text = (await client.get("/metrics")).text
        return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}

    families = run(exported())
    names = set()
    for family in families:  # a family's series: counters end in _total, histograms add _bucket/_sum/_count
        names |= {family, family + "_total", family + "_bucket", family + "_sum", family + "_count"}
    assert {"qwenopt_gateway_gpu_utilization_percent", "qwenopt_gateway_gpu_memory_used_bytes"} <= families
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in re.findall(r"\b((?:qwenopt_gateway_|vllm:)[a-zA-Z0-9_:]+)", expr)}
    unknown = {name for name in used if name not in names and name.removesuffix("_bucket") not in VLLM_METRICS
               and name not in VLLM_METRICS}
    assert not unknown, unknown
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= used
    assert "vllm:time_to_first_token_seconds_bucket" in used


def test_gateway_command_bad_input_is_one_error_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from qwenopt.cli import app

    result = CliRunner().invoke(app, ["gateway"])
    assert result.exit_code == 2 and "give the upstream's base URL with --upstream" in result.output
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nupstream = 'http://127.0.0.1:1/v1'\nqueue_lo = 3\n")
    result = CliRunner().invoke(app, ["gateway", "--config", str(config)])
    assert result.exit_code == 2 and "unknown option(s) queue_lo" in result.output
    result = CliRunner().invoke(app, ["gateway", "--upstream", "http://127.0.0.1:1/v1", "--max-in-flight", "-1"])
    assert result.exit_code == 2 and "max_in_flight must be 0 or more" in result.output
    result = CliRunner().invoke(app, ["gateway", "--upstream", "http://127.0.0.1:1/v1", "--port", str(free_port()),
                                      "--tokenizer", str(tmp_path)])  # a folder with no tokenizer in it
    assert result.exit_code == 2 and f"cannot load a tokenizer from {tmp_path}" in result.output


def test_load_through_the_gateway_bounds_what_reaches_the_server(tmp_results):
    import pandas as pd
    from typer.testing import CliRunner

    from qwenopt.cli import app
    from tests.stream_server import serve_in_thread

    config = tmp_results / "gateway.toml"
    config.write_text("[gateway]\nmax_in_flight = 2\n")
    args = ["--model", "qwen2-tiny", "--input-len", "8", "--output-len", "3", "--rate", "100", "--num-requests", "30",
            "--out", "load.csv"]
    with serve_in_thread(ttft_s=0.05, gap_s=0.01) as (url, server):
        result = CliRunner().invoke(app, ["load", "--endpoint", url, "--gateway", "--gateway-port", str(free_port()),
                                          "--gateway-config", str(config), *args])
        assert result.exit_code == 0, result.output
        assert server.stats.requests == 30 and server.stats.max_in_flight <= 2  # the gateway's bound held
        direct = CliRunner().invoke(app, ["load", "--endpoint", url, *args])
        assert direct.exit_code == 0, direct.output
    assert "gateway: ok 30 (high 30)" in " ".join(result.stderr.split())
    frame = pd.read_csv(tmp_results / "load.csv")
    assert list(frame["via_gateway"]) == [True, False]
    assert frame["gateway"][0] == ("no upstream priority, classes <128/<2048, max_tokens 2048, timeout 30s, "
                                   "in-flight 2, queues 256/128/64") and pd.isna(frame["gateway"][1])
    assert list(frame["completed"]) == [30, 30] and set(frame["endpoint"]) == {url}
    # the server's prefix-cache counters, read past the gateway: the direct rerun resent the same 30 prompts
    assert list(frame["prefix_cache_hit_rate"]) == [0.0, 1.0]


def test_gateway_settings_name_the_matrix_config():
    from qwenopt.matrix import online_label
    from qwenopt.serving.policy import GatewayConfig

    settings = GatewayConfig(max_in_flight=0, upstream_priority=True).describe()
    assert settings == "priority upstream, classes <128/<2048, max_tokens 2048, timeout 30s, no admission control"
    row = {"regime": "vllm-fp16", "server": "vllm", "serve_mode": "priority", "via_gateway": True, "gateway": settings}
    assert online_label(row) == f"vllm-fp16 @vllm priority via gateway ({settings})"


def test_load_gateway_options_refuse_what_does_not_fit(tmp_results):
    from typer.testing import CliRunner

    from qwenopt.cli import app

    base = ["load", "--endpoint", "http://127.0.0.1:1/v1", "--model", "qwen2-tiny", "--out", "x.csv"]
    result = CliRunner().invoke(app, [*base, "--gateway-config", "g.toml"])
    assert result.exit_code == 2 and "--gateway-config needs --gateway" in result.output


def test_a_missing_web_stack_names_the_extra(monkeypatch):
    import sys

    from qwenopt.serving.gateway import require_serve

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(QwenoptError, match=r"pip install 'qwenopt\[serve\]'"):
        require_serve()
