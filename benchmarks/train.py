"""Training throughput and peak memory of a small stage-1 config on synthetic pages.

    python benchmarks/train.py [--size tiny|small] [--mode tiny] [--batch-size 4] [--steps 6]
                               [--precision fp32|bf16] [--checkpointing] [--threads N]

Renders a few synthetic pages (`dsocr.data.synthetic`), trains `--steps` optimizer steps from
random weights and prints samples/s and tokens/s (mean over the steps after the first) and the
peak resident memory of the process (ru_maxrss; plus the CUDA peak on a GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dsocr.training import load_config, read_metrics, train

SIZES = {
    # DeepEncoder and compact-LM sizes; the LM keeps the real 129280-token vocabulary.
    "tiny": dict(
        vision={"sam": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 128, "global_attn_indexes": [1],
                        "neck_channels": 32, "compressor_channels": [64, 64]},
                "clip": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 128}},
        decoder={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                 "intermediate_size": 256, "moe_intermediate_size": 64, "n_routed_experts": 4,
                 "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1},
    ),
    "small": dict(
        vision={"sam": {"width": 256, "depth": 4, "heads": 4, "mlp_dim": 1024, "global_attn_indexes": [1, 3],
                        "neck_channels": 128, "compressor_channels": [256, 256]},
                "clip": {"width": 256, "depth": 4, "heads": 4, "mlp_dim": 1024}},
        decoder={"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "intermediate_size": 1024, "moe_intermediate_size": 128, "n_routed_experts": 8,
                 "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1},
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--mode", default="tiny", help="resolution mode of the images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from dsocr.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = generate_dataset(Path(tmp) / "data", 2 * args.batch_size, seed=0, task="free")
        rendered = time.perf_counter() - started
        config = load_config(values={
            "seed": 0, "max_steps": args.steps, "out_dir": str(Path(tmp) / "run"), "precision": args.precision,
            "activation_checkpointing": args.checkpointing,
            "model": {"stage": "stage1", **SIZES[args.size]},
            "data": {"manifests": [str(manifest)], "mode": args.mode, "batch_size": args.batch_size,
                     "max_length": args.max_length},
            "optim": {"lr": 1e-4, "schedule": "constant"},
            "checkpoint": {"every": 10**9, "keep": 1},
            "logging": {"progress": False, "tensorboard": "off"},
        })
        train(config)
        records = read_metrics(config.out_dir)

    steady = records[1:] or records
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "size": args.size, "mode": args.mode, "batch_size": args.batch_size, "precision": args.precision,
        "checkpointing": args.checkpointing, "threads": torch.get_num_threads(), "steps": len(records),
        "samples_per_s": round(statistics.mean(r["samples_per_s"] for r in steady), 3),
        "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in steady), 1),
        "peak_rss_mib": round(peak_mib),
        "final_loss": round(records[-1]["loss"], 4),
        "render_s": round(rendered, 2),
    }
    if torch.cuda.is_available():
        result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
