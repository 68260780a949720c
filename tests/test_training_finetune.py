"""Stage 2 and LoRA fine-tuning of a tiny model in the official layout: frozen weights stay
bitwise unchanged, LoRA merges into base + (alpha/r) B A, and checkpoints hold official names only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dsocr.training import LoRALinear, load_config, read_metrics, train
from dsocr.training.checkpoint import checkpoint_dirs
from oracles import official_model_dir, unlimited_ocr_model
from test_training_support import TINY_MODE, write_manifest



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return official_model_dir(unlimited_ocr_model(0), tmp_path_factory.mktemp("official") / "model")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("data"), 4)


def run_values(model_dir, manifest, out, **model):
    return {
        "seed": 1, "max_steps": 2, "out_dir": str(out),
        "model": {"path": str(model_dir), **model},
        "data": {"manifests": [str(manifest)], "mode": TINY_MODE, "batch_size": 2, "max_length": 64},
        "optim": {"lr": 1e-2, "schedule": "constant"},
        "logging": {"progress": False, "tensorboard": "off"},
    }


def test_stage2_freezes_sam_and_trains_the_rest(tmp_path, model_dir, manifest):
    config = load_config(values=run_values(model_dir, manifest, tmp_path / "run", stage="stage2"))
    train(config)
    before = load_file(model_dir / "model.safetensors")
    after = load_file(checkpoint_dirs(config.out_dir)[-1] / "model" / "model.safetensors")
    assert after.keys() == before.keys()
    sam = [k for k in before if k.startswith("model.sam_model.")]
    assert any(".net_2." in k for k in sam) and any(".net_3." in k for k in sam)
    for name in sam:  # SAM and the compressor: frozen, bitwise
        assert torch.equal(after[name], before[name]), name
    for name in ("model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight", "model.projector.layers.weight",
                 "model.layers.1.self_attn.q_proj.weight", "lm_head.weight", "model.image_newline"):
        assert not torch.equal(after[name], before[name]), name  # CLIP, projector, LM: trained
    assert len(read_metrics(config.out_dir)) == 2


def test_lora_linear_merge():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    weight = base.weight.detach().clone()
    lora = LoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 8)
    expected = x @ (weight + 2.0 * lora.lora_B @ lora.lora_A).T + base.bias
    torch.testing.assert_close(lora(x), expected)
    assert not lora.weight.requires_grad and lora.lora_A.requires_grad and lora.lora_B.requires_grad
    lora.merge()
    torch.testing.assert_close(lora.weight, weight + 2.0 * lora.lora_B @ lora.lora_A)
    torch.testing.assert_close(lora(x), expected)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, weight)


def test_lora_finetune_saves_merged_official_weights(tmp_path, model_dir, manifest):
    lora = {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj", "qkv_proj"], "components": ["decoder", "clip"]}
    config = load_config(values=run_values(model_dir, manifest, tmp_path / "run", stage="finetune", lora=lora))
    train(config)
    checkpoint = checkpoint_dirs(config.out_dir)[-1]
    before = load_file(model_dir / "model.safetensors")
    after = load_file(checkpoint / "model" / "model.safetensors")
    adapters = load_file(checkpoint / "trainable.safetensors")
    assert after.keys() == before.keys()  # official names only
    wrapped = sorted({k.rsplit(".", 1)[0] for k in adapters})
    assert wrapped and all(k.endswith((".lora_A", ".lora_B")) for k in adapters)
    assert any("vision_model" in k and k.endswith("qkv_proj") for k in wrapped)
    assert any(k.startswith("model.layers.") and k.endswith("v_proj") for k in wrapped)
    for name in wrapped:
        a, b = adapters[f"{name}.lora_A"], adapters[f"{name}.lora_B"]
        assert b.abs().max() > 0  # trained
        expected = before[f"{name}.weight"] + 2.0 * b @ a
        torch.testing.assert_close(after[f"{name}.weight"], expected, rtol=1e-6, atol=1e-7)
    merged = {f"{name}.weight" for name in wrapped}
    for key in before.keys() - merged:  # everything else is the base model, bitwise
        assert torch.equal(after[key], before[key]), key

    # resuming a LoRA run: the base comes from model.path, the adapters from the checkpoint
    config = load_config(values={**run_values(model_dir, manifest, tmp_path / "run", stage="finetune", lora=lora),
                                 "max_steps": 3})
    train(config, resume="latest")
    assert [r["step"] for r in read_metrics(config.out_dir)] == [1, 2, 3]
