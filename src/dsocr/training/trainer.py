"""The training loop (nanoGPT style): build the model for a stage, wrap it for DDP / FSDP2, run
AdamW with gradient accumulation, log metrics, write checkpoints, resume exactly.

Loss per optimizer step, over every process and micro-batch of the step:

    loss = sum(token cross-entropy on answer tokens) / (answer tokens)
         + sum(per-sequence MoE balance loss) / (sequences)

Each process back-propagates its share scaled by world/total, so the gradient averaging of DDP /
FSDP2 (a mean over processes) yields the gradient of exactly this loss, whatever the process count.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..errors import DsocrError
from . import checkpoint as ckpt
from . import distributed as D
from .batching import IGNORE, Batch, DataPosition, GlobalBatchSampler, TrainDataset, collate, load_samples, resolve_mode
from .config import ModelConfig, OptimConfig, TrainConfig
from .lora import adapter_state_dict, apply_lora, merged_state_dict

# Parameter-name prefixes of the model's parts (names as in DeepSeekOCRForCausalLM.state_dict()).
COMPONENTS = {
    "sam": ["model.sam_model."],  # SAM + its neck + the 16x compressor (net_2, net_3)
    "clip": ["model.vision_model."],
    "projector": ["model.projector.", "model.image_newline", "model.view_seperator"],
    "embed": ["model.embed_tokens."],
    "decoder": ["model.layers.", "model.norm."],
    "lm_head": ["lm_head."],
}
COMPONENTS["vision"] = COMPONENTS["sam"] + COMPONENTS["clip"] + COMPONENTS["projector"]
COMPONENTS["language"] = COMPONENTS["embed"] + COMPONENTS["decoder"] + COMPONENTS["lm_head"]

DEFAULT_FREEZE = {"stage1": [], "stage2": ["sam"], "finetune": []}

# Stage 1's compact language model unless [model.decoder] says otherwise: a small dense decoder
# (the paper used OPT-IML) with the real vocabulary, so the real tokenizer works.
COMPACT_DECODER = dict(
    hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=1024, n_routed_experts=0, first_k_dense_replace=0,
)


def prefixes(names: list[str]) -> list[str]:
    """Component names (see COMPONENTS) and raw parameter-name prefixes -> prefixes."""
    out = []
    for name in names:
        if name in COMPONENTS:
            out += COMPONENTS[name]
        elif "." in name:
            out.append(name)
        else:
            raise DsocrError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)} (or a parameter-name prefix)")
    return out


# -- the model --------------------------------------------------------------------------------


def init_language_model_(model: nn.Module, std: float = 0.02) -> None:
    """DeepseekV2's `_init_weights` for the language model: N(0, std) linears / embeddings / gates."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.startswith(p_) for p_ in COMPONENTS["language"]):
                if p.ndim == 2:
                    p.normal_(0.0, std)
                elif "norm" in name:
                    p.fill_(1.0)


def build_model(config: ModelConfig, seed: int = 0):
    """The DeepSeekOCRForCausalLM of a stage, its parameters frozen or LoRA-wrapped as configured."""
    from ..model.config import DecoderConfig, DeepEncoderConfig
    from ..model.deep_encoder import DeepEncoder
    from ..model.deepseek_ocr import DeepSeekOCRConfig, DeepSeekOCRForCausalLM

    torch.manual_seed(seed)
    if config.stage == "stage1":
        try:
            language = DecoderConfig(**{**COMPACT_DECODER, **config.decoder})
        except (TypeError, ValueError) as exc:
            raise DsocrError(f"[model.decoder]: {exc}") from None
        encoder = DeepEncoder.from_pretrained(config.encoder, dtype=torch.float32) if config.encoder else None
        vision = encoder.config if encoder else DeepEncoderConfig(**config.vision)
        model = DeepSeekOCRForCausalLM(DeepSeekOCRConfig(vision=replace(vision, output_dim=language.hidden_size), language=language))
        init_language_model_(model)
        if encoder is not None:
            state = encoder.state_dict()
            if encoder.config.output_dim != language.hidden_size:  # a new projector for the new width
                state = {k: v for k, v in state.items() if not k.startswith(("projector.", "image_newline", "view_seperator"))}
            missing, unexpected = model.model.load_state_dict(state, strict=False)
            lost = [k for k in missing if k.startswith(("sam_model.", "vision_model."))] + unexpected
            if lost:
                raise DsocrError(f"{config.encoder}: encoder weights do not fit ({lost[:3]})")
    else:
        from ..weights.hub import resolve_model_dir

        model = DeepSeekOCRForCausalLM.from_pretrained(resolve_model_dir(config.path), dtype=torch.float32)
        torch.manual_seed(seed)  # LoRA initialisation below

    if config.lora.rank:
        model.requires_grad_(False)
        apply_lora(model, config.lora.rank, config.lora.alpha, config.lora.targets, prefixes(config.lora.components))
    else:
        frozen = prefixes(DEFAULT_FREEZE[config.stage] if config.freeze is None else config.freeze)
        for name, p in model.named_parameters():
            p.requires_grad_(not any(name.startswith(f) for f in frozen))
    # CLIP's own patch embedding is never used (SAM supplies CLIP's patch tokens): it gets no gradient.
    model.model.vision_model.embeddings.patch_embedding.weight.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise DsocrError("every parameter is frozen: nothing to train")
    return model.train()


def moe_balance_loss(scores: torch.Tensor, experts: torch.Tensor, mask: torch.Tensor, seq_aux: bool = True) -> torch.Tensor:
    """DeepSeek-V2's expert-balance loss (MoEGate, before alpha) over the real tokens of a batch.

    scores [B, T, E] router probabilities, experts [B, T, k] chosen experts, mask [B, T] real tokens.
    seq_aux: per sequence f_i = E / (k T) * (tokens routed to i), P_i = mean score of i, loss_b =
    sum_i f_i P_i -> [B]. Otherwise one batch-level value [1] over all real tokens.
    """
    b, t, e = scores.shape
    k = experts.shape[-1]
    weights = mask.to(scores.dtype)
    if not seq_aux:  # the whole batch as one sequence
        scores, experts, weights = scores.reshape(1, b * t, e), experts.reshape(1, b * t, k), weights.reshape(1, b * t)
    tokens = weights.sum(1).clamp_min(1)  # [B]
    counts = torch.zeros(scores.shape[0], e, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(1, experts.flatten(1), weights[..., None].expand(-1, -1, k).flatten(1))
    f = counts * (e / k) / tokens[:, None]
    p = (scores * weights[..., None]).sum(1) / tokens[:, None]
    return (f * p).sum(1)


LOSS_CHUNK = 2048  # answer tokens whose logits are materialised at once


def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def answer_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of the answer tokens. Logits exist only for answer tokens, and beyond
    `chunk` tokens chunk by chunk, recomputed in backward: 2048 x 129280 float32 logits are 1 GiB,
    a whole 8192-token answer's would be 4 GiB (and as much again for their gradient)."""
    chunk = chunk or LOSS_CHUNK
    if hidden.shape[0] <= chunk:
        return _chunk_loss(lm_head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        total = total + torch.utils.checkpoint.checkpoint(_chunk_loss, lm_head, h, t, use_reentrant=False)
    return total


class TrainingModule(nn.Module):
    """The model plus its loss: what DDP / FSDP2 wrap, so that images are encoded inside forward."""

    def __init__(self, model: nn.Module, aux_loss_layers: str = "sum", loss_chunk: int = LOSS_CHUNK):
        from ..model.decoder import MoE

        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        language = model.config.language
        self.alpha, self.seq_aux = language.aux_loss_alpha, language.seq_aux
        self.aux_mean = aux_loss_layers == "mean"
        self.moes = [m for m in model.modules() if isinstance(m, MoE)]
        for moe in self.moes:
            moe.register_forward_hook(_touch_idle_experts)

    def forward(self, input_ids, labels, padding, positions, global_views, tiles, grids, images_per_sample,
                token_scale: float = 1.0, seq_scale: float = 1.0):
        """-> (scaled loss to back-propagate, sum of answer-token losses, sum of balance losses)."""
        model = self.model
        image_tokens = None
        touch = 0.0
        if global_views is not None:
            # DeepEncoder's forward; a frozen SAM builds no graph (none of its ops' inputs needs a gradient)
            per_image = iter(model.model(global_views, tiles, grids))
            image_tokens = [
                torch.cat([next(per_image) for _ in range(n)]) if n else None for n in images_per_sample
            ]
        else:  # text-only batch: keep every trainable vision parameter in the graph (zero gradient)
            touch = sum((p.sum() * 0.0 for n, p in model.named_parameters()
                         if p.requires_grad and n.startswith(tuple(COMPONENTS["vision"]))), 0.0)
        embeds = model.embed(input_ids, image_tokens)
        mask = padding if not bool(padding.all()) else None
        hidden = model.model.decode(embeds, positions=positions, padding=mask)
        targets = labels[:, 1:]
        answer = targets != IGNORE
        lm_sum = answer_loss(model.lm_head, hidden[:, :-1][answer], targets[answer], self.loss_chunk)
        aux_sum = self.balance_loss(padding.bool()) if self.moes and self.alpha > 0 else lm_sum.new_zeros(())
        loss = lm_sum * token_scale + aux_sum * seq_scale + touch
        return loss, lm_sum.detach(), aux_sum.detach()

    def balance_loss(self, mask: torch.Tensor) -> torch.Tensor:
        """alpha * (sum or mean over MoE layers) of the balance loss, summed over sequences (with
        seq_aux off: the micro-batch's one value times its sequence count)."""
        b, t = mask.shape
        total = 0.0
        for moe in self.moes:
            scores = moe.last_scores.view(b, t, -1)
            experts = moe.last_experts.view(b, t, -1)
            loss = moe_balance_loss(scores, experts, mask, self.seq_aux).sum()
            total = total + (loss if self.seq_aux else loss * b)
            moe.last_scores = moe.last_experts = None
        if self.aux_mean:
            total = total / len(self.moes)
        return self.alpha * total


def _touch_idle_experts(moe, inputs, output):
    """Add 0 * (the weights of every expert no token chose) to the output, so that those experts
    get a zero gradient rather than none: then all processes reduce the same gradients (DDP,
    FSDP2), and AdamW treats an idle expert the same in one process as in many."""
    if not torch.is_grad_enabled() or moe.last_experts is None:
        return output
    counts = torch.bincount(moe.last_experts.flatten(), minlength=len(moe.experts)).tolist()
    idle = [p for expert, n in zip(moe.experts, counts) if n == 0 for p in expert.parameters() if p.requires_grad]
    if not idle:
        return output
    return output + (sum(p.sum() for p in idle) * 0.0).to(output.dtype)


# -- optimisation -----------------------------------------------------------------------------


def build_optimizer(module: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases, single vectors)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                             fused=config.fused or None)


def lr_factor(step: int, config: OptimConfig, max_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine
    if config.schedule == "step":
        return config.gamma ** sum(step >= m for m in config.milestones)
    return 1.0


# -- logging ----------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when available) on the main process."""

    def __init__(self, out_dir: Path, tensorboard: str, resume_step: int | None):
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():  # drop records past the checkpoint
            lines = self.path.read_text().splitlines(keepends=True)
            self.path.write_text("".join(line for line in lines if line.strip() and json.loads(line)["step"] <= resume_step))
        elif resume_step is None:
            self.path.write_text("")
        self.writer = None
        if tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                if tensorboard == "on":
                    raise DsocrError("logging.tensorboard = \"on\" but the tensorboard package is not installed") from None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the loop ---------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: TrainConfig, resume: str | None = None, samples=None, tokenizer=None) -> Path:
    """Run (or, with `resume` = "latest" or a checkpoint path, continue) a training run.
    `samples` / `tokenizer` replace the configured data / tokenizer (tests, notebooks).
    Returns the output folder."""
    info = D.setup(config.distributed, config.device)
    try:
        return _train(config, info, resume, samples, tokenizer)
    finally:
        D.teardown(info)


def _train(config: TrainConfig, info: D.Dist, resume, samples, tokenizer) -> Path:
    out = Path(config.out_dir)
    if resume == "latest" and not ckpt.checkpoint_dirs(out):  # a preempted job's first start
        if info.is_main:
            print(f"no checkpoint in {out}: starting from scratch", flush=True)
        resume = None
    if resume is None and ckpt.checkpoint_dirs(out):
        raise DsocrError(f"{out} already holds checkpoints: pass --resume to continue, or another --out")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    # data
    if tokenizer is None:
        from ..processing.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(config.model.tokenizer)
    if samples is None:
        samples = load_samples(config.data.manifests, config.data.shards)

    # model (and the weights of the checkpoint resumed from)
    seed_everything(config.seed)
    model = build_model(config.model, config.seed)
    d = config.data
    dataset = TrainDataset(samples, tokenizer, resolve_mode(d.mode), d.max_length, d.max_tiles,
                           vocab_size=model.config.language.vocab_size)
    lora = bool(config.model.lora.rank)
    state = None
    if resume is not None:
        path = ckpt.find_checkpoint(out, resume)
        state = ckpt.load_trainer_state(path)
        for key in ("seed", "batch_size", "num_samples"):
            if state["data"][key] != {"seed": config.seed, "batch_size": d.batch_size, "num_samples": len(dataset)}[key]:
                raise DsocrError(f"{path}: the checkpoint was trained with another {key} ({state['data'][key]})")
        tensors = ckpt.load_model_tensors(path, lora)
        expected = {n: p.shape for n, p in model.state_dict().items()}
        needed = {n for n, p in model.named_parameters() if p.requires_grad} if lora else set(expected)
        wrong = sorted(n for n in tensors if n not in expected or tensors[n].shape != expected[n])
        missing = sorted(needed - set(tensors))
        if wrong or missing:
            raise DsocrError(f"{path}: the checkpoint does not fit this model (missing {missing[:3]}, "
                             f"unexpected or misshapen {wrong[:3]})")
        model.load_state_dict(tensors, strict=False)
    model.to(info.device)
    if config.activation_checkpointing:
        model.model.gradient_checkpointing = True

    module = TrainingModule(model, config.model.aux_loss_layers, config.loss_chunk)
    wrapped = D.wrap(module, info, shard_units=list(model.model.layers))
    optimizer = build_optimizer(module, config.optim)
    start_step, position = 0, DataPosition()
    for group in optimizer.param_groups:  # the scheduler's key, also in saved optimizer states
        group["initial_lr"] = config.optim.lr
    if state is not None:
        D.load_optimizer_state(wrapped, optimizer, state["optimizer"], info)
        rngs = state["rng"]
        ckpt.restore_rng(rngs[info.rank] if len(rngs) == info.world else rngs[0])
        start_step, position = state["step"], DataPosition(state["data"]["epoch"], state["data"]["index"])
    # The schedule is a function of the step and the current config (lr, warmup, max_steps...): a
    # resumed run continues it from its step, whatever the run that wrote the checkpoint was told.
    for group in optimizer.param_groups:
        group["initial_lr"] = config.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, config=config.optim, max_steps=config.max_steps), last_epoch=start_step - 1
    )

    sampler = GlobalBatchSampler(len(dataset), d.batch_size, config.seed, info.rank, info.world, start=position)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=d.num_workers,
        collate_fn=partial(collate, pad_id=tokenizer.pad_id, side=d.padding),
        pin_memory=info.device.type == "cuda",
    )
    batches = iter(loader)
    log = MetricsLog(out, config.logging.tensorboard, start_step if state is not None else None) if info.is_main else None
    bar = None
    if info.is_main and config.logging.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=None)  # off when stderr is not a terminal
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    params = [p for p in module.parameters() if p.requires_grad]

    for step in range(start_step, config.max_steps):
        started = time.perf_counter()
        micro = [next(batches).to(info.device) for _ in range(config.optim.grad_accum)]
        for _ in micro:
            position.advance(d.batch_size, len(dataset))
        record = {"step": step + 1, **train_step(wrapped, micro, params, optimizer, scheduler, config, info, autocast)}
        elapsed = time.perf_counter() - started
        record["tokens_per_s"], record["samples_per_s"] = record.pop("tokens") / elapsed, record.pop("sequences") / elapsed
        done = step + 1
        if log is not None and (done % config.logging.every == 0 or done == config.max_steps):
            log.write(record)
            if bar is None or bar.disable:  # no terminal: one line per logged step instead
                print(f"step {done}/{config.max_steps} loss {record['loss']:.4f} lr {record['lr']:.3g} "
                      f"grad_norm {record['grad_norm']:.3g} tok/s {record['tokens_per_s']:.0f}", flush=True)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
        if done % config.checkpoint.every == 0 or done == config.max_steps:
            save(out, done, config, module, optimizer, position, len(dataset), info, lora)

    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    return out


def train_step(wrapped: nn.Module, micro: list[Batch], params, optimizer, scheduler, config: TrainConfig,
               info: D.Dist, autocast) -> dict:
    """One optimizer step over the micro-batches of this process; metrics over all processes."""
    local = torch.tensor([sum(b.num_answer_tokens for b in micro), sum(b.num_sequences for b in micro),
                          sum(b.num_tokens for b in micro)])
    answer_tokens, sequences, tokens = D.all_reduce_sum(local, info).tolist()
    token_scale, seq_scale = info.world / max(answer_tokens, 1.0), info.world / sequences
    sums = torch.zeros(2, dtype=torch.float64, device=info.device)
    for i, batch in enumerate(micro):
        with D.gradient_sync(wrapped, info, i == len(micro) - 1):
            with autocast:
                loss, lm_sum, aux_sum = wrapped(
                    batch.input_ids, batch.labels, batch.padding, batch.positions, batch.global_views,
                    batch.tiles, batch.grids, batch.images_per_sample, token_scale, seq_scale,
                )
            loss.backward()
        sums += torch.stack([lm_sum, aux_sum]).double()
    grad_norm = D.clip_grad_norm(params, config.optim.clip, info)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    lm_total, aux_total = D.all_reduce_sum(sums, info).tolist()
    lm_loss, aux_loss = lm_total / max(answer_tokens, 1.0), aux_total / sequences
    return {"loss": lm_loss + aux_loss, "lm_loss": lm_loss, "aux_loss": aux_loss, "lr": lr, "grad_norm": grad_norm,
            "answer_tokens": int(answer_tokens), "tokens": tokens, "sequences": sequences}


def save(out: Path, step: int, config: TrainConfig, module: TrainingModule, optimizer,
         position: DataPosition, num_samples: int, info: D.Dist, lora: bool) -> None:
    """Gather the full state on the main process (a collective under FSDP2) and write it."""
    full = D.model_state(module, info)  # keys "model.<official name>"
    optim_state = D.optimizer_state(module, optimizer, info)
    rngs = D.all_gather_object(ckpt.capture_rng(), info)
    if info.is_main:
        state = {k[len("model."):]: v for k, v in full.items()}
        model = module.model
        trainer_state = {
            "step": step, "optimizer": optim_state, "rng": rngs,
            "data": {"epoch": position.epoch, "index": position.index, "seed": config.seed,
                     "batch_size": config.data.batch_size, "num_samples": num_samples},
            "world": info.world, "config": config.to_dict(),
        }
        trainable = None
        if lora:
            names = {n[len("model."):] for n, p in module.named_parameters() if p.requires_grad}
            trainable = {k: v for k, v in state.items() if k in names} | adapter_state_dict(model, state)
        ckpt.save_checkpoint(out, step, model.config.to_official(), merged_state_dict(model, state),
                             trainer_state, trainable, config.checkpoint.keep)
    D.barrier(info)
