"""The random-weight tokenizer: every word id survives decode -> encode through transformers' AutoTokenizer."""
from __future__ import annotations

import json
import random

import pytest

from qwenopt.models import resolve_model
from qwenopt.tokenizer import (FILES, byte_symbols, has_tokenizer, layout, special_tokens, word_ids, words_text,
                               write_for_config, write_tokenizer)


def round_trips(folder, vocab_size, bos, eos, sequences=200, length=64) -> int:
    """How many of `sequences` seeded random word-id sequences come back unchanged from decode -> encode."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer" and len(tokenizer) == vocab_size
    ids, rng, same = word_ids(vocab_size, bos, eos), random.Random(0), 0
    for _ in range(sequences):
        sequence = [rng.choice(ids) for _ in range(length)]
        text = tokenizer.decode(sequence)
        assert text == words_text(sequence, vocab_size, bos, eos)  # clients can build prompts without it
        same += tokenizer(text)["input_ids"] == sequence
    return same


def test_tiny_vocabulary_round_trips(tmp_path):
    config = resolve_model("qwen2-tiny", "random").config
    folder = write_for_config(tmp_path, config)
    assert has_tokenizer(folder) and sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert round_trips(folder, 8192, 1, 2) == 200


def test_qwen_7b_vocabulary_round_trips(tmp_path):
    config = resolve_model("qwen2.5-7b", "random").config
    folder = write_for_config(tmp_path, config)
    assert round_trips(folder, 152064, 151643, 151645) == 200
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer" and tokenizer_config["eos_token"] == "<|im_end|>"


def test_qwen_layout_puts_the_specials_at_the_config_ids():
    specials = special_tokens(152064, 151643, 151645)
    assert specials == {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
    vocab, merges = layout(152064, specials)
    assert sorted(vocab.values()) == list(range(152064))  # every id once, none past the model's
    by_id = {i: token for token, i in vocab.items()}
    assert [by_id[i] for i in range(256)] == byte_symbols()
    assert (by_id[256], by_id[281], by_id[282]) == ("Ġa", "Ġz", "Ġaa")
    assert by_id[151642].startswith("Ġ") and by_id[151646].startswith("Ġ") and by_id[152063].startswith("Ġ")
    # each word is merged from its prefix and its last letter, and the prefix comes first
    rank = {"".join(pair): n for n, pair in enumerate(merges)}
    for word in ("Ġab", "Ġabc", "Ġzzz", by_id[152063]):
        assert merges[rank[word]] == (word[:-1], word[-1])
        assert len(word) == 2 or rank[word[:-1]] < rank[word]


def test_specials_that_overlap_the_byte_symbols_push_them_along():
    specials = special_tokens(8192, 1, 2)
    assert specials == {1: "<|endoftext|>", 2: "<|im_end|>"}
    vocab, _ = layout(8192, specials)
    assert vocab["!"] == 0 and vocab['"'] == 3 and vocab["Ġa"] == 258
    assert word_ids(8192, 1, 2)[0] == 258 and len(word_ids(8192, 1, 2)) == 8192 - 258


def test_other_special_layouts():
    assert special_tokens(1000, 5, 5) == {5: "<|endoftext|>"}
    assert special_tokens(1000, None, None) == {999: "<|endoftext|>"}
    assert special_tokens(1000, 10, 20) == {10: "<|endoftext|>", 20: "<|im_end|>"}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        special_tokens(1000, 1, 1000)
    with pytest.raises(ValueError, match="cannot hold"):
        layout(200, special_tokens(200, None, None))


def test_words_text_refuses_ids_that_are_not_words():
    assert words_text([258, 259], 8192, 1, 2) == " a b"
    with pytest.raises(ValueError, match="token id 3 is not a word id"):
        words_text([258, 3], 8192, 1, 2)


def test_chat_template_only_with_chatml_specials(tmp_path):
    write_tokenizer(tmp_path / "qwen", 152064, 151643, 151645)
    write_tokenizer(tmp_path / "tiny", 8192, 1, 2)
    assert "<|im_start|>" in json.loads((tmp_path / "qwen" / "tokenizer_config.json").read_text())["chat_template"]
    assert "chat_template" not in json.loads((tmp_path / "tiny" / "tokenizer_config.json").read_text())
