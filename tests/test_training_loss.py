"""Training inputs and losses: answer-only labels, padding, the cross-entropy and the MoE balance
loss checked against independent computations; config parsing; the lr schedules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dsocr.errors import DsocrError
from dsocr.processing.prompts import build_prompt_ids
from dsocr.processing.tokenizer import load_tokenizer
from dsocr.training import load_config
from dsocr.training.batching import (
    IGNORE, DataPosition, GlobalBatchSampler, TrainDataset, collate, encode_sample, epoch_order, resolve_mode,
)
from dsocr.training.config import OptimConfig
from dsocr.training.trainer import TrainingModule, build_model, lr_factor, moe_balance_loss
from test_training_support import TINY_DECODER, TINY_MODE, TINY_VISION, stage1_values, write_images



@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model():
    config = load_config(values={"model": {"stage": "stage1", "vision": TINY_VISION, "decoder": TINY_DECODER},
                                 "data": {"manifests": ["unused.jsonl"]}})
    return build_model(config.model, seed=0)


def samples(tmp_path, targets, prompts=None):
    images = write_images(tmp_path, len(targets))
    prompts = prompts or ["<image>\nFree OCR."] * len(targets)
    return [SimpleNamespace(images=[p], prompt=q, target=t, id=f"s{i}")
            for i, (p, q, t) in enumerate(zip(images, prompts, targets))]


def test_answer_only_labels(tmp_path, tokenizer):
    mode = resolve_mode(TINY_MODE)
    sample = samples(tmp_path, ["Hello world."])[0]
    example = encode_sample(sample, tokenizer, mode, max_length=100)
    prompt = build_prompt_ids(tokenizer, sample.prompt, [7])
    answer = tokenizer.encode("Hello world.") + [tokenizer.eos_id]
    assert example.input_ids == prompt + answer
    assert example.input_ids[0] == tokenizer.bos_id and example.input_ids.count(tokenizer.image_id) == 7
    assert example.labels == [IGNORE] * len(prompt) + answer
    # too long: the answer is cut, the prompt never
    cut = encode_sample(sample, tokenizer, mode, max_length=len(prompt) + 2)
    assert cut.input_ids == (prompt + answer)[: len(prompt) + 2] and cut.labels[-2:] == answer[:2]
    with pytest.raises(DsocrError, match="max_length"):
        encode_sample(sample, tokenizer, mode, max_length=len(prompt))


def test_collate_pads_and_positions(tmp_path, tokenizer):
    mode = resolve_mode(TINY_MODE)
    a, b = (encode_sample(s, tokenizer, mode, 100) for s in samples(tmp_path, ["x", "a much longer answer here"]))
    for side in ("right", "left"):
        batch = collate([a, b], tokenizer.pad_id, side)
        n = len(a.input_ids)
        length = batch.input_ids.shape[1]
        real = slice(0, n) if side == "right" else slice(length - n, length)
        assert batch.input_ids[0, real].tolist() == a.input_ids
        assert batch.labels[0, real].tolist() == a.labels
        assert batch.padding[0].sum() == n and batch.padding[0, real].all()
        assert batch.positions[0, real].tolist() == list(range(n))  # every sequence starts at position 0
        assert (batch.labels[0][batch.padding[0] == 0] == IGNORE).all()
        assert batch.global_views.shape == (2, 3, 128, 128) and batch.images_per_sample == [1, 1]
        assert batch.num_answer_tokens == sum(x != IGNORE for x in a.labels + b.labels)


def reference_balance_loss(scores, experts, mask, n_experts, k):
    """DeepSeek-V2 MoEGate (seq_aux=True), one sequence at a time over its real tokens only."""
    losses = []
    for b in range(scores.shape[0]):
        real = mask[b].bool()
        s, idx = scores[b][real][None], experts[b][real].reshape(1, -1)  # [1, T, E], [1, T*k]
        t = s.shape[1]
        ce = torch.zeros(1, n_experts, dtype=torch.float64)
        ce.scatter_add_(1, idx, torch.ones(1, t * k, dtype=torch.float64)).div_(t * k / n_experts)
        losses.append((ce * s.double().mean(dim=1)).sum(dim=1).mean())
    return torch.stack(losses)


def test_balance_loss_matches_deepseek_v2():
    gen = torch.Generator().manual_seed(0)
    b, t, e, k = 3, 9, 6, 2
    scores = torch.randn(b, t, e, generator=gen).softmax(-1)
    experts = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(b * t)]).view(b, t, k)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    ours = moe_balance_loss(scores, experts, mask)
    torch.testing.assert_close(ours.double(), reference_balance_loss(scores, experts, mask, e, k), rtol=1e-6, atol=0)
    # padding is excluded: a padded sequence scores as its real tokens alone
    alone = moe_balance_loss(scores[1:2, :6], experts[1:2, :6], mask[1:2, :6])
    torch.testing.assert_close(ours[1:2], alone, rtol=1e-6, atol=0)
    # perfectly balanced routing with uniform scores gives exactly 1 per sequence
    uniform = torch.full((1, 4, 4), 0.25)
    balanced = torch.tensor([[[0, 1], [2, 3], [0, 1], [2, 3]]])
    assert moe_balance_loss(uniform, balanced, torch.ones(1, 4)).item() == pytest.approx(1.0)


def test_training_loss_against_full_logits(tmp_path, tokenizer, model):
    """lm_sum / aux_sum from TrainingModule equal a plain recomputation from the model's full logits."""
    mode = resolve_mode(TINY_MODE)
    data = TrainDataset(samples(tmp_path, ["Hello world.", "a b", "Total: 3.50"]), tokenizer, mode, 100)
    batch = collate([data[i] for i in range(3)], tokenizer.pad_id, "right")
    module = TrainingModule(model)
    loss, lm_sum, aux_sum = module(batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views,
                                   batch.tiles, batch.grids, batch.images_per_sample, token_scale=0.25, seq_scale=0.5)

    # independent: the model's own forward (all logits), then CE at the answer positions by hand
    with torch.no_grad():
        image_tokens = model.model(batch.global_views, batch.tiles, batch.grids)
        logits = model(batch.input_ids, image_tokens, positions=batch.positions, padding=batch.padding)
    logp = logits.double().log_softmax(-1)
    expected = 0.0
    for row in range(3):
        for t in range(batch.input_ids.shape[1] - 1):
            label = int(batch.labels[row, t + 1])
            if label != IGNORE:
                expected -= logp[row, t, label].item()
    assert lm_sum.item() == pytest.approx(expected, rel=1e-5)

    # the balance loss from the routing of the same forward (the MoE layer records it in training mode)
    moe = module.moes[0]
    recorded = {}
    hook = moe.gate.register_forward_hook(lambda m, i, o: recorded.update(scores=o[2], experts=o[1]))
    module(batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views,
           batch.tiles, batch.grids, batch.images_per_sample)
    hook.remove()
    b, t = batch.input_ids.shape
    reference = reference_balance_loss(recorded["scores"].view(b, t, -1).detach(), recorded["experts"].view(b, t, -1),
                                       batch.padding, 4, 2).sum() * model.config.language.aux_loss_alpha
    assert aux_sum.item() == pytest.approx(reference.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.25 * lm_sum.item() + 0.5 * aux_sum.item(), rel=1e-5)


def test_activation_checkpointing_same_gradients(tmp_path, tokenizer, model):
    mode = resolve_mode(TINY_MODE)
    data = TrainDataset(samples(tmp_path, ["Hello world.", "a b"]), tokenizer, mode, 100)
    batch = collate([data[0], data[1]], tokenizer.pad_id)
    module = TrainingModule(model)
    grads = []
    for checkpointing in (False, True):
        model.model.gradient_checkpointing = checkpointing
        model.zero_grad()
        loss, _, _ = module(batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views,
                            batch.tiles, batch.grids, batch.images_per_sample)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.model.gradient_checkpointing = False
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_vocabulary_too_small_is_an_explicit_error(tmp_path, tokenizer):
    data = TrainDataset(samples(tmp_path, ["Hello world."]), tokenizer, resolve_mode(TINY_MODE), 100, vocab_size=1000)
    with pytest.raises(DsocrError, match="vocabulary of 1000"):
        data[0]


def test_global_batches_split_across_processes():
    one = iter(GlobalBatchSampler(10, 4, seed=3))
    two = [iter(GlobalBatchSampler(10, 4, seed=3, rank=r, world=2)) for r in range(2)]
    for _ in range(7):  # crosses epochs (2 full batches per epoch, the remainder dropped)
        assert next(one) == next(two[0]) + next(two[1])
    order = epoch_order(10, 3, 1)
    assert sorted(order) == list(range(10)) and order != epoch_order(10, 3, 0)
    # resuming at a position gives the rest of the same stream
    full = iter(GlobalBatchSampler(10, 4, seed=3))
    batches = [next(full) for _ in range(5)]
    position = DataPosition()
    for _ in range(3):
        position.advance(4, 10)
    resumed = iter(GlobalBatchSampler(10, 4, seed=3, start=position))
    assert [next(resumed), next(resumed)] == batches[3:]
    with pytest.raises(DsocrError, match="multiple"):
        GlobalBatchSampler(10, 3, seed=0, world=2)


def test_lr_schedules():
    cosine = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert [lr_factor(s, cosine, 12) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, cosine, 12) == pytest.approx(1.0)
    assert lr_factor(7, cosine, 12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(12, cosine, 12) == pytest.approx(0.1)
    step = OptimConfig(schedule="step", milestones=[3, 5], gamma=0.5)
    assert [lr_factor(s, step, 10) for s in range(7)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor(5, OptimConfig(schedule="constant"), 10) == 1.0


def test_config_parsing(tmp_path):
    from test_training_support import write_toml

    path = write_toml(tmp_path / "c.toml", stage1_values(tmp_path))
    config = load_config(path, ["optim.lr=0.5", "data.batch_size=4", "model.lora.rank=2", 'out_dir="elsewhere"'])
    assert config.optim.lr == 0.5 and config.data.batch_size == 4 and config.model.lora.rank == 2
    assert config.out_dir == "elsewhere" and config.data.mode == TINY_MODE
    with pytest.raises(DsocrError, match="unknown key"):
        load_config(path, ["optim.learning_rate=1"])
    with pytest.raises(DsocrError, match="model.stage"):
        load_config(path, ['model.stage="stage3"'])
    with pytest.raises(DsocrError, match="model.path"):
        load_config(path, ['model.stage="stage2"'])
    (tmp_path / "bad.toml").write_text("[optim\n")
    with pytest.raises(DsocrError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_tiled_and_text_only_samples(tmp_path, tokenizer, model):
    """Gundam-style tiles go through the same encoder path as DeepEncoder.forward; a text-only batch
    still gives every trainable vision weight a (zero) gradient."""
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.new("RGB", (700, 300), (200, 30, 30)).save(wide)
    mode = resolve_mode({"base_size": 128, "image_size": 64, "crop": True})  # 64-px tiles above 640 px
    items = [SimpleNamespace(images=[wide], prompt="<image>\nFree OCR.", target="wide", id="w"),
             samples(tmp_path, ["small"])[0]]
    data = TrainDataset(items, tokenizer, mode, 200)
    batch = collate([data[0], data[1]], tokenizer.pad_id)
    assert batch.grids[0] is not None and batch.tiles[0].shape[1:] == (3, 64, 64) and batch.tiles[1] is None
    module = TrainingModule(model)
    module(batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views, batch.tiles,
           batch.grids, batch.images_per_sample)[0].backward()

    text = [SimpleNamespace(images=[], prompt="Say hi.", target="hi", id="t")]
    batch = collate([TrainDataset(text, tokenizer, mode, 50)[0]], tokenizer.pad_id)
    assert batch.global_views is None
    model.zero_grad(set_to_none=True)
    module(batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views, batch.tiles,
           batch.grids, batch.images_per_sample)[0].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            if name.startswith("model.sam_model."):
                assert not p.grad.any(), name


def test_example_configs_parse():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.model.stage in ("stage1", "stage2", "finetune"), path


def test_chunked_answer_loss():
    from dsocr.training import trainer

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(11, 16, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    whole = trainer.answer_loss(head, hidden, targets)
    (g_whole,) = torch.autograd.grad(whole, hidden)
    chunked = trainer.answer_loss(head, hidden, targets, chunk=4)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunked, g_whole)
    torch.testing.assert_close(whole, F.cross_entropy(head(hidden), targets, reduction="sum"))


def test_samples_from_manifests_and_shards(tmp_path, tokenizer):
    from dsocr.data.manifest import read_manifest, write_shards
    from dsocr.training.batching import load_samples
    from test_training_support import write_manifest

    manifest = write_manifest(tmp_path / "m", 3)
    write_shards(read_manifest(manifest), tmp_path / "shards", samples_per_shard=2)
    samples = load_samples([str(manifest)], [str(tmp_path / "shards")])
    assert len(samples) == 6 and isinstance(samples[3].images[0], bytes)  # shard images stay encoded
    data = TrainDataset(samples, tokenizer, resolve_mode(TINY_MODE), 100)
    a, b = data[0], data[3]
    assert a.input_ids == b.input_ids and torch.equal(a.images[0].global_view, b.images[0].global_view)
