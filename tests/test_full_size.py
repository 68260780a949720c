"""Full-size DeepEncoder (SAM ViT-B 768x12, CLIP ViT-L 1024x24, projector to 1280) against the
oracles on random weights: the real shapes, the real position tables, the real window padding."""

from __future__ import annotations

import pytest
import torch

from dsocr.model import DeepEncoder, SamEncoder
from oracles import randomize_, relative_error, segment_anything_encoder, unlimited_ocr_model

pytestmark = pytest.mark.slow
TOL = 1e-5
FULL_SAM = dict(width=768, depth=12, heads=12, mlp_dim=3072, global_attn_indexes=(2, 5, 8, 11), neck=256, compressor=(512, 1024))
FULL_CLIP = dict(width=1024, depth=24, heads=16, mlp_dim=4096)


@pytest.fixture(scope="module")
def full_pair(tmp_path_factory):
    oracle = unlimited_ocr_model(seed=5, sam=FULL_SAM, clip=FULL_CLIP, lm_width=1280)
    directory = tmp_path_factory.mktemp("full")
    oracle.save_pretrained(directory)
    from safetensors.torch import load_file, save_file

    state = load_file(directory / "model.safetensors")
    state["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(1024, 3, 14, 14) * 0.02
    save_file(state, directory / "model.safetensors")
    del state
    encoder = DeepEncoder.from_pretrained(directory)
    return oracle, encoder


def test_full_size_config_and_parameter_count(full_pair):
    encoder = full_pair[1]
    assert encoder.config.sam.global_attn_indexes == (2, 5, 8, 11)
    assert encoder.config.sam.heads == 12 and encoder.config.clip.heads == 16
    # spec §0: SAM 89,670,912 + compressor 5,898,240 + CLIP 303,177,728 + projector/tags 2,625,280
    assert sum(p.numel() for p in encoder.parameters()) == 401_372_160
    assert len(encoder.state_dict()) == 476


@pytest.mark.parametrize("size", [512, 1024])
def test_full_size_matches_unlimited_ocr(full_pair, size):
    oracle, encoder = full_pair
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    with torch.inference_mode():
        expected = oracle.model.get_image_features(pixels).pooler_output[0]
        actual = encoder(pixels)[0]
    g = size // 64
    assert actual.shape == (g * (g + 1) + 1, 1280)
    assert relative_error(actual, expected) <= TOL


def test_full_size_sam_matches_segment_anything():
    reference = segment_anything_encoder(seed=6, sam=FULL_SAM)
    ours = SamEncoder().eval()
    randomize_(ours, seed=7)  # net_2 / net_3 are not part of SAM
    ours.load_state_dict(reference.state_dict(), strict=False)
    pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.inference_mode():
        assert relative_error(ours.image_features(pixels), reference(pixels)) <= TOL
