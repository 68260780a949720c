"""Where `--sam` / `--clip` come from: paths, URLs and hub ids, all without the network (the
download functions are replaced)."""

from __future__ import annotations

import io
import sys
import types

import pytest
import torch

from dsocr.errors import DsocrError
from dsocr.weights import hub
from dsocr.weights.convert import convert

from oracles import hf_clip_vision_model, hf_sam_model


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any real download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(hub, "_open_url", refuse)
    monkeypatch.setattr(hub, "_hf_snapshot_download", refuse)
    monkeypatch.setattr(hub, "_modelscope_snapshot_download", refuse)


def test_local_paths_pass_through(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    assert hub.resolve_source(str(tmp_path / "w.pth")) == tmp_path / "w.pth"
    assert hub.resolve_source(str(tmp_path)) == tmp_path


def test_what_looks_like_what():
    assert hub.is_repo_id("facebook/sam-vit-base") and hub.is_repo_id("openai/clip-vit-large-patch14-336")
    assert not hub.is_repo_id("weights/sam.pth") and not hub.is_repo_id("a/b/c") and not hub.is_repo_id("sam.pth")
    assert hub.is_url(hub.SAM_VIT_B_URL) and not hub.is_url("facebook/sam-vit-base")


def test_missing_path_that_is_no_id(tmp_path):
    with pytest.raises(DsocrError, match="no such file or directory"):
        hub.resolve_source(str(tmp_path / "deep" / "er" / "sam.pth"))


def test_hf_snapshot_prefers_safetensors(tmp_path, monkeypatch):
    calls = []
    snapshot = tmp_path / "snapshot"

    def fake(repo_id, allow_patterns, cache_dir):
        calls.append((repo_id, list(allow_patterns), cache_dir))
        snapshot.mkdir(exist_ok=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"")
        return str(snapshot)

    monkeypatch.setattr(hub, "_hf_snapshot_download", fake)
    assert hub.resolve_source("facebook/sam-vit-base", log=lambda s: None) == snapshot
    assert calls == [("facebook/sam-vit-base", hub.SAFETENSORS_PATTERNS, None)]
    assert "model.safetensors" in calls[0][1] and "config.json" in calls[0][1]
    assert not any("bin" in p or "h5" in p or "msgpack" in p for p in calls[0][1])


def test_hf_snapshot_falls_back_to_bin(tmp_path, monkeypatch):
    calls = []

    def fake(repo_id, allow_patterns, cache_dir):
        calls.append(list(allow_patterns))
        (tmp_path / "config.json").write_text("{}")
        if "pytorch_model.bin" in allow_patterns:
            (tmp_path / "pytorch_model.bin").write_bytes(b"")
        return str(tmp_path)

    monkeypatch.setattr(hub, "_hf_snapshot_download", fake)
    assert hub.resolve_source("someone/old-model", cache_dir=tmp_path / "c", log=lambda s: None) == tmp_path
    assert calls == [hub.SAFETENSORS_PATTERNS, hub.PICKLE_PATTERNS]


def test_hf_errors_are_one_line(monkeypatch):
    def fail(repo_id, allow_patterns, cache_dir):
        raise OSError("Repository Not Found for url: https://huggingface.co/api/models/nobody/nothing.\nmore")

    monkeypatch.setattr(hub, "_hf_snapshot_download", fail)
    with pytest.raises(DsocrError, match="nobody/nothing: cannot download from the Hugging Face Hub") as info:
        hub.resolve_source("nobody/nothing", log=lambda s: None)
    assert "\n" not in str(info.value)


def test_modelscope_not_installed(monkeypatch):
    monkeypatch.undo()  # the real _modelscope_snapshot_download, whose import must fail
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(DsocrError, match=r"needs the modelscope package \(pip install modelscope\)"):
        hub.resolve_source("AI-ModelScope/clip-vit-large-patch14", hub="modelscope", log=lambda s: None)


def test_modelscope_snapshot(tmp_path, monkeypatch):
    monkeypatch.undo()
    calls = []

    def snapshot_download(model_id, cache_dir=None, allow_patterns=None):
        calls.append((model_id, allow_patterns))
        (tmp_path / "model.safetensors").write_bytes(b"")
        return str(tmp_path)

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert hub.resolve_source("AI-ModelScope/clip-vit-large-patch14", hub="modelscope", log=lambda s: None) == tmp_path
    assert calls == [("AI-ModelScope/clip-vit-large-patch14", hub.SAFETENSORS_PATTERNS)]


def test_unknown_hub():
    with pytest.raises(DsocrError, match="unknown hub"):
        hub.resolve_source("facebook/sam-vit-base", hub="elsewhere")


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, announced: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if announced is None else announced)}


def test_url_download_is_cached_and_atomic(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 10_000
    opened = []

    def fake_open(url):
        opened.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(hub, "_open_url", fake_open)
    first = hub.resolve_source(hub.SAM_VIT_B_URL, cache_dir=tmp_path, log=lambda s: None)
    assert first == tmp_path / "sam_vit_b_01ec64.pth" and first.read_bytes() == payload
    assert hub.resolve_source(hub.SAM_VIT_B_URL, cache_dir=tmp_path, log=lambda s: None) == first
    assert opened == [hub.SAM_VIT_B_URL]  # the second call reused the file
    assert [p.name for p in tmp_path.iterdir()] == ["sam_vit_b_01ec64.pth"]


def test_url_download_cut_short_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_open_url", lambda url: FakeResponse(b"x" * 1000, announced=5000))
    with pytest.raises(DsocrError, match="download incomplete \\(1000 of 5000 bytes\\)"):
        hub.resolve_source(hub.SAM_VIT_B_URL, cache_dir=tmp_path, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_url_download_network_error(tmp_path, monkeypatch):
    def fail(url):
        raise OSError("Name or service not known")

    monkeypatch.setattr(hub, "_open_url", fail)
    with pytest.raises(DsocrError, match="download failed \\(OSError: Name or service not known\\)"):
        hub.resolve_source(hub.SAM_VIT_B_URL, cache_dir=tmp_path, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_convert_from_hub_ids(tmp_path, monkeypatch):
    """`--sam facebook/sam-vit-base --clip openai/clip-vit-large-patch14` with the hub replaced by
    local snapshots of tiny models (config.json included, as a snapshot has it)."""
    hf_sam_model().save_pretrained(tmp_path / "facebook--sam-vit-base")
    hf_clip_vision_model().save_pretrained(tmp_path / "openai--clip-vit-large-patch14")
    asked = []

    def fake(repo_id, allow_patterns, cache_dir):
        asked.append(repo_id)
        return str(tmp_path / repo_id.replace("/", "--"))

    monkeypatch.setattr(hub, "_hf_snapshot_download", fake)
    out = tmp_path / "out.safetensors"
    result = convert("facebook/sam-vit-base", "openai/clip-vit-large-patch14", out, log=lambda s: None)
    assert asked == ["facebook/sam-vit-base", "openai/clip-vit-large-patch14"]
    assert out.is_file() and all(v.passed for v in result.verifications)
    assert result.sources["sam"].spec == "facebook/sam-vit-base"
    assert result.config.clip.heads == 2  # from the snapshot's config.json


def test_convert_from_sam_url(tmp_path, monkeypatch):
    from oracles import segment_anything_checkpoint, segment_anything_encoder

    buffer = io.BytesIO()
    torch.save(segment_anything_checkpoint(segment_anything_encoder()), buffer)
    monkeypatch.setattr(hub, "_open_url", lambda url: FakeResponse(buffer.getvalue()))
    hf_clip_vision_model().save_pretrained(tmp_path / "clip")
    out = tmp_path / "out.safetensors"
    convert(hub.SAM_VIT_B_URL, str(tmp_path / "clip"), out, cache_dir=tmp_path / "cache", verify=False, log=lambda s: None)
    assert out.is_file() and (tmp_path / "cache" / "sam_vit_b_01ec64.pth").is_file()


# -- whole-model directories (DeepSeekOCR.from_pretrained, dsocr generate/ocr/eval --model) ---------


def test_model_dir_downloads_config_weights_and_tokenizer(tmp_path, monkeypatch):
    calls = []

    def fake(repo_id, allow_patterns, cache_dir):
        calls.append((repo_id, tuple(allow_patterns), cache_dir))
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir(exist_ok=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model-00001-of-000001.safetensors").write_bytes(b"")
        return str(snapshot)

    monkeypatch.setattr(hub, "_hf_snapshot_download", fake)
    directory = hub.resolve_model_dir("deepseek-ai/DeepSeek-OCR", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert directory == tmp_path / "snapshot"
    (repo, patterns, cache), = calls
    assert repo == "deepseek-ai/DeepSeek-OCR" and cache == str(tmp_path / "cache")
    for needed in ("config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        assert needed in patterns


def test_model_dir_errors(tmp_path, monkeypatch):
    assert hub.resolve_model_dir(str(tmp_path)) == tmp_path  # a local directory as it is
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(DsocrError, match="a model is a directory"):
        hub.resolve_model_dir(str(tmp_path / "w.safetensors"))
    with pytest.raises(DsocrError, match="no such directory"):
        hub.resolve_model_dir(str(tmp_path / "missing" / "dir"))

    def offline(repo_id, allow_patterns, cache_dir):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(hub, "_hf_snapshot_download", offline)
    with pytest.raises(DsocrError, match=r"cannot download from the Hugging Face Hub \(ConnectionError: no network\)"):
        hub.resolve_model_dir("deepseek-ai/DeepSeek-OCR", log=lambda m: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(hub, "_hf_snapshot_download", lambda *a: str(empty))
    with pytest.raises(DsocrError, match="no config.json and safetensors"):
        hub.resolve_model_dir("someone/not-a-model", log=lambda m: None)
