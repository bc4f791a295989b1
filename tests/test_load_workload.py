"""Online workloads: lengths, the chat distribution, JSONL files, class mixes and lazy prompts, all seeded."""
import json
import math
from collections import Counter

import pytest

from qwenopt.errors import QwenoptError
from qwenopt.workload import (
    CHAT_INPUT_MEAN, CHAT_MIN_LEN, CHAT_OUTPUT_MEAN, Lengths, make_prompts, make_workload, parse_length, parse_mix,
)


def test_lengths_fixed_and_uniform_range():
    assert parse_length("512", "--input-len") == Lengths(512, 512)
    assert parse_length("128:2048", "--input-len") == Lengths(128, 2048)
    workload = make_workload("128:256", "64", seed=3)
    draws = [workload.sample(i) for i in range(2000)]
    inputs = [d[1] for d in draws]
    assert {d[0] for d in draws} == {"all"} and {d[2] for d in draws} == {64}
    assert min(inputs) == 128 and max(inputs) == 256  # both ends included
    assert abs(sum(inputs) / len(inputs) - 192) < 3  # uniform mean, seeded so exact every run
    assert workload.describe() == "in 128:256 out 64"


def test_sample_depends_only_on_seed_and_index():
    a, b = make_workload("1:1000", "1:1000", seed=7), make_workload("1:1000", "1:1000", seed=7)
    forward = [a.sample(i) for i in range(50)]
    assert [b.sample(i) for i in reversed(range(50))] == list(reversed(forward))
    assert [make_workload("1:1000", "1:1000", seed=8).sample(i) for i in range(50)] != forward


def test_prompts_are_lazy_exact_and_deterministic():
    workload = make_workload("100", "10", seed=1, vocab_size=1000)
    prompt = workload.prompt(5, 100)
    assert len(prompt) == 100 and all(1 <= t < 999 for t in prompt)
    assert workload.prompt(5, 100) == prompt and workload.prompt(6, 100) != prompt
    assert make_workload("100", "10", seed=2, vocab_size=1000).prompt(5, 100) != prompt


def test_each_level_has_prompts_of_its_own_and_the_same_requests():
    """Level 2 must not resend level 1's prompts (a prefix-caching server would serve them from cache), yet keep its
    classes and lengths, and a second run with the seed must get the same prompts level by level."""
    workload = make_workload(mix="a=0.5:64:8,b=0.5:32:4", seed=3, vocab_size=1000)
    one, two = workload.for_level(1), workload.for_level(2)
    assert [one.sample(i) for i in range(40)] == [two.sample(i) for i in range(40)] == [
        workload.sample(i) for i in range(40)]
    first = {tuple(one.prompt(i, one.sample(i)[1])) for i in range(40)}
    second = {tuple(two.prompt(i, two.sample(i)[1])) for i in range(40)}
    assert len(first) == len(second) == 40 and not first & second
    again = make_workload(mix="a=0.5:64:8,b=0.5:32:4", seed=3, vocab_size=1000).for_level(2)
    assert {tuple(again.prompt(i, again.sample(i)[1])) for i in range(40)} == second
    assert workload.for_level(0).prompt(5, 64) == workload.prompt(5, 64)  # level 0: a run's levels not involved
    assert one.describe() == workload.describe() and one.class_names == ["a", "b"]


def test_offline_prompts_unchanged():
    prompts = make_prompts(2, 8, 1000, 0)
    assert len(prompts) == 2 and all(len(p) == 8 and all(1 <= t < 999 for t in p) for p in prompts)
    assert make_prompts(2, 8, 1000, 0) == prompts


def test_chat_lengths_are_long_tailed_and_fit_the_context():
    workload = make_workload(workload="chat", seed=0, max_context=4096)
    draws = [workload.sample(i) for i in range(20000)]
    inputs, outputs = [d[1] for d in draws], [d[2] for d in draws]
    assert all(i >= CHAT_MIN_LEN and o >= CHAT_MIN_LEN and i + o <= 4096 for _, i, o in draws)
    # lognormal of sigma 1: mean near the target, median near 0.61 x the mean (seeded, so no flakiness)
    assert abs(sum(inputs) / len(inputs) / CHAT_INPUT_MEAN - 1) < 0.05
    assert abs(sum(outputs) / len(outputs) / CHAT_OUTPUT_MEAN - 1) < 0.05
    median = sorted(inputs)[len(inputs) // 2]
    assert abs(median / (CHAT_INPUT_MEAN * math.exp(-0.5)) - 1) < 0.05
    assert "chat lognormal" in workload.describe()


def test_chat_clips_to_a_small_context():
    workload = make_workload(workload="chat", seed=0, max_context=64)
    assert all(i + o <= 64 for _, i, o in (workload.sample(k) for k in range(2000)))


def test_mix_draws_classes_by_share():
    workload = make_workload(mix="short=0.8:128:64,long=0.2:4096:512", seed=0)
    counts = Counter(workload.sample(i)[0] for i in range(10000))
    assert abs(counts["short"] / 10000 - 0.8) < 0.02 and counts["short"] + counts["long"] == 10000
    assert all(workload.sample(i)[1:] == ((128, 64) if workload.sample(i)[0] == "short" else (4096, 512))
               for i in range(100))
    assert workload.class_names == ["short", "long"]
    assert workload.describe() == "mix short=0.8:128:64,long=0.2:4096:512"


def test_mix_classes_may_use_ranges():
    workload = make_workload(mix="a=0.5:10-20:5,b=0.5:100:5-6", seed=0)
    draws = [workload.sample(i) for i in range(500)]
    assert all(10 <= i <= 20 for c, i, _ in draws if c == "a") and all(o in (5, 6) for c, _, o in draws if c == "b")


def test_jsonl_lengths_cycle_in_order(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"input_len": 10, "output_len": 5}\n\n{"input_len": 20, "output_len": 6}\n')
    workload = make_workload(workload=str(path))
    assert [workload.sample(i)[1:] for i in range(5)] == [(10, 5), (20, 6), (10, 5), (20, 6), (10, 5)]
    assert "2 lines, in order" in workload.describe()
    shuffled = make_workload(workload=str(path), shuffle=True, seed=1)
    assert sorted(shuffled.sample(i)[1:] for i in range(2)) == [(10, 5), (20, 6)]


def test_jsonl_real_prompts_are_sent_as_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hello there", "output_len": 7}) + "\n")
    workload = make_workload(workload=str(path))
    assert workload.sample(0) == ("all", 0, 7)  # 0: the server's usage counts the prompt
    assert workload.prompt(3, 0) == "hello there"


@pytest.mark.parametrize("kwargs, message", [
    ({"input_len": "0"}, "--input-len lengths must be at least 1"),
    ({"input_len": "abc"}, "--input-len must be a token count"),
    ({"input_len": "1:2:3"}, "--input-len must be a token count"),
    ({"output_len": "50:10"}, "--output-len range '50:10' runs backwards"),
    ({"input_len": "4000", "output_len": "200", "max_context": 4096}, "exceed the model's context of 4096"),
    ({"mix": "short=0.8:128:64,long=0.3:4096:512"}, "--mix shares must sum to 1, got 1.1"),
    ({"mix": "short=0.8:128"}, "--mix classes are name=share:input:output"),
    ({"mix": "a=0.5:1:1,a=0.5:1:1"}, "--mix names class 'a' twice"),
    ({"mix": "all=1:1:1"}, "not 'all'"),
    ({"mix": "a=x:1:1"}, "--mix class a: share must be a number"),
    ({"mix": "a=0:1:1,b=1:1:1"}, "share must be in (0, 1]"),
    ({"mix": "a=1:1:40000"}, "--mix class a: input 1 + output 40000 tokens exceed"),
    ({"workload": "chat", "mix": "a=1:1:1"}, "give --workload or --mix, not both"),
    ({"workload": "chat", "input_len": "5"}, "cannot be combined with --workload"),
    ({"workload": "sharegpt"}, "--workload must be chat or a .jsonl file"),
    ({"workload": "/nonexistent/w.jsonl"}, "--workload /nonexistent/w.jsonl: cannot read it"),
])
def test_bad_workload_options_name_the_option(kwargs, message):
    with pytest.raises(QwenoptError) as error:
        make_workload(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ('{"input_len": 10, "output_len": 5}\nnot json\n', "line 2: not JSON"),
    ('[1, 2]\n', "line 1: expected an object"),
    ('{"input_len": 10}\n', "line 1: output_len is missing"),
    ('{"output_len": 5}\n', "line 1: give input_len (token count) or prompt (text)"),
    ('{"input_len": -1, "output_len": 5}\n', "line 1: input_len must be a positive integer"),
    ('{"input_len": true, "output_len": 5}\n', "line 1: input_len must be a positive integer"),
    ('{"prompt": "", "output_len": 5}\n', "line 1: prompt must be a non-empty string"),
    ('{"input_len": 40000, "output_len": 5}\n', "line 1: input 40000 + output 5 tokens exceed"),
    ('\n\n', "no request lines"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(QwenoptError) as error:
        make_workload(workload=str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_mix_parser_returns_classes_in_order():
    assert [c[0] for c in parse_mix("x=0.25:1:1, y=0.75:2:2")] == ["x", "y"]
