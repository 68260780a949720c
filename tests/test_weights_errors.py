"""Bad inputs to `dsocr convert` / `dsocr inspect`: each is refused with one line saying what was
found and what was expected, exit status 1, and no output file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dsocr.cli import main

from oracles import (
    hf_clip_vision_model, hf_sam_model, openai_clip_archive, segment_anything_checkpoint,
    segment_anything_encoder,
)


class Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class CustomObject:
    def __init__(self):
        self.weight = torch.zeros(2)


def sam_state_of_width(width: int, depth: int = 2) -> dict:
    """segment-anything names and shapes of a SAM encoder `width` wide (zeros: only shapes matter)."""
    head_dim = 64 if width == 768 else 80
    state = {
        "image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16),
        "image_encoder.patch_embed.proj.bias": torch.zeros(width),
        "image_encoder.pos_embed": torch.zeros(1, 64, 64, width),
        "image_encoder.neck.0.weight": torch.zeros(256, width, 1, 1),
        "image_encoder.neck.1.weight": torch.zeros(256), "image_encoder.neck.1.bias": torch.zeros(256),
        "image_encoder.neck.2.weight": torch.zeros(256, 256, 3, 3),
        "image_encoder.neck.3.weight": torch.zeros(256), "image_encoder.neck.3.bias": torch.zeros(256),
    }
    for i in range(depth):
        p = f"image_encoder.blocks.{i}"
        rel = 127 if i == depth - 1 else 27
        state.update({
            f"{p}.norm1.weight": torch.zeros(width), f"{p}.norm1.bias": torch.zeros(width),
            f"{p}.attn.qkv.weight": torch.zeros(3 * width, width), f"{p}.attn.qkv.bias": torch.zeros(3 * width),
            f"{p}.attn.proj.weight": torch.zeros(width, width), f"{p}.attn.proj.bias": torch.zeros(width),
            f"{p}.attn.rel_pos_h": torch.zeros(rel, head_dim), f"{p}.attn.rel_pos_w": torch.zeros(rel, head_dim),
            f"{p}.norm2.weight": torch.zeros(width), f"{p}.norm2.bias": torch.zeros(width),
            f"{p}.mlp.lin1.weight": torch.zeros(4 * width, width), f"{p}.mlp.lin1.bias": torch.zeros(4 * width),
            f"{p}.mlp.lin2.weight": torch.zeros(width, 4 * width), f"{p}.mlp.lin2.bias": torch.zeros(width),
        })
    return state


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    torch.save(segment_anything_checkpoint(segment_anything_encoder()), root / "sam.pth")
    hf_sam_model().save_pretrained(root / "hf_sam")
    hf_clip_vision_model().save_pretrained(root / "clip")
    openai_clip_archive(root / "openai.pt")
    return SimpleNamespace(root=root, sam=str(root / "sam.pth"), clip=str(root / "clip"))


def convert_cli(capsys, tmp_path, sam, clip, *extra):
    out = tmp_path / "out" / "deepencoder.safetensors"
    capsys.readouterr()  # forget what building the sources printed
    rc = main(["convert", "--sam", str(sam), "--clip", str(clip), "-o", str(out), "--no-verify", *extra])
    err = capsys.readouterr().err.strip()
    return rc, err, out


def assert_refused(rc, err, out, *needles):
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dsocr convert: error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


# -- not a checkpoint at all --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, found",
    [
        ("notes.pth", b"These are my notes, not weights.\n", "found a text file"),
        ("random.bin", bytes([7, 200, 13, 99]) * 1000, "found unrecognised binary data"),
        ("empty.safetensors", b"", "found an empty file"),
    ],
)
@pytest.mark.parametrize("role", ["sam", "clip"])
def test_not_a_checkpoint(good, tmp_path, capsys, name, content, found, role):
    bad = tmp_path / name
    bad.write_bytes(content)
    sam, clip = (bad, good.clip) if role == "sam" else (good.sam, bad)
    assert_refused(*convert_cli(capsys, tmp_path, sam, clip), str(bad), found, "expected a checkpoint")


def test_truncated_pth(good, tmp_path, capsys):
    data = (good.root / "sam.pth").read_bytes()
    cut = tmp_path / "sam_cut.pth"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert_refused(*convert_cli(capsys, tmp_path, cut, good.clip), "found a truncated or corrupt zip archive")


def test_truncated_safetensors(good, tmp_path, capsys):
    data = (good.root / "clip" / "model.safetensors").read_bytes()
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    assert_refused(*convert_cli(capsys, tmp_path, good.sam, cut), "found a truncated safetensors file")


def test_missing_source(good, tmp_path, capsys):
    assert_refused(*convert_cli(capsys, tmp_path, tmp_path / "nowhere.pth", good.clip), "no such file or directory")


# -- pickles that would run code ----------------------------------------------------------------


def test_pickle_calling_os_system(good, tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": Marker(marker)}, evil)
    assert_refused(*convert_cli(capsys, tmp_path, evil, good.clip), "needs code execution", "system",
                   "expected a plain state dict of tensors")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_calling_os_system(good, tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps({"w": Marker(marker)}))
    assert_refused(*convert_cli(capsys, tmp_path, good.sam, evil), "needs code execution", "system")
    assert not marker.exists()


def test_pickle_of_custom_class(good, tmp_path, capsys):
    custom = tmp_path / "custom.pth"
    torch.save({"model": CustomObject()}, custom)
    assert_refused(*convert_cli(capsys, tmp_path, custom, good.clip), "needs code execution", "CustomObject")


# -- the wrong model ----------------------------------------------------------------------------


@pytest.mark.parametrize("width, variant", [(1280, "ViT-H"), (1024, "ViT-L")])
def test_sam_of_the_wrong_size(good, tmp_path, capsys, width, variant):
    path = tmp_path / f"sam_{variant}.pth"
    torch.save(sam_state_of_width(width), path)
    rc, err, out = convert_cli(capsys, tmp_path, path, good.clip)
    assert_refused(rc, err, out, f"found SAM (segment-anything) {variant} (width {width}", "expected SAM ViT-B (width 768")


def test_clip_vit_b_32(good, tmp_path, capsys):
    hf_clip_vision_model(clip=dict(width=768, depth=1, heads=12, mlp_dim=64), patch_size=32).save_pretrained(tmp_path / "b32")
    rc, err, out = convert_cli(capsys, tmp_path, good.sam, tmp_path / "b32")
    assert_refused(rc, err, out, "found CLIP (transformers) ViT-B/32 (224 px) (width 768, 1 layer)", "expected CLIP ViT-L/14")


def test_clip_given_as_sam(good, tmp_path, capsys):
    assert_refused(*convert_cli(capsys, tmp_path, good.clip, good.clip), "--sam", "found CLIP (transformers)",
                   "expected SAM ViT-B")


def test_openai_clip_given_as_sam(good, tmp_path, capsys):
    assert_refused(*convert_cli(capsys, tmp_path, good.root / "openai.pt", good.clip), "found CLIP (OpenAI)",
                   "expected SAM ViT-B")


@pytest.mark.parametrize("sam", ["sam.pth", "hf_sam"])
def test_sam_given_as_clip(good, tmp_path, capsys, sam):
    assert_refused(*convert_cli(capsys, tmp_path, good.sam, good.root / sam), "--clip", "found SAM", "expected CLIP ViT-L/14")


def test_unrecognised_tensors(good, tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, tmp_path / "other.pth")
    assert_refused(*convert_cli(capsys, tmp_path, tmp_path / "other.pth", good.clip),
                   "found an unrecognised checkpoint (2 tensors", "expected SAM ViT-B")


def test_sam_with_foreign_tensors(good, tmp_path, capsys):
    state = segment_anything_checkpoint(segment_anything_encoder())
    state["image_encoder.blocks.0.adapter.weight"] = torch.zeros(4)
    torch.save(state, tmp_path / "sam_plus.pth")
    assert_refused(*convert_cli(capsys, tmp_path, tmp_path / "sam_plus.pth", good.clip),
                   "with 1 tensor it should not have (image_encoder.blocks.0.adapter.weight)")


def test_sam_missing_a_tensor(good, tmp_path, capsys):
    state = segment_anything_checkpoint(segment_anything_encoder())
    del state["image_encoder.neck.2.weight"]
    torch.save(state, tmp_path / "sam_minus.pth")
    assert_refused(*convert_cli(capsys, tmp_path, tmp_path / "sam_minus.pth", good.clip), "without the tensor for sam_model.neck.2.weight")


def test_sam_too_incomplete_to_size(good, tmp_path, capsys):
    state = segment_anything_checkpoint(segment_anything_encoder())
    del state["image_encoder.neck.0.weight"]
    torch.save(state, tmp_path / "sam_minus.pth")
    assert_refused(*convert_cli(capsys, tmp_path, tmp_path / "sam_minus.pth", good.clip),
                   "found SAM (segment-anything) with incomplete weights", "sam_model.neck.0.weight")


# -- options ------------------------------------------------------------------------------------


def test_output_must_be_safetensors(good, tmp_path, capsys):
    rc = main(["convert", "--sam", good.sam, "--clip", good.clip, "-o", str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert rc == 1 and "must be a .safetensors file" in err and not (tmp_path / "out.pth").exists()


def test_report_extension(good, tmp_path, capsys):
    rc = main(["convert", "--sam", good.sam, "--clip", good.clip, "-o", str(tmp_path / "o.safetensors"),
               "--report", str(tmp_path / "r.txt")])
    assert rc == 1 and "must end in .md or .json" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_inspect_refuses_junk(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["inspect", str(tmp_path / "notes.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsocr inspect: error:") and "found a text file" in err and len(err.splitlines()) == 1


# -- the same through a fresh interpreter --------------------------------------------------------


@pytest.mark.parametrize("case", ["text", "os.system", "clip-as-sam"])
def test_python_m_dsocr_refuses(good, tmp_path, case):
    marker = tmp_path / "executed"
    if case == "text":
        sam = tmp_path / "sam.pth"
        sam.write_text("not weights")
        needle = "found a text file"
    elif case == "os.system":
        sam = tmp_path / "sam.pth"
        torch.save({"w": Marker(marker)}, sam)
        needle = "needs code execution"
    else:
        sam = good.clip
        needle = "found CLIP (transformers)"
    out = tmp_path / "out.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "dsocr", "convert", "--sam", str(sam), "--clip", good.clip, "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not marker.exists()
