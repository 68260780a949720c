"""The explicit name maps, checked against the names the real libraries produce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsocr.errors import DsocrError
from dsocr.model import ClipConfig, ClipVisionTower, SamConfig, SamEncoder
from dsocr.weights import keymaps

from oracles import (
    OpenAICLIP, TINY_CLIP, TINY_SAM, hf_clip_model, hf_clip_vision_model, hf_sam_model, segment_anything_checkpoint,
    segment_anything_encoder,
)

TINY_SAM_CONFIG = SamConfig(
    width=TINY_SAM["width"], depth=TINY_SAM["depth"], heads=TINY_SAM["heads"], mlp_dim=TINY_SAM["mlp_dim"],
    global_attn_indexes=TINY_SAM["global_attn_indexes"], neck_channels=TINY_SAM["neck"],
    compressor_channels=TINY_SAM["compressor"],
)


def shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def sam_targets() -> set[str]:
    """DeepEncoder's SAM names, minus the compressor no SAM checkpoint has."""
    names = {f"sam_model.{k}" for k in SamEncoder(TINY_SAM_CONFIG).state_dict()}
    return names - {"sam_model.net_2.weight", "sam_model.net_3.weight"}


def clip_targets(width=TINY_CLIP["width"], mlp=TINY_CLIP["mlp_dim"]) -> dict[str, tuple]:
    config = ClipConfig(width=width, depth=TINY_CLIP["depth"], heads=TINY_CLIP["heads"], mlp_dim=mlp)
    return {f"vision_model.{k}": tuple(v.shape) for k, v in ClipVisionTower(config).state_dict().items()}


def test_segment_anything_names_are_deepencoder_names():
    state = segment_anything_checkpoint(segment_anything_encoder())
    plan = keymaps.plan_sam_segment_anything(shapes(state))
    assert {m.target for m in plan.mapped} == sam_targets()
    assert all(m.transform == keymaps.RENAME and m.sources == ("image_encoder." + m.target[10:],) for m in plan.mapped)
    assert sorted(plan.dropped) == sorted(k for k in state if not k.startswith("image_encoder."))
    assert plan.unexpected == []


def test_bare_segment_anything_encoder_state_dict():
    plan = keymaps.plan_sam_segment_anything(shapes(segment_anything_encoder().state_dict()))
    assert {m.target for m in plan.mapped} == sam_targets() and not plan.dropped and not plan.unexpected


def test_transformers_sam_names_map_back_to_segment_anything():
    state = hf_sam_model().state_dict()
    plan = keymaps.plan_sam_hf(shapes(state))
    assert {m.target for m in plan.mapped} == sam_targets()
    assert plan.unexpected == []
    assert {k.split(".")[0] for k in plan.dropped} == {"prompt_encoder", "mask_decoder", "shared_image_embedding"}
    by_source = {m.sources[0]: m.target for m in plan.mapped}
    # the rename table of spec §9, row by row
    assert by_source["vision_encoder.patch_embed.projection.weight"] == "sam_model.patch_embed.proj.weight"
    assert by_source["vision_encoder.layers.3.layer_norm2.bias"] == "sam_model.blocks.3.norm2.bias"
    assert by_source["vision_encoder.layers.1.attn.rel_pos_h"] == "sam_model.blocks.1.attn.rel_pos_h"
    assert by_source["vision_encoder.neck.conv1.weight"] == "sam_model.neck.0.weight"
    assert by_source["vision_encoder.neck.layer_norm1.weight"] == "sam_model.neck.1.weight"
    assert by_source["vision_encoder.neck.conv2.weight"] == "sam_model.neck.2.weight"
    assert by_source["vision_encoder.neck.layer_norm2.bias"] == "sam_model.neck.3.bias"


@pytest.mark.parametrize("layout", ["CLIPVisionModel", "CLIPModel", "CLIPModel+position_ids"])
def test_transformers_clip_names(layout):
    model = hf_clip_vision_model() if layout == "CLIPVisionModel" else hf_clip_model()
    state = model.state_dict()
    if layout.endswith("position_ids"):  # older hub .bin files carried this buffer
        state["vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    plan = keymaps.plan_clip_hf(shapes(state))
    assert plan.target_shapes() == clip_targets()
    assert plan.unexpected == []
    qkv = next(m for m in plan.mapped if m.target == "vision_model.transformer.layers.1.self_attn.qkv_proj.weight")
    assert qkv.transform == keymaps.CONCAT_QKV
    assert [s.rsplit(".", 2)[-2] for s in qkv.sources] == ["q_proj", "k_proj", "v_proj"]
    dropped = set(plan.dropped)
    prefix = "vision_model." if layout != "CLIPVisionModel" else ""
    assert f"{prefix}post_layernorm.weight" in dropped
    if layout != "CLIPVisionModel":
        assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= dropped
        assert any(k.startswith("text_model.") for k in dropped)
    if layout.endswith("position_ids"):
        assert "vision_model.embeddings.position_ids" in dropped


def test_qkv_rows_are_q_then_k_then_v():
    state = hf_clip_vision_model().state_dict()
    plan = keymaps.plan_clip_hf(shapes(state))
    qkv = next(m for m in plan.mapped if m.target.endswith("layers.0.self_attn.qkv_proj.bias"))
    merged = keymaps.materialize(qkv, state.__getitem__)
    width = TINY_CLIP["width"]
    for i, which in enumerate("qkv"):
        assert torch.equal(merged[i * width : (i + 1) * width], state[f"encoder.layers.0.self_attn.{which}_proj.bias"])


def test_openai_clip_names():
    state = OpenAICLIP(width=TINY_CLIP["width"], layers=TINY_CLIP["depth"], heads=TINY_CLIP["heads"]).state_dict()
    plan = keymaps.plan_clip_openai(shapes(state))
    assert plan.target_shapes() == clip_targets(mlp=4 * TINY_CLIP["width"])
    assert plan.unexpected == []
    assert {"visual.ln_post.weight", "visual.proj", "logit_scale", "input_resolution", "token_embedding.weight"} <= set(plan.dropped)
    in_proj = next(m for m in plan.mapped if m.sources == ("visual.transformer.resblocks.0.attn.in_proj_weight",))
    assert in_proj.target == "vision_model.transformer.layers.0.self_attn.qkv_proj.weight"
    assert in_proj.transform == keymaps.RENAME  # already q,k,v stacked


def test_336_position_table_is_resampled_to_16x16():
    state = hf_clip_vision_model(image_size=336).state_dict()
    plan = keymaps.plan_clip_hf(shapes(state))
    position = next(m for m in plan.mapped if m.target.endswith("position_embedding.weight"))
    assert position.transform == keymaps.RESAMPLE_POSITIONS and position.shape == (257, TINY_CLIP["width"])
    table = state["embeddings.position_embedding.weight"]
    resampled = keymaps.materialize(position, state.__getitem__)
    # independent: the 24x24 grid through F.interpolate, the class row untouched
    grid = table[1:].reshape(1, 24, 24, -1).permute(0, 3, 1, 2).float()
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([table[:1], expected.permute(0, 2, 3, 1).reshape(256, -1)])
    assert torch.equal(resampled, expected)


def test_missing_projection_is_an_error():
    state = shapes(hf_clip_vision_model().state_dict())
    del state["encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(DsocrError, match="layer 1 lacks its k_proj.weight"):
        keymaps.plan_clip_hf(state)


def test_unknown_names_are_reported_not_dropped():
    state = shapes(segment_anything_encoder().state_dict())
    state["blocks.0.attn.extra"] = (3,)
    state["something_else"] = (1,)
    plan = keymaps.plan_sam_segment_anything(state)
    assert sorted(plan.unexpected) == ["blocks.0.attn.extra", "something_else"]


def test_rename_tables_are_explicit_and_total():
    """Every table row is used by the real libraries' names (no dead or overlapping rows)."""
    names = list(hf_sam_model().state_dict())
    table = keymaps.compile_table(keymaps.HF_SAM)
    for pattern, _ in table:
        assert sum(bool(pattern.fullmatch(n)) for n in names) > 0, pattern.pattern
    for name in names:
        assert sum(bool(p.fullmatch(name)) for p, _ in table) <= 1, name
