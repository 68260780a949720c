"""Loading DeepEncoder weights from every layout the official checkpoint comes in, and refusing
everything else with one clear error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsocr import DsocrError
from dsocr.model import DeepEncoder
from oracles import unlimited_ocr_model

PATCH_EMBEDDING = "model.vision_model.embeddings.patch_embedding.weight"


@pytest.fixture(scope="module")
def official_state(tmp_path_factory):
    """A full official-layout state dict (vision + language model keys), tiny, random."""
    directory = tmp_path_factory.mktemp("official")
    unlimited_ocr_model(seed=2).save_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    width = state["model.vision_model.embeddings.class_embedding"].shape[0]
    state[PATCH_EMBEDDING] = torch.randn(width, 3, 14, 14)
    return state


def _vision(state):
    return {k: v for k, v in state.items() if k.startswith(("model.sam_model", "model.vision_model", "model.projector", "model.image_newline", "model.view_seperator"))}


def _same_weights(model: DeepEncoder, state):
    for name, tensor in model.official_state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_official_file_loads_and_ignores_language_model(tmp_path, official_state):
    assert any(k.startswith("model.layers.") for k in official_state) and "lm_head.weight" in official_state
    save_file(official_state, tmp_path / "model-00001-of-000001.safetensors")
    model = DeepEncoder.from_pretrained(tmp_path / "model-00001-of-000001.safetensors")
    assert len(model.state_dict()) == len(_vision(official_state))
    _same_weights(model, official_state)


def test_sharded_checkpoint_by_index_and_by_directory(tmp_path, official_state):
    names = sorted(official_state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: official_state[k] for k in keys}, tmp_path / file)
        weight_map.update({k: file for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for source in (tmp_path / "model.safetensors.index.json", tmp_path):
        _same_weights(DeepEncoder.from_pretrained(source), official_state)


def test_vision_only_file_and_vllm_names(tmp_path, official_state):
    vision = _vision(official_state)
    save_file(vision, tmp_path / "vision.safetensors")
    _same_weights(DeepEncoder.from_pretrained(tmp_path / "vision.safetensors"), official_state)
    # vLLM: vision keys without the leading `model.`, LM under `language_model.`
    vllm = {k[len("model."):]: v for k, v in vision.items()}
    vllm["language_model.model.norm.weight"] = official_state["model.norm.weight"]
    save_file(vllm, tmp_path / "vllm.safetensors")
    _same_weights(DeepEncoder.from_pretrained(tmp_path / "vllm.safetensors"), official_state)


def test_pickled_state_dict_loads(tmp_path, official_state):
    torch.save(_vision(official_state), tmp_path / "pytorch_model.bin")
    _same_weights(DeepEncoder.from_pretrained(tmp_path), official_state)


def test_save_pretrained_round_trip_uses_official_names(tmp_path, official_state):
    save_file(_vision(official_state), tmp_path / "in.safetensors")
    model = DeepEncoder.from_pretrained(tmp_path / "in.safetensors")
    model.save_pretrained(tmp_path / "out.safetensors")
    written = load_file(tmp_path / "out.safetensors")
    assert set(written) == set(_vision(official_state))
    _same_weights(DeepEncoder.from_pretrained(tmp_path / "out.safetensors"), official_state)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_bfloat16_load_runs_close_to_float32(tmp_path, official_state):
    save_file(_vision(official_state), tmp_path / "v.safetensors")
    fp32 = DeepEncoder.from_pretrained(tmp_path / "v.safetensors")
    bf16 = DeepEncoder.from_pretrained(tmp_path / "v.safetensors", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    pixels = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.inference_mode():
        a, b = fp32(pixels)[0], bf16(pixels)[0].float()
    assert ((a - b).norm() / a.norm()).item() < 0.05


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("model.sam_model.blocks.1.attn.qkv.weight"), "missing (sam_model.blocks.1.attn.qkv.weight)"),
        (lambda s: s.__setitem__("model.projector.layers.bias", torch.zeros(7)), "projector.layers.bias: (7,) != (96,)"),
        (lambda s: s.__setitem__("model.sam_model.blocks.1.attn.extra", torch.zeros(2)), "unexpected (sam_model.blocks.1.attn.extra)"),
    ],
)
def test_bad_vision_weights_are_refused_naming_the_keys(tmp_path, official_state, edit, message):
    state = dict(_vision(official_state))
    edit(state)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(DsocrError) as info:
        DeepEncoder.from_pretrained(tmp_path / "bad.safetensors")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_weights_without_vision_keys_are_refused(tmp_path, official_state):
    save_file({k: v for k, v in official_state.items() if k.startswith("model.layers.")}, tmp_path / "lm.safetensors")
    with pytest.raises(DsocrError, match="not DeepSeek-OCR vision weights"):
        DeepEncoder.from_pretrained(tmp_path / "lm.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 40])
def test_garbage_files_are_refused(tmp_path, content):
    for name in ("w.safetensors", "w.bin"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DsocrError) as info:
            DeepEncoder.from_pretrained(tmp_path / name)
        assert name in str(info.value)


def test_truncated_safetensors_is_refused(tmp_path, official_state):
    save_file(_vision(official_state), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DsocrError, match="cut.safetensors"):
        DeepEncoder.from_pretrained(tmp_path / "cut.safetensors")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(DsocrError, match="no such file"):
        DeepEncoder.from_pretrained(tmp_path / "nope")
