"""`dsocr convert` on tiny checkpoints in every public format, checked numerically against the
libraries the weights come from (segment-anything, transformers, an OpenAI-style TorchScript CLIP)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dsocr.cli import main
from dsocr.model import DeepEncoder, DeepEncoderConfig
from dsocr.weights import keymaps
from dsocr.weights.convert import convert

from oracles import (
    TINY_CLIP, hf_clip_model, hf_clip_vision_model, hf_sam_model, openai_clip_archive, relative_error,
    segment_anything_checkpoint, segment_anything_encoder,
)

TOLERANCE = 1e-5
WIDTH = TINY_CLIP["width"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Tiny random checkpoints, each in the layout its library writes."""
    root = tmp_path_factory.mktemp("sources")
    sa = segment_anything_encoder(seed=0)
    torch.save(segment_anything_checkpoint(sa), root / "sam_vit_b.pth")
    hf_sam = hf_sam_model(seed=1)
    hf_sam.save_pretrained(root / "hf_sam")
    torch.save(hf_sam.state_dict(), root / "hf_sam.bin")
    clip = hf_clip_vision_model(seed=2)
    clip.save_pretrained(root / "clip")
    clip.save_pretrained(root / "clip_sharded", max_shard_size="200KB")
    clip_full = hf_clip_model(seed=3)
    state = clip_full.state_dict()
    state["vision_model.embeddings.position_ids"] = torch.arange(257)[None]  # as older hub .bin files
    torch.save(state, root / "clip_full.bin")
    clip336 = hf_clip_vision_model(seed=4, image_size=336)
    clip336.save_pretrained(root / "clip336")
    openai = openai_clip_archive(root / "ViT-L-14.pt", seed=5, width=WIDTH, layers=2, heads=2)
    return SimpleNamespace(root=root, sa=sa, hf_sam=hf_sam, clip=clip, clip_full=clip_full, clip336=clip336, openai=openai)


def pixels(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def run_convert(src, out: Path, sam="sam_vit_b.pth", clip="clip", **options):
    """`convert` on two of the fixture's sources (quietly)."""
    return convert(str(src.root / sam), str(src.root / clip), out, log=lambda line: None, **options)


@torch.inference_mode()
def sam_error(out: Path, oracle) -> float:
    """Our SAM trunk + neck from the converted file vs the oracle on the same probe."""
    probe = pixels(1024)
    model = DeepEncoder.from_pretrained(out)  # strict: every key, every shape
    expected = oracle(probe)
    expected = getattr(expected, "last_hidden_state", expected)
    return relative_error(model.sam_model.image_features(probe), expected)


@torch.inference_mode()
def clip_error(out: Path, oracle, size: int = 224) -> float:
    probe = pixels(size, seed=2)
    model = DeepEncoder.from_pretrained(out)
    return relative_error(model.vision_model.forward_pixels(probe), oracle(probe))


def hf_tokens(vision_model):
    return lambda x: vision_model(pixel_values=x).last_hidden_state


def test_segment_anything_and_transformers_clip(src, tmp_path):
    out = tmp_path / "deepencoder.safetensors"
    result = run_convert(src, out)
    assert out.is_file() and not list(tmp_path.glob("*.partial"))
    assert [v.part for v in result.verifications] == ["SAM", "CLIP"]
    assert all(v.max_relative_error <= TOLERANCE for v in result.verifications)
    assert result.verifications[0].oracle == "segment-anything ImageEncoderViT"
    assert sam_error(out, src.sa) <= TOLERANCE
    assert clip_error(out, hf_tokens(src.clip)) <= TOLERANCE

    model = DeepEncoder.from_pretrained(out)
    assert model.config == result.config
    assert model.config.sam.compressor_channels == (WIDTH // 2, WIDTH)
    with safe_open(str(out), framework="pt") as f:
        assert DeepEncoderConfig(**json.loads(f.metadata()["dsocr.deepencoder.config"])) == result.config
        assert all(k.startswith("model.") for k in f.keys())
    with torch.inference_mode():
        tokens = model.encode_views(pixels(1024))
    assert tokens.shape == (1, 256, 1280) and torch.isfinite(tokens).all()


@pytest.mark.parametrize("sam", ["hf_sam", "hf_sam.bin"])
def test_transformers_sam(src, tmp_path, sam):
    from transformers import SamVisionModel

    oracle = SamVisionModel(src.hf_sam.config.vision_config).eval()
    oracle.load_state_dict({k: v for k, v in src.hf_sam.state_dict().items() if k.startswith("vision_encoder.")})
    out = tmp_path / "out.safetensors"
    result = run_convert(src, out, sam)
    assert result.verifications[0].oracle == "transformers SamVisionModel"
    assert sam_error(out, oracle) <= TOLERANCE  # HF SAM's last_hidden_state is the neck output


def test_segment_anything_source_checked_by_transformers_without_segment_anything(src, tmp_path, monkeypatch):
    """Where segment-anything cannot be imported (it needs torchvision), SAM weights from its .pth
    are checked against transformers' SamVisionModel instead."""
    import dsocr.weights.convert as convert_module

    monkeypatch.setattr(convert_module, "_segment_anything_encoder_class", lambda: None)
    result = run_convert(src, tmp_path / "out.safetensors", clip="ViT-L-14.pt")
    check = result.verifications[0]
    assert check.oracle == "transformers SamVisionModel" and check.max_relative_error <= TOLERANCE


def test_transformers_sam_from_segment_anything_names_agree(src, tmp_path):
    """segment-anything and transformers weights of the same network convert to the same file."""
    out_hf = tmp_path / "hf.safetensors"
    run_convert(src, out_hf, "hf_sam", verify=False)
    sa_state = {}
    for key, value in src.hf_sam.state_dict().items():
        target = keymaps.sam_target_from_hf(key)
        if target:
            sa_state["image_encoder." + target[len("sam_model."):]] = value
    torch.save(sa_state, tmp_path / "sa.pth")
    out_sa = tmp_path / "sa.safetensors"
    convert(str(tmp_path / "sa.pth"), str(src.root / "clip"), out_sa, verify=False, log=lambda s: None)
    a, b = tensors(out_hf), tensors(out_sa)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("clip", ["clip_full.bin", "clip_sharded"])
def test_transformers_clip_bin_and_sharded(src, tmp_path, clip):
    oracle = src.clip_full.vision_model if clip == "clip_full.bin" else src.clip
    out = tmp_path / "out.safetensors"
    result = run_convert(src, out, "sam_vit_b.pth", clip)
    assert result.verifications[1].max_relative_error <= TOLERANCE
    assert clip_error(out, hf_tokens(oracle)) <= TOLERANCE


def test_clip_336_positions_resampled_other_weights_exact(src, tmp_path):
    out = tmp_path / "out.safetensors"
    result = run_convert(src, out, "sam_vit_b.pth", "clip336", report=tmp_path / "r.json")
    assert result.config.clip.image_size == 224
    got = tensors(out)
    source = src.clip336.state_dict()
    table = source["embeddings.position_embedding.weight"]
    assert table.shape == (577, WIDTH)
    grid = table[1:].reshape(1, 24, 24, WIDTH).permute(0, 3, 1, 2)
    resampled = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([table[:1], resampled.permute(0, 2, 3, 1).reshape(256, WIDTH)])
    assert torch.allclose(got["model.vision_model.embeddings.position_embedding.weight"], expected, rtol=0, atol=1e-6)
    assert torch.equal(got["model.vision_model.embeddings.position_embedding.weight"][0], table[0])
    for i in range(TINY_CLIP["depth"]):
        layer = f"encoder.layers.{i}.self_attn"
        qkv = torch.cat([source[f"{layer}.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(got[f"model.vision_model.transformer.layers.{i}.self_attn.qkv_proj.weight"], qkv)
        assert torch.equal(got[f"model.vision_model.transformer.layers.{i}.mlp.fc2.bias"], source[f"encoder.layers.{i}.mlp.fc2.bias"])
    assert torch.equal(got["model.vision_model.pre_layrnorm.weight"], source["pre_layrnorm.weight"])
    # verified at 336 px with the source table and every other converted weight
    check = result.verifications[1]
    assert check.probe == (1, 3, 336, 336) and check.max_relative_error <= TOLERANCE and "resampled" in check.note
    report = json.loads((tmp_path / "r.json").read_text())
    row = next(t for t in report["tensors"] if t["name"].endswith("position_embedding.weight"))
    assert row["transform"].startswith("resample positions 24x24->16x16")
    DeepEncoder.from_pretrained(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_openai_torchscript_clip(src, tmp_path, dtype):
    archive = src.root / "ViT-L-14.pt"
    module = src.openai
    if dtype == torch.float16:  # OpenAI ships ViT-L-14.pt in half precision
        archive = tmp_path / "ViT-L-14-half.pt"
        module = openai_clip_archive(archive, seed=6, width=WIDTH, layers=2, heads=2, dtype=torch.float16).float()
    out = tmp_path / "out.safetensors"
    result = run_convert(src, out, "sam_vit_b.pth", str(archive))
    check = result.verifications[1]
    assert check.oracle == "transformers CLIPVisionModel" and check.max_relative_error <= TOLERANCE
    with torch.inference_mode():
        assert clip_error(out, module.image_tokens) <= TOLERANCE  # the OpenAI forward itself


def test_seed_initialises_tensors_without_a_source(src, tmp_path):
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    run_convert(src, a, seed=7, verify=False)
    run_convert(src, b, seed=7, verify=False)
    run_convert(src, c, seed=8, verify=False)
    ta, tb, tc = tensors(a), tensors(b), tensors(c)
    initialised = ["model.sam_model.net_2.weight", "model.sam_model.net_3.weight", "model.projector.layers.weight",
                   "model.projector.layers.bias", "model.image_newline", "model.view_seperator"]
    for name in ta:
        assert torch.equal(ta[name], tb[name])
        assert torch.equal(ta[name], tc[name]) == (name not in initialised), name
    # independent: torch's default inits drawn from one generator in the documented order
    gen = torch.Generator().manual_seed(7)
    expected = {}
    for name in initialised[:3]:
        w = torch.empty(ta[name].shape)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
        expected[name] = w
    fan_in = ta["model.projector.layers.weight"].shape[1]
    expected[initialised[3]] = torch.empty(1280).uniform_(-(fan_in**-0.5), fan_in**-0.5, generator=gen)
    expected[initialised[4]] = torch.randn(1280, generator=gen) / math.sqrt(1280)
    expected[initialised[5]] = torch.randn(1280, generator=gen) / math.sqrt(1280)
    for name, value in expected.items():
        assert torch.equal(ta[name], value), name


def test_bfloat16_output(src, tmp_path):
    out = tmp_path / "out.safetensors"
    result = run_convert(src, out, dtype="bfloat16")
    assert all(v.max_relative_error <= TOLERANCE for v in result.verifications)
    got = tensors(out)
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    source = src.sa.state_dict()
    assert torch.equal(got["model.sam_model.blocks.1.attn.rel_pos_h"], source["blocks.1.attn.rel_pos_h"].bfloat16())
    assert DeepEncoder.from_pretrained(out).dtype == torch.bfloat16


def test_output_dim_and_compressor_follow_the_sources(src, tmp_path):
    out = tmp_path / "out.safetensors"
    assert main(["convert", "--sam", str(src.root / "sam_vit_b.pth"), "--clip", str(src.root / "clip"),
                 "-o", str(out), "--output-dim", "96", "--no-verify"]) == 0
    got = tensors(out)
    neck = src.sa.state_dict()["neck.0.weight"].shape[0]
    assert got["model.sam_model.net_2.weight"].shape == (WIDTH // 2, neck, 3, 3)
    assert got["model.sam_model.net_3.weight"].shape == (WIDTH, WIDTH // 2, 3, 3)
    assert got["model.projector.layers.weight"].shape == (96, 2 * WIDTH)
    assert got["model.image_newline"].shape == got["model.view_seperator"].shape == (96,)


def test_reports(src, tmp_path):
    out = tmp_path / "out.safetensors"
    run_convert(src, out, "sam_vit_b.pth", "ViT-L-14.pt", report=tmp_path / "r.md", seed=3)
    run_convert(src, out, "sam_vit_b.pth", "clip", report=tmp_path / "r.json", seed=3, verify=False)
    data = json.loads((tmp_path / "r.json").read_text())
    names = set(tensors(out))
    assert {t["name"] for t in data["tensors"]} == names
    rows = {t["name"]: t for t in data["tensors"]}
    assert rows["model.sam_model.pos_embed"] == {**rows["model.sam_model.pos_embed"], "sources": ["image_encoder.pos_embed"], "transform": "rename"}
    qkv = rows["model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight"]
    assert qkv["transform"] == "concat q,k,v" and [s.split(".")[-2] for s in qkv["sources"]] == ["q_proj", "k_proj", "v_proj"]
    assert rows["model.sam_model.net_3.weight"]["transform"] == "initialised (seed 3)"
    assert data["seed"] == 3 and data["verification"] == [] and data["verification_skipped"] == ["--no-verify"] * 2
    assert "mask_decoder.iou_token.weight" in data["sources"]["sam"]["dropped"]
    markdown = (tmp_path / "r.md").read_text()
    assert "| `model.vision_model.transformer.layers.1.self_attn.qkv_proj.weight` |" in markdown
    assert "`visual.transformer.resblocks.1.attn.in_proj_weight`" in markdown
    assert "initialised (seed 3)" in markdown and "verification SAM" in markdown
    assert markdown.count("\n| `model.") == len(names)


def test_verification_failure_writes_nothing(src, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    report = tmp_path / "r.md"
    rc = main(["convert", "--sam", str(src.root / "sam_vit_b.pth"), "--clip", str(src.root / "clip"),
               "-o", str(out), "--report", str(report), "--tolerance", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "verification failed: SAM differs from segment-anything ImageEncoderViT" in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_segment_anything_checkpoint(src, tmp_path, wrapper):
    torch.save({wrapper: segment_anything_checkpoint(src.sa), "epoch": 1}, tmp_path / "wrapped.pth")
    out = tmp_path / "out.safetensors"
    convert(str(tmp_path / "wrapped.pth"), str(src.root / "clip"), out, verify=False, log=lambda s: None)
    reference = tmp_path / "ref.safetensors"
    run_convert(src, reference, verify=False)
    a, b = tensors(out), tensors(reference)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_python_m_dsocr_subprocess(src, tmp_path):
    """The installed entry point, in a fresh interpreter (segment-anything cannot be imported there
    without torchvision, so SAM is checked against transformers' SamVisionModel)."""
    out = tmp_path / "out.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "dsocr", "convert", "--sam", str(src.root / "sam_vit_b.pth"),
         "--clip", str(src.root / "ViT-L-14.pt"), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "verify SAM: max relative error" in done.stdout and "verify CLIP" in done.stdout
    assert out.is_file()
    shown = subprocess.run([sys.executable, "-m", "dsocr", "inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "dsocr DeepEncoder" in shown.stdout
