"""Training DeepSeek-OCR: stage 1 (DeepEncoder + a compact LM), stage 2 (full model, SAM frozen),
fine-tuning (full or LoRA), on one process or many (torchrun: DDP / FSDP2). See docs/training.md."""

from .batching import Batch, DataPosition, Example, GlobalBatchSampler, TrainDataset, collate, encode_sample
from .config import TrainConfig, load_config
from .lora import LoRALinear, apply_lora, merged_state_dict
from .trainer import TrainingModule, build_model, moe_balance_loss, read_metrics, train

__all__ = [
    "Batch", "DataPosition", "Example", "GlobalBatchSampler", "LoRALinear", "TrainConfig", "TrainDataset",
    "TrainingModule", "apply_lora", "build_model", "collate", "encode_sample", "load_config",
    "merged_state_dict", "moe_balance_loss", "read_metrics", "train",
]
