"""Samples -> model inputs: images prepared per mode, token ids with answer-only labels, padded
batches, and a deterministic sampler that splits each global batch across processes.

One sequence is `[BOS] + prompt (each <image> expanded to its placeholders) + target + [EOS]`;
labels are -100 everywhere except on the target and EOS tokens. Labels are aligned with the
input ids (label t is the id at t); the loss shifts them by one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..errors import DsocrError
from ..processing import Mode, PreparedImage, get_mode, load_image, prepare_image
from ..processing.prompts import build_prompt_ids

IGNORE = -100


def resolve_mode(mode: Any) -> Mode:
    """A mode name ("tiny", "gundam", ...) or a table {base_size, image_size, crop} (e.g. small smoke tests)."""
    if isinstance(mode, Mode):
        return mode
    if isinstance(mode, str):
        return get_mode(mode)
    if isinstance(mode, dict):
        unknown = set(mode) - {"name", "base_size", "image_size", "crop"}
        if unknown or "base_size" not in mode:
            raise DsocrError(f"data.mode table needs base_size (and optionally image_size, crop); got {mode}")
        base = int(mode["base_size"])
        return Mode(str(mode.get("name", "custom")), base, int(mode.get("image_size", base)), bool(mode.get("crop", False)))
    raise DsocrError(f"data.mode: expected a mode name or a table, got {mode!r}")


def open_image(image: Any):
    """A sample image (path, PIL image, or encoded bytes from a shard) as an RGB PIL image."""
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image

        return load_image(Image.open(io.BytesIO(image)))
    return load_image(image)


@dataclass
class Example:
    """One tokenized sample."""

    input_ids: list[int]
    labels: list[int]
    images: list[PreparedImage]
    id: str | None = None


def encode_sample(sample, tokenizer, mode: Mode, max_length: int, max_tiles: int | None = None) -> Example:
    """Prepare the images of a sample (anything with `.images`, `.prompt`, `.target`, `.id`) and
    tokenize it. A sequence longer than `max_length` loses the end of its answer; one whose
    prompt alone does not fit is an error."""
    prepared = [prepare_image(open_image(image), mode, max_tiles=max_tiles) for image in sample.images]
    prompt_ids = build_prompt_ids(tokenizer, sample.prompt, [p.num_tokens for p in prepared])
    answer_ids = tokenizer.encode(sample.target) + [tokenizer.eos_id]
    if len(prompt_ids) >= max_length:
        name = getattr(sample, "id", None) or "?"
        raise DsocrError(
            f"sample {name}: its prompt with image placeholders is {len(prompt_ids)} tokens, "
            f"data.max_length is {max_length} (use a smaller mode or a larger max_length)"
        )
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return Example(input_ids, labels, prepared, getattr(sample, "id", None))


class TrainDataset(Dataset):
    """Map-style dataset of `Example`s over in-memory samples (images are read when indexed)."""

    def __init__(self, samples: Sequence, tokenizer, mode: Mode, max_length: int, max_tiles: int | None = None,
                 vocab_size: int | None = None):
        self.samples = list(samples)
        self.tokenizer, self.mode, self.max_length, self.max_tiles = tokenizer, mode, max_length, max_tiles
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example:
        example = encode_sample(self.samples[index], self.tokenizer, self.mode, self.max_length, self.max_tiles)
        if self.vocab_size is not None:
            image_id = self.tokenizer.image_id
            too_big = [i for i in example.input_ids if i >= self.vocab_size and i != image_id]
            if too_big:
                raise DsocrError(
                    f"sample {example.id or index}: token id {max(too_big)} does not fit the language model's "
                    f"vocabulary of {self.vocab_size} (use vocab_size >= {self.tokenizer.vocab_size})"
                )
        return example


def load_samples(manifests: Sequence[str] = (), shards: Sequence[str] = ()) -> list:
    """Every sample of the manifests, then of the shards (shard images kept as encoded bytes)."""
    from ..data.manifest import iter_shards, read_manifest

    samples = []
    for path in manifests:
        samples.extend(read_manifest(path))
    for pattern in shards:
        samples.extend(iter_shards(pattern, load=False))
    if not samples:
        raise DsocrError("the training data holds no samples")
    return samples


@dataclass
class Batch:
    """A padded batch. `padding` [B, L] is 1 on real tokens; `positions` start at 0 on each
    sequence's first real token. Images: all global views of the batch stacked, then per image
    its tiles and grid; `images_per_sample` says which sample each image belongs to."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    padding: torch.Tensor
    positions: torch.Tensor
    global_views: torch.Tensor | None
    tiles: list[torch.Tensor | None]
    grids: list[tuple[int, int] | None]
    images_per_sample: list[int]

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.padding.sum())

    @property
    def num_answer_tokens(self) -> int:
        """Tokens the loss is computed on (labels shifted by one, as in the loss)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            move(self.input_ids), move(self.labels), move(self.padding), move(self.positions),
            move(self.global_views), [move(t) for t in self.tiles], self.grids, self.images_per_sample,
        )


def collate(examples: Sequence[Example], pad_id: int, side: str = "right") -> Batch:
    """Pad a list of examples to one length (right padding by default)."""
    length = max(len(e.input_ids) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    padding = torch.zeros((batch, length), dtype=torch.long)
    positions = torch.zeros((batch, length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        where = slice(0, n) if side == "right" else slice(length - n, length)
        input_ids[row, where] = torch.tensor(e.input_ids)
        labels[row, where] = torch.tensor(e.labels)
        padding[row, where] = 1
        positions[row, where] = torch.arange(n)
    images = [image for e in examples for image in e.images]
    global_views = torch.stack([image.global_view for image in images]) if images else None
    return Batch(
        input_ids, labels, padding, positions, global_views,
        [image.tiles for image in images], [image.grid for image in images], [len(e.images) for e in examples],
    )


# -- the order samples are seen in --------------------------------------------------------------


@dataclass
class DataPosition:
    """Where the next global batch starts: epoch, and index into that epoch's sample order."""

    epoch: int = 0
    index: int = 0

    def advance(self, batch_size: int, num_samples: int) -> None:
        self.index += batch_size
        if self.index + batch_size > num_samples:  # the incomplete last batch of an epoch is dropped
            self.epoch, self.index = self.epoch + 1, 0


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch, the same on every process and every run."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


class GlobalBatchSampler(Sampler[list[int]]):
    """Endless stream of this process's share of each global batch.

    Global batch k is `batch_size` consecutive indices of the epoch's shuffled order; process r
    of `world` takes the r-th of `world` equal slices. So N processes with B/N sequences each see
    exactly the sequences one process with B sees. It starts at `start` (resume).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start: DataPosition | None = None):
        if batch_size % world:
            raise DsocrError(f"data.batch_size {batch_size} is not a multiple of the {world} processes")
        if num_samples < batch_size:
            raise DsocrError(f"{num_samples} samples cannot fill one batch of {batch_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world
        self.start = start or DataPosition()

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self):
        position = DataPosition(self.start.epoch, self.start.index)
        order, order_epoch = None, None
        share = self.batch_size // self.world
        while True:
            if order_epoch != position.epoch:
                order, order_epoch = epoch_order(self.num_samples, self.seed, position.epoch), position.epoch
            first = position.index + self.rank * share
            yield order[first : first + share]
            position.advance(self.batch_size, self.num_samples)
