"""Reading weight files without trusting them: format sniffing, TorchScript archives, refused
pickles, and the streaming safetensors writer."""

from __future__ import annotations

import gc
import json
import os
import pickle
import warnings
import weakref
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsocr.errors import DsocrError
from dsocr.weights.checkpoint import Checkpoint
from dsocr.weights.formats import (
    TensorSpec, is_torchscript_archive, open_checkpoint, pickle_globals, read_torchscript, sniff, write_safetensors,
)

from oracles import openai_clip_archive


class Marker:
    """A pickle payload that would create a file if it were ever executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def jit_state_dict(path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path)).state_dict()


class CustomObject:
    def __init__(self):
        self.weight = torch.zeros(2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_file(tensors, str(root / "x.safetensors"))
    torch.save(tensors, root / "x.pth")
    torch.save(tensors, root / "legacy.pth", _use_new_zipfile_serialization=False)
    (root / "x.index.json").write_text(json.dumps({"weight_map": {"a": "x.safetensors", "b": "x.safetensors"}}))
    openai_clip_archive(root / "openai.pt")
    return root


def test_sniff_names_each_format(files):
    assert sniff(files / "x.safetensors").kind == "safetensors"
    assert sniff(files / "x.pth").kind == "pytorch-zip"
    assert sniff(files / "legacy.pth").kind == "pytorch-legacy"
    assert sniff(files / "openai.pt").kind == "torchscript"
    assert sniff(files / "x.index.json").kind == "index"
    assert sniff(files).kind == "directory"
    assert is_torchscript_archive(files / "openai.pt") and not is_torchscript_archive(files / "x.pth")


@pytest.mark.parametrize(
    "content, found",
    [
        (b"", "found an empty file"),
        (b"hello, this is not a checkpoint\n", "found a text file"),
        (bytes(range(7, 200)) * 3, "found unrecognised binary data"),
        (b"PK\x03\x04" + b"\x00" * 100, "truncated or corrupt zip archive"),
    ],
)
def test_sniff_refuses_what_is_no_checkpoint(tmp_path, content, found):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(DsocrError, match=found) as info:
        open_checkpoint(path)
    assert "expected a checkpoint" in str(info.value) and "\n" not in str(info.value)


def test_truncated_files_are_refused(files, tmp_path):
    data = (files / "x.safetensors").read_bytes()
    (tmp_path / "cut_data.safetensors").write_bytes(data[:-10])
    (tmp_path / "cut_header.safetensors").write_bytes(data[:20])
    pth = (files / "x.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(pth[: len(pth) // 2])
    with pytest.raises(DsocrError, match="truncated safetensors"):
        open_checkpoint(tmp_path / "cut_data.safetensors")
    with pytest.raises(DsocrError, match="truncated safetensors"):
        open_checkpoint(tmp_path / "cut_header.safetensors")
    with pytest.raises(DsocrError, match="truncated or corrupt zip"):
        open_checkpoint(tmp_path / "cut.pth")


def test_index_without_weight_map_is_refused(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(DsocrError, match="without a weight_map"):
        open_checkpoint(tmp_path / "model.safetensors.index.json")


def test_torchscript_tensors_equal_jit_load(files):
    expected = jit_state_dict(files / "openai.pt")  # the test made this file: trusted
    tensors = read_torchscript(files / "openai.pt")
    assert list(tensors) == list(expected)
    for name, tensor in expected.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    assert tensors["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (384, 128)
    assert tensors["visual.positional_embedding"].shape == (257, 128)


def test_torchscript_half_precision_through_checkpoint(tmp_path):
    openai_clip_archive(tmp_path / "half.pt", dtype=torch.float16)
    checkpoint = Checkpoint(tmp_path / "half.pt")
    expected = jit_state_dict(tmp_path / "half.pt")
    assert set(checkpoint) == set(expected)
    assert checkpoint.dtype("visual.conv1.weight") == torch.float16
    assert torch.equal(checkpoint["visual.proj"], expected["visual.proj"])


def _fake_torchscript(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
        archive.writestr("evil/code/__torch__.py", "def forward(self):\n  pass\n")
        archive.writestr("evil/version", "3\n")


def test_torchscript_reader_executes_nothing(tmp_path):
    marker = tmp_path / "executed"
    _fake_torchscript(tmp_path / "evil.pt", pickle.dumps({"w": Marker(marker)}, protocol=2))
    with pytest.raises(DsocrError, match=r"posix\.system|os\.system"):
        read_torchscript(tmp_path / "evil.pt")
    with pytest.raises(DsocrError, match=r"posix\.system|os\.system"):
        Checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("layout", ["zip", "legacy", "plain-pickle"])
def test_pickles_needing_code_are_refused(tmp_path, layout):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    payload = {"w": Marker(marker)}
    if layout == "plain-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=layout == "zip")
    with pytest.raises(DsocrError, match=r"needs code execution \((posix|os)\.system\)") as info:
        open_checkpoint(path)
    assert "expected a plain state dict of tensors" in str(info.value)
    assert not marker.exists()


def test_custom_class_pickle_is_refused(tmp_path):
    torch.save({"model": CustomObject()}, tmp_path / "custom.pth")
    with pytest.raises(DsocrError, match=r"needs code execution \(.*CustomObject\)"):
        open_checkpoint(tmp_path / "custom.pth")


def test_pickle_globals_parses_without_executing(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(Marker(marker), protocol=4))
    assert pickle_globals(tmp_path / "p.pkl") in (["posix.system"], ["os.system"], ["nt.system"])
    assert not marker.exists()


def test_write_safetensors_round_trip(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5), "bf16": torch.randn(4, 2).bfloat16(), "f16": torch.randn(7).half(),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "i64": torch.arange(6).view(2, 3),
        "odd": torch.randn(3).bfloat16(),  # 6 bytes: the next tensor starts unaligned, as safetensors allows
        "last": torch.randn(2, 2),
    }
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    write_safetensors(tmp_path / "out.safetensors", specs, lambda s: tensors[s.name], {"key": "value"})
    loaded = load_file(str(tmp_path / "out.safetensors"))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert Checkpoint(tmp_path / "out.safetensors").metadata == {"key": "value"}


def test_write_safetensors_holds_one_tensor_at_a_time(tmp_path):
    made: list[weakref.ref] = []

    def produce(spec):
        gc.collect()
        assert all(ref() is None for ref in made), "an earlier tensor is still alive"
        tensor = torch.full(spec.shape, float(len(made)))
        made.append(weakref.ref(tensor))
        return tensor

    specs = [TensorSpec(f"t{i}", (256, 256), torch.float32) for i in range(5)]
    write_safetensors(tmp_path / "out.safetensors", specs, produce)
    assert load_file(str(tmp_path / "out.safetensors"))["t4"][0, 0] == 4


def test_write_safetensors_checks_what_it_is_given(tmp_path):
    specs = [TensorSpec("a", (2, 2), torch.float32)]
    with pytest.raises(DsocrError, match="expected"):
        write_safetensors(tmp_path / "out.safetensors", specs, lambda s: torch.zeros(3))


def test_checkpoint_unwraps_and_reads_lazily(files, tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "wrapped.pth")
    assert torch.equal(open_checkpoint(tmp_path / "wrapped.pth")["w"], torch.ones(2))
    checkpoint = open_checkpoint(files)  # a directory: safetensors preferred
    assert checkpoint.files[0].suffix == ".safetensors" and checkpoint.shape("a") == (3, 4)
