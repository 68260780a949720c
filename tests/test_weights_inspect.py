"""`dsocr inspect`: identification of every kind and public size, the DeepEncoder compatibility
table, and the comparison of two checkpoints."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsocr.cli import main
from dsocr.model import DeepEncoder, DeepEncoderConfig
from dsocr.weights.convert import convert
from dsocr.weights.inspect import (
    CLIP_HF, CLIP_OPENAI, DEEPSEEK_OCR, DSOCR_DEEPENCODER, SAM_HF, SAM_SEGMENT_ANYTHING, UNKNOWN, compatibility,
    identify,
)

from oracles import (
    OpenAICLIP, hf_clip_vision_model, hf_sam_model, install_torchvision_stub, segment_anything_checkpoint,
    segment_anything_encoder,
)

TINY_CONFIG = DeepEncoderConfig(
    sam=dict(width=128, depth=2, heads=2, mlp_dim=256, global_attn_indexes=(1,), neck_channels=32,
             compressor_channels=(64, 128)),
    clip=dict(width=128, depth=1, heads=2, mlp_dim=256),
    output_dim=96,
)

# segment-anything's build_sam_vit_{b,l,h} settings
SAM_SIZES = {
    "ViT-B": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "ViT-L": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "ViT-H": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def shapes(module_or_state, prefix: str = "") -> dict:
    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    return {prefix + k: tuple(v.shape) for k, v in state.items()}


def segment_anything_shapes(variant: str) -> dict:
    install_torchvision_stub()
    from segment_anything.modeling import ImageEncoderViT

    with torch.device("meta"):
        encoder = ImageEncoderViT(
            img_size=1024, patch_size=16, mlp_ratio=4, out_chans=256, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14, **SAM_SIZES[variant],
        )
    state = shapes(encoder, "image_encoder.")
    state.update({"mask_decoder.iou_token.weight": (1, 256), "pixel_mean": (3, 1, 1), "pixel_std": (3, 1, 1)})
    return state


def hf_clip_shapes(width, layers, heads, patch, image, prefix="vision_model.") -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
            patch_size=patch, image_size=image,
        ))
    return {prefix + k.removeprefix("vision_model."): s for k, s in shapes(model).items()}


@pytest.mark.parametrize("variant", ["ViT-B", "ViT-L", "ViT-H"])
def test_segment_anything_sizes(variant):
    identity = identify(segment_anything_shapes(variant))
    assert identity.kind == SAM_SEGMENT_ANYTHING and identity.variant == variant and identity.standard
    assert identity.details["depth"] == SAM_SIZES[variant]["depth"]
    assert tuple(identity.details["global_attn_indexes"]) == SAM_SIZES[variant]["global_attn_indexes"]
    assert identity.details["heads"] == SAM_SIZES[variant]["num_heads"]


@pytest.mark.parametrize(
    "args, variant",
    [
        ((1024, 24, 16, 14, 224), "ViT-L/14 (224 px)"),
        ((1024, 24, 16, 14, 336), "ViT-L/14 (336 px)"),
        ((768, 12, 12, 32, 224), "ViT-B/32 (224 px)"),
        ((768, 12, 12, 16, 224), "ViT-B/16 (224 px)"),
    ],
)
@pytest.mark.parametrize("prefix", ["vision_model.", ""])
def test_transformers_clip_sizes(args, variant, prefix):
    identity = identify(hf_clip_shapes(*args, prefix=prefix))
    assert identity.kind == CLIP_HF and identity.variant == variant and identity.standard


def test_openai_clip_l_336():
    with torch.device("meta"):
        model = OpenAICLIP(width=1024, layers=24, heads=16, image_size=336, patch_size=14)
    identity = identify(shapes(model))
    assert identity.kind == CLIP_OPENAI and identity.variant == "ViT-L/14 (336 px)" and identity.details["text_tower"]
    table = compatibility(identity)
    assert table["shape_mismatches"] == [] and table["missing"] == [] and table["unexpected"] == []
    position = next(r for r in table["mapped"] if r["target"].endswith("position_embedding.weight"))
    assert position["transform"] == "resample positions" and position["shape"] == [257, 1024]


def test_transformers_sam_and_resnet_and_unknown():
    assert identify(shapes(hf_sam_model())).kind == SAM_HF
    assert identify({"visual.layer1.0.conv1.weight": (64, 64, 1, 1)}).variant == "ResNet"
    assert identify({"encoder.weight": (3, 3)}).kind == UNKNOWN


def official_shapes(with_lm: bool) -> dict:
    with torch.device("meta"):
        state = shapes(DeepEncoder(DeepEncoderConfig()), "model.")
    if with_lm:
        state.update({"model.embed_tokens.weight": (129280, 1280), "model.layers.0.self_attn.q_proj.weight": (1280, 1280),
                      "lm_head.weight": (129280, 1280)})
    return state


def test_official_deepseek_ocr_and_dsocr_files():
    official = identify(official_shapes(with_lm=True))
    assert official.kind == DEEPSEEK_OCR and official.standard
    assert official.variant == "SAM ViT-B + CLIP ViT-L/14 (224 px) -> 1280 + language model (3 tensors)"
    table = compatibility(official)
    assert len(table["mapped"]) == 476 and not table["missing"] and not table["shape_mismatches"]
    assert sorted(table["dropped"]) == ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    vision_only = {k: v for k, v in official_shapes(False).items()}
    assert identify(vision_only, {"dsocr.deepencoder.config": "{}"}).kind == DSOCR_DEEPENCODER
    assert identify({k[len("model."):]: v for k, v in vision_only.items()}).kind == DSOCR_DEEPENCODER


def test_compatibility_of_sam_b():
    table = compatibility(identify(segment_anything_shapes("ViT-B")))
    assert table["part"] == "sam_model"
    assert len(table["mapped"]) == 177 and table["shape_mismatches"] == [] and table["unexpected"] == []
    assert table["missing"] == [
        {"target": "sam_model.net_2.weight", "initialised_by_convert": True},
        {"target": "sam_model.net_3.weight", "initialised_by_convert": True},
    ]
    assert set(table["dropped"]) == {"mask_decoder.iou_token.weight", "pixel_mean", "pixel_std"}


def test_compatibility_of_sam_h_lists_mismatches():
    table = compatibility(identify(segment_anything_shapes("ViT-H")))
    assert {"target": "sam_model.pos_embed", "sources": ["image_encoder.pos_embed"], "transform": "rename",
            "shape": [1, 64, 64, 1280], "expected": [1, 64, 64, 768]} in table["shape_mismatches"]
    assert "sam_model.blocks.31.attn.qkv.weight" in table["not_in_deepencoder"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    torch.save(segment_anything_checkpoint(segment_anything_encoder()), root / "sam.pth")
    hf_clip_vision_model().save_pretrained(root / "clip")
    convert(str(root / "sam.pth"), str(root / "clip"), root / "out.safetensors", verify=False, log=lambda s: None)
    return root


def test_inspect_text(files, capsys):
    capsys.readouterr()
    assert main(["inspect", str(files / "sam.pth")]) == 0
    text = capsys.readouterr().out
    assert "PyTorch pickle (zip)" in text and "SAM (segment-anything) non-standard ViT" in text
    assert "DeepEncoder compatibility (sam_model, official sizes)" in text
    assert "initialised by dsocr convert: sam_model.net_2.weight, sam_model.net_3.weight" in text
    assert main(["inspect", str(files / "clip"), "--against", "none"]) == 0
    text = capsys.readouterr().out
    assert "CLIP (transformers)" in text and "compatibility" not in text


def test_inspect_json_of_converted_file(files, capsys):
    capsys.readouterr()
    assert main(["inspect", str(files / "out.safetensors"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "safetensors" and summary["model"]["kind"] == DSOCR_DEEPENCODER
    tensors = load_file(str(files / "out.safetensors"))
    assert summary["tensors"] == len(tensors)
    assert summary["parameters"] == sum(t.numel() for t in tensors.values())
    assert summary["dtypes"] == {"float32": len(tensors)}
    assert json.loads(summary["model"]["config"])["clip"]["width"] == 128
    assert summary["compatibility"]["part"].startswith("sam_model + vision_model")


def test_compare_same_and_changed(files, tmp_path, capsys):
    tensors = load_file(str(files / "out.safetensors"))
    tensors["model.image_newline"] = tensors["model.image_newline"] + 0.25
    del tensors["model.view_seperator"]
    save_file(tensors, str(tmp_path / "changed.safetensors"))
    capsys.readouterr()
    assert main(["inspect", str(files / "out.safetensors"), str(tmp_path / "changed.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["names"] == "raw" and result["only_in_a"] == ["model.view_seperator"] and result["only_in_b"] == []
    diffs = {r["name"]: r["max_abs_diff"] for r in result["tensors"]}
    assert diffs["model.image_newline"] == pytest.approx(0.25)
    assert max(v for k, v in diffs.items() if k != "model.image_newline") == 0
    assert main(["inspect", str(files / "out.safetensors"), str(tmp_path / "changed.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "max abs difference  2.500e-01" in text and "model.image_newline" in text


def test_compare_source_with_converted_under_deepencoder_names(files, capsys):
    capsys.readouterr()
    assert main(["inspect", str(files / "clip"), str(files / "out.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["names"] == "deepencoder" and result["common"] == 29 and result["max_abs_diff"] == 0


def test_inspect_takes_at_most_two_paths(files, capsys):
    assert main(["inspect", str(files / "sam.pth")] * 3) == 1
    assert "one or two paths" in capsys.readouterr().err


def test_sharded_official_checkpoint(tmp_path, capsys):
    """A DeepSeek-OCR-like repo: vision + language-model tensors over two shards and an index."""
    vision = {f"model.{k}": v for k, v in DeepEncoder(TINY_CONFIG).state_dict().items()}
    lm = {"model.embed_tokens.weight": torch.randn(50, 96), "model.layers.0.mlp.gate.weight": torch.randn(4, 96),
          "lm_head.weight": torch.randn(50, 96)}
    save_file(vision, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(lm, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in vision}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in lm})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    capsys.readouterr()
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "sharded safetensors (2 shards)" and summary["tensors"] == len(vision) + 3
    assert summary["model"]["kind"] == DEEPSEEK_OCR and "+ language model (3 tensors)" in summary["model"]["variant"]
    assert sorted(summary["compatibility"]["dropped"]) == sorted(lm)
    assert DeepEncoder.from_pretrained(tmp_path).config == TINY_CONFIG
