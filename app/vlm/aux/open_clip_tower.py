"""Another open_clip model's image tower as TrustVLM's image space g (the paper's "CLIP image encoder" g).

Only the image tower is used; features are its output before L2 normalisation
(``encode_image(normalize=False)``). To reuse the *serving* model's own tower, use ``kind: vlm`` instead.
"""

from __future__ import annotations

from app.runtime.towers import RuntimeContext
from app.vlm.aux_base import AUX_TOWER, TowerImageEncoder, register_aux_encoder
from app.vlm.backends.open_clip_backend import (
    LazyLoad,
    load_open_clip,
    open_clip_assets,
    open_clip_image_source,
    resolve_open_clip_source,
)
from app.vlm.preprocessing import ImagePreprocessor


@register_aux_encoder("open_clip")
def create_open_clip_tower(
    context: RuntimeContext,
    architecture: str = "ViT-B-32",
    pretrained: str | None = None,
    cache_dir: str | None = None,
) -> TowerImageEncoder:
    """Factory for ``aux_encoder: {kind: open_clip}``; ``pretrained`` as for the open_clip backend."""
    source = resolve_open_clip_source(architecture, pretrained)
    loaded = LazyLoad(lambda: load_open_clip(architecture, pretrained, cache_dir=cache_dir))
    assets, _ = open_clip_assets(context, source, loaded)
    preprocessor = ImagePreprocessor(**assets["preprocess"])
    tower = context.tower(open_clip_image_source(context, source, loaded, preprocessor, tower=AUX_TOWER))
    return TowerImageEncoder(f"open_clip:{source.describe()}", preprocessor, tower)
