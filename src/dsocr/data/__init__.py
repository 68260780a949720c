"""Data for training and evaluation: manifests and shards (`manifest`), synthetic pages (`synthetic`).

The synthetic-page names are imported on first use, so that `python -m dsocr.data.synthetic`
runs the module cleanly.
"""

from dsocr.data.manifest import (
    Box,
    ManifestDataset,
    Sample,
    ShardDataset,
    iter_shards,
    read_manifest,
    shard_paths,
    write_manifest,
    write_shards,
)

_SYNTHETIC = ("SynthConfig", "SyntheticPage", "generate_dataset", "render_page")

__all__ = [
    "Box",
    "ManifestDataset",
    "Sample",
    "ShardDataset",
    "SynthConfig",
    "SyntheticPage",
    "generate_dataset",
    "iter_shards",
    "read_manifest",
    "render_page",
    "shard_paths",
    "write_manifest",
    "write_shards",
]


def __getattr__(name: str):
    if name in _SYNTHETIC:
        from dsocr.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'dsocr.data' has no attribute {name!r}")
