"""Build the auxiliary image encoder a preset asks for."""

from __future__ import annotations

from app.runtime.towers import RuntimeContext
from app.vlm.aux_base import AUX_ENCODERS, SHARED_TOWER, AuxImageEncoder
from app.vlm.presets import AuxEncoderSpec


def create_aux_encoder(spec: AuxEncoderSpec, context: RuntimeContext) -> AuxImageEncoder | None:
    """A separate encoder for ``spec.kind``, or ``None`` for ``kind: vlm`` (reuse the VLM's own forward)."""
    from app.vlm import registry  # noqa: F401  (fills AUX_ENCODERS)

    if spec.kind == SHARED_TOWER:
        return None
    if spec.kind not in AUX_ENCODERS:
        known = sorted([SHARED_TOWER, *AUX_ENCODERS])
        raise KeyError(f"unknown auxiliary image encoder kind {spec.kind!r}; known: {known}")
    return AUX_ENCODERS[spec.kind](context, **spec.args)
