"""DeepEncoder: SAM (window attention) -> 16x compressor -> CLIP (global attention) -> projector,
and the 2-D token layout fed to the language model (spec §3)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .clip import ClipVisionTower
from .config import DeepEncoderConfig
from .sam import SamEncoder


class LinearProjector(nn.Module):
    """The official `MlpProjector` with projector_type "linear": one Linear under `layers`."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.layers = nn.Linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepEncoder(nn.Module):
    """Image views -> vision tokens for the language model.

    Its `state_dict()` names are the official checkpoint's without the leading `model.`.
    """

    def __init__(self, config: DeepEncoderConfig | None = None):
        super().__init__()
        config = config or DeepEncoderConfig()
        self.config = config
        self.sam_model = SamEncoder(config.sam)
        self.vision_model = ClipVisionTower(config.clip)
        self.projector = LinearProjector(config.projector_input_dim, config.output_dim)
        std = 1 / math.sqrt(config.output_dim)  # the official in-code initialisation
        self.image_newline = nn.Parameter(torch.randn(config.output_dim) * std)
        self.view_seperator = nn.Parameter(torch.randn(config.output_dim) * std)  # sic, official name

    @property
    def dtype(self) -> torch.dtype:
        return self.view_seperator.dtype

    @property
    def device(self) -> torch.device:
        return self.view_seperator.device

    # -- the network -------------------------------------------------------------------------
    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """Square views [N, 3, L, L] -> projected features [N, (L/64)^2, output_dim], row-major."""
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        sam = self.sam_model(pixels)  # [N, C, g, g]
        clip = self.vision_model(sam)  # [N, 1 + g^2, C]
        features = torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1)  # CLIP first, SAM second
        return self.projector(features)

    def layout(
        self,
        global_features: torch.Tensor,
        local_features: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Arrange one image's features as the language model reads them.

        `global_features` [g^2, D]; `local_features` [wt*ht, t^2, D] for a (wt, ht) tile grid.
        Every row of the global view, and every row of the stitched tile mosaic, ends with
        `image_newline`; the order is local mosaic, global view, `view_seperator`.
        """
        parts = []
        if local_features is not None and grid is not None:
            wt, ht = grid
            t = math.isqrt(local_features.shape[1])
            mosaic = local_features.view(ht, wt, t, t, -1).permute(0, 2, 1, 3, 4).reshape(ht * t, wt * t, -1)
            parts.append(self._with_newlines(mosaic))
        g = math.isqrt(global_features.shape[0])
        parts.append(self._with_newlines(global_features.view(g, g, -1)))
        parts.append(self.view_seperator[None].to(global_features.dtype))
        return torch.cat(parts, dim=0)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        rows = grid.shape[0]
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, -1)
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def forward(
        self,
        global_views: torch.Tensor,
        tiles: Sequence[torch.Tensor | None] | None = None,
        grids: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[torch.Tensor]:
        """Encode a batch of images: global views [B, 3, L, L] (one size), per image optional tiles
        [n_i, 3, T, T] and their (wt, ht) grid. All tiles of the batch run as one forward.
        Returns one token sequence [N_i, output_dim] per image."""
        batch = global_views.shape[0]
        tiles = list(tiles) if tiles is not None else [None] * batch
        grids = list(grids) if grids is not None else [None] * batch
        global_features = self.encode_views(global_views)
        tiled = [t for t in tiles if t is not None and t.shape[0] > 0]
        local_features = list(self.encode_views(torch.cat(tiled)).split([t.shape[0] for t in tiled])) if tiled else []
        sequences = []
        for i in range(batch):
            local = local_features.pop(0) if tiles[i] is not None and tiles[i].shape[0] > 0 else None
            sequences.append(self.layout(global_features[i], local, grids[i] if local is not None else None))
        return sequences

    # -- convenience ---------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, prepared) -> torch.Tensor:
        """Tokens [N, output_dim] for one `dsocr.processing.PreparedImage`."""
        return self(prepared.global_view[None], [prepared.tiles], [prepared.grid])[0]

    @torch.inference_mode()
    def encode_image(self, image, mode: str = "base", max_tiles: int | None = None) -> torch.Tensor:
        """Tokens for a PIL image or an image path in a resolution mode (tiny ... gundam-m)."""
        from ..processing import get_mode, load_image, prepare_image

        if not hasattr(image, "size"):
            image = load_image(image)
        return self.encode(prepare_image(image, get_mode(mode), max_tiles=max_tiles))

    # -- weights -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        config: DeepEncoderConfig | None = None,
    ) -> "DeepEncoder":
        """Load from an official DeepSeek-OCR checkpoint (file, sharded index or directory), a file
        with only the vision keys, or a `dsocr convert` output. Language-model keys are ignored.
        Nothing is loaded unless every key is present with the right shape."""
        from ..errors import DsocrError
        from ..weights.checkpoint import Checkpoint
        from ..weights.official import check_state_dict, config_from_shapes, vision_keys

        checkpoint = Checkpoint(path)
        names = vision_keys(checkpoint.keys())
        if not names:
            raise DsocrError(f"{path}: not DeepSeek-OCR vision weights (no sam_model/vision_model/projector keys)")
        shapes = {local: checkpoint.shape(source) for local, source in names.items()}
        if config is None and "dsocr.deepencoder.config" in checkpoint.metadata:
            config = DeepEncoderConfig(**json.loads(checkpoint.metadata["dsocr.deepencoder.config"]))
        config = config or config_from_shapes(shapes)
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model, shapes, str(path))
        dtype = dtype or next(
            (checkpoint.dtype(s) for s in names.values() if checkpoint.dtype(s) and checkpoint.dtype(s).is_floating_point),
            torch.float32,
        )
        state = {local: checkpoint[source].to(device=device, dtype=dtype) for local, source in names.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the official checkpoint's names (`model.` prefix)."""
        return {f"model.{k}": v for k, v in self.state_dict().items()}

    def save_pretrained(self, path: str | Path) -> None:
        """Write one safetensors file with the official names (atomically), config in its metadata."""
        from safetensors.torch import save_file

        from ..files import atomic_path

        tensors = {k: v.detach().contiguous() for k, v in self.official_state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"dsocr.deepencoder.config": json.dumps(self.config.to_dict())})
