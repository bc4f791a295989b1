"""A tokenizer for random-weight model folders whose every word id round-trips through text.

Text clients (vllm bench serve, guidellm, aiperf, curl, transformers serve itself) send words, not ids,
so a random-weight server needs a tokenizer. A word-level one does not survive transformers 5: for
`model_type: qwen2` it builds `Qwen2Tokenizer`, which rebuilds a byte-level BPE from vocab + merges
with Qwen's split regex, so the words would encode to nothing. This one is such a BPE itself:

  - the special tokens sit at the config's bos/eos ids (Qwen2.5-7B: <|endoftext|> 151643,
    <|im_start|> 151644, <|im_end|> 151645; the tiny model: ids 1 and 2);
  - the other ids, in order, are the 256 byte-level symbols, then the space-prefixed letter words
    'Ġa'..'Ġz', 'Ġaa'..'Ġzz', 'Ġaaa'.. up to the vocabulary size; each word is merged from its
    prefix and its last letter, and every prefix comes first, so BPE rebuilds exactly that word.

Every word id decodes to " word" and " word" encodes back to that id, so a sequence of word ids
survives decode -> encode unchanged (the byte symbols and specials are not words: prompts use
`word_ids`).
"""
from __future__ import annotations

import functools
import itertools
import json
import string
from pathlib import Path

# Qwen's own names, in its order; the first also stands in for unk and pad as Qwen2Tokenizer expects.
SPECIAL_NAMES = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML as Qwen writes it, so /v1/chat/completions works too (the roles encode to byte symbols).
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Qwen2Tokenizer's PRETOKENIZE_REGEX (transformers 5.17 and 5.24 alike).
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in its order (space is 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(rest)}
    return [table[b] for b in [*printable, *rest]]


def letter_words():
    """'a'..'z', 'aa'..'zz', 'aaa'.. without end: shorter words (every word's prefix) first."""
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            yield "".join(letters)


def special_tokens(vocab_size: int, bos_token_id: int | None, eos_token_id: int | None) -> dict[int, str]:
    """id -> name of the special tokens: bos is <|endoftext|>, eos <|im_end|>, an id between them <|im_start|>."""
    ids = sorted({i for i in (bos_token_id, eos_token_id) if i is not None}) or [vocab_size - 1]
    for i in ids:
        if not 0 <= i < vocab_size:
            raise ValueError(f"special token id {i} is outside the vocabulary of {vocab_size}")
    if len(ids) == 2 and ids[1] - ids[0] == 2:  # Qwen's layout: endoftext, im_start, im_end
        ids.insert(1, ids[0] + 1)
    if len(ids) == 1:
        return {ids[0]: SPECIAL_NAMES[0]}
    return dict(zip(ids, (SPECIAL_NAMES[0], *SPECIAL_NAMES[1:-1][:len(ids) - 2], SPECIAL_NAMES[-1])))


def layout(vocab_size: int, specials: dict[int, str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (token -> id) and merges (in rank order) for `vocab_size` ids."""
    if vocab_size < 256 + len(specials) + 26:
        raise ValueError(f"a vocabulary of {vocab_size} cannot hold the 256 byte symbols, the specials and 'a'..'z'")
    free = (i for i in range(vocab_size) if i not in specials)
    vocab = {name: i for i, name in specials.items()}
    for symbol, i in zip(byte_symbols(), free):
        vocab[symbol] = i
    merges = []
    for word, i in zip(letter_words(), free):
        vocab["Ġ" + word] = i
        merges.append(("Ġ" + word[:-1], word[-1]))
    return vocab, merges


def word_ids(vocab_size: int, bos_token_id: int | None = None, eos_token_id: int | None = None) -> list[int]:
    """The ids that are words (each decodes to ' word' and back): every id but the byte symbols and specials."""
    specials = special_tokens(vocab_size, bos_token_id, eos_token_id)
    others = [i for i in range(vocab_size) if i not in specials]
    return others[256:]


def words_text(ids, vocab_size: int, bos_token_id: int | None = None, eos_token_id: int | None = None) -> str:
    """The text of word ids without loading a tokenizer (' aa ab ...'): what the tokenizer decodes them to."""
    words = _words(vocab_size, bos_token_id, eos_token_id)
    try:
        return "".join(" " + words[i] for i in ids)
    except KeyError as exc:
        raise ValueError(f"token id {exc.args[0]} is not a word id") from None


@functools.lru_cache(maxsize=4)
def _words(vocab_size: int, bos_token_id: int | None, eos_token_id: int | None) -> dict[int, str]:
    return dict(zip(word_ids(vocab_size, bos_token_id, eos_token_id), letter_words()))


def build(vocab_size: int, bos_token_id: int | None, eos_token_id: int | None):
    """The `tokenizers.Tokenizer`: Qwen2Tokenizer's pipeline (NFC, Qwen's split regex, byte level) on our BPE."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    specials = special_tokens(vocab_size, bos_token_id, eos_token_id)
    vocab, merges = layout(vocab_size, specials)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="",
                              fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    return tokenizer, vocab, merges, specials


def write_tokenizer(folder: str | Path, vocab_size: int, bos_token_id: int | None = None,
                    eos_token_id: int | None = None, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json into `folder`; returns it.

    tokenizer_config.json is written last, so a folder interrupted mid-write fails `has_tokenizer`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files(vocab_size, bos_token_id, eos_token_id, model_max_length).items():
        (folder / name).write_text(text)
    return folder


@functools.lru_cache(maxsize=2)
def tokenizer_files(vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
                    model_max_length: int | None) -> dict[str, str]:
    """File name -> text, in FILES order (built once per process: Qwen2.5-7B's takes about 2 s)."""
    tokenizer, vocab, merges, specials = build(vocab_size, bos_token_id, eos_token_id)
    names = [specials[i] for i in sorted(specials)]
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,  # as Qwen's: nothing is prepended, so a prompt is exactly its words
        "eos_token": specials[eos_token_id] if eos_token_id is not None else names[-1],
        "pad_token": SPECIAL_NAMES[0],  # always present: the first special id carries it
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length or 131072,
        "added_tokens_decoder": {str(i): {"content": specials[i], "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False, "special": True}
                                 for i in sorted(specials)},
    }
    if "<|im_start|>" in names:
        config["chat_template"] = CHAT_TEMPLATE
    return {
        "tokenizer.json": tokenizer.to_str(),
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
    }


def has_tokenizer(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in FILES)


def write_for_config(folder: str | Path, config: dict) -> Path:
    """The tokenizer for a model config (vocab_size, bos/eos ids, context), written into its folder."""
    from .models import max_context

    eos = config.get("eos_token_id")
    return write_tokenizer(folder, int(config["vocab_size"]), config.get("bos_token_id"),
                           eos[0] if isinstance(eos, list) else eos, max_context(config))
