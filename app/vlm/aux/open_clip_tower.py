"""Another open_clip model's image tower as TrustVLM's image space g (the paper's "CLIP image encoder" g).

Only the image tower is kept; features are its output before L2 normalisation
(``encode_image(normalize=False)``). To reuse the *serving* model's own tower, use ``kind: vlm`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from app.vlm.aux_base import register_aux_encoder
from app.vlm.backends.open_clip_backend import load_open_clip
from app.vlm.base import to_model_input


class OpenClipImageTower:
    """An :class:`~app.vlm.aux_base.AuxImageEncoder` over ``model.visual`` of an open_clip model."""

    def __init__(
        self,
        visual: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self._visual = visual
        self._transform = transform
        output_dim = getattr(visual, "output_dim", None)
        probe = self.preprocess(Image.new("RGB", (32, 32))).unsqueeze(0)
        self.dim: int = int(output_dim) if output_dim else int(self.encode(probe).shape[1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float32 with the checkpoint's transform."""
        return self._transform(image.convert("RGB"))

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) raw image-tower output, float32 on CPU."""
        pixels = to_model_input(pixels, self.device, self.dtype)
        return self._visual(pixels).float().cpu()


@register_aux_encoder("open_clip")
def create_open_clip_tower(
    device: torch.device,
    dtype: torch.dtype,
    architecture: str = "ViT-B-32",
    pretrained: str | None = None,
    cache_dir: str | None = None,
) -> OpenClipImageTower:
    """Factory for ``aux_encoder: {kind: open_clip}``; ``pretrained`` as for the open_clip backend."""
    components = load_open_clip(architecture, pretrained, device=device, dtype=dtype, cache_dir=cache_dir)
    return OpenClipImageTower(
        components.model.visual,
        components.preprocess,
        name=f"open_clip:{components.source.describe()}",
        device=device,
        dtype=dtype,
    )
