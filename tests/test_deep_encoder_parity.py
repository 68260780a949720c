"""DeepEncoder against independent code on identical random weights (float32, rel. error <= 1e-5).

Oracles: transformers' `unlimited_ocr` (a DeepSeek-OCR v1 derivative that writes the official key
names) for the whole encoder and the token layout, segment-anything's `ImageEncoderViT` for the
SAM trunk and neck.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsocr.model import DeepEncoder, SamConfig, SamEncoder
from oracles import TINY_SAM, relative_error, segment_anything_encoder, unlimited_ocr_model

TOL = 1e-5
PATCH_EMBEDDING = "model.vision_model.embeddings.patch_embedding.weight"


@pytest.fixture(scope="module")
def oracle_and_weights(tmp_path_factory):
    """The oracle and the same weights as an official-layout checkpoint directory."""
    oracle = unlimited_ocr_model(seed=1)
    directory = tmp_path_factory.mktemp("official")
    oracle.save_pretrained(directory)
    # unlimited_ocr drops CLIP's unused patch embedding; the official checkpoint carries it.
    state = load_file(directory / "model.safetensors")
    assert "model.sam_model.pos_embed" in state and PATCH_EMBEDDING not in state
    width = state["model.vision_model.embeddings.class_embedding"].shape[0]
    state[PATCH_EMBEDDING] = torch.randn(width, 3, 14, 14)
    save_file(state, directory / "model.safetensors")
    return oracle, directory


@pytest.fixture(scope="module")
def encoder(oracle_and_weights):
    return DeepEncoder.from_pretrained(oracle_and_weights[1])


def _pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("size", [512, 640, 1024, 1280])
def test_global_view_matches_unlimited_ocr(oracle_and_weights, encoder, size):
    oracle = oracle_and_weights[0]
    pixels = _pixels(2, size, seed=size)
    with torch.inference_mode():
        expected = oracle.model.get_image_features(pixels).pooler_output
        actual = encoder(pixels)
    g = size // 64
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == (g * (g + 1) + 1, encoder.config.output_dim)
        assert relative_error(a, e) <= TOL


@pytest.mark.parametrize("grid", [(3, 2), (2, 3), (1, 2), (3, 1)])
def test_tiled_layout_matches_unlimited_ocr(oracle_and_weights, encoder, grid):
    """Gundam: 640 tiles in a (wt, ht) grid, stitched as a mosaic, then the 1024 global view."""
    oracle = oracle_and_weights[0]
    wt, ht = grid
    global_view, tiles = _pixels(1, 1024, seed=7), _pixels(wt * ht, 640, seed=8)
    with torch.inference_mode():
        expected = oracle.model.get_image_features(
            global_view, pixel_values_local=tiles, num_local_patches=[wt * ht], patches_grid=[[wt, ht]]
        ).pooler_output[0]
        actual = encoder(global_view, [tiles], [grid])[0]
    assert actual.shape[0] == 273 + 10 * ht * (10 * wt + 1)
    assert relative_error(actual, expected) <= TOL


def test_batch_of_images_with_and_without_tiles(oracle_and_weights, encoder):
    """One forward for a batch: image 0 tiled 2x1, image 1 untiled; each as the oracle gives it alone."""
    oracle = oracle_and_weights[0]
    global_views, tiles = _pixels(2, 1024, seed=11), _pixels(2, 640, seed=12)
    with torch.inference_mode():
        actual = encoder(global_views, [tiles, None], [(2, 1), None])
        first = oracle.model.get_image_features(
            global_views[:1], pixel_values_local=tiles, num_local_patches=[2], patches_grid=[[2, 1]]
        ).pooler_output[0]
        second = oracle.model.get_image_features(global_views[1:]).pooler_output[0]
    assert relative_error(actual[0], first) <= TOL
    assert relative_error(actual[1], second) <= TOL


def _sam_pair(seed: int):
    reference = segment_anything_encoder(seed=seed)
    config = SamConfig(
        width=TINY_SAM["width"], depth=TINY_SAM["depth"], heads=TINY_SAM["heads"], mlp_dim=TINY_SAM["mlp_dim"],
        global_attn_indexes=TINY_SAM["global_attn_indexes"], neck_channels=TINY_SAM["neck"],
        compressor_channels=TINY_SAM["compressor"],
    )
    ours = SamEncoder(config).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=False)
    assert sorted(missing) == ["net_2.weight", "net_3.weight"] and not unexpected  # same names as SAM
    return reference, ours


def test_sam_trunk_matches_segment_anything():
    reference, ours = _sam_pair(seed=3)
    pixels = _pixels(1, 1024, seed=5)
    with torch.inference_mode():
        assert relative_error(ours.image_features(pixels), reference(pixels)) <= TOL


@pytest.mark.parametrize("size", [512, 1280])
def test_sam_trunk_at_other_sizes_matches_segment_anything_with_resampled_positions(size):
    """segment-anything only runs at 1024 (it adds the 64x64 table as is); resampling the table and
    the global relative-position tables to the new grid the official way makes it an oracle at
    512/1280 for everything else (windows, padding, rel-pos indexing, neck)."""
    import torch.nn.functional as F

    reference, ours = _sam_pair(seed=4)
    grid = size // 16
    with torch.no_grad():
        pos = reference.pos_embed.permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
        reference.pos_embed = torch.nn.Parameter(pos.permute(0, 2, 3, 1))
    pixels = _pixels(1, size, seed=6)
    with torch.inference_mode():
        assert relative_error(ours.image_features(pixels), reference(pixels)) <= TOL


def test_gradients_flow_through_every_part(encoder):
    """Training needs a differentiable forward (window and global attention, chunked bias, layout)."""
    import copy

    model = copy.deepcopy(encoder).train()
    pixels = _pixels(1, 512, seed=13)
    model(pixels, None, None)[0].square().mean().backward()
    for name, p in model.named_parameters():
        if "patch_embedding" in name:  # CLIP's own patch embedding is unused by DeepEncoder
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
