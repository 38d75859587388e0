"""Modality encoders: a small registry mapping an encoder kind to a module factory.

Each encoder maps one modality's preprocessed input (batch first) to a pooled embedding (B, D). ACR
(arXiv 2603.02200) uses large pretrained backbones; here the kinds are the ones that train on a CPU:

- ``features``: pre-extracted vectors (B, D_in) → identity (``hidden_dims=[]``, ``embed_dim`` = D_in) or
  an MLP adapter, optionally after a LayerNorm of the input (``input_norm``: frozen features of different
  networks come at very different scales).
- ``image_cnn``: images (B, C, H, W) → small CNN.
- ``spectrogram_cnn``: log-mel spectrograms (B, n_mels, T) → the same small CNN on one channel.

To add an encoder (e.g. a timm backbone): write a factory ``(input_shape, embed_dim, **args) -> nn.Module``
whose module returns (B, embed_dim), decorate it with ``@register_encoder("<kind>")``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

EncoderFactory = Callable[..., nn.Module]
_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(kind: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering an encoder factory under ``kind``."""

    def wrap(factory: EncoderFactory) -> EncoderFactory:
        if kind in _ENCODERS:
            raise ValueError(f"encoder kind {kind!r} is already registered")
        _ENCODERS[kind] = factory
        return factory

    return wrap


def encoder_kinds() -> list[str]:
    """Names of every registered encoder kind."""
    return sorted(_ENCODERS)


def create_encoder(kind: str, input_shape: Sequence[int], embed_dim: int, **args: object) -> nn.Module:
    """Build the encoder ``kind`` for inputs of ``input_shape`` (without the batch axis)."""
    if kind not in _ENCODERS:
        raise ValueError(f"unknown encoder kind {kind!r}; known: {encoder_kinds()}")
    return _ENCODERS[kind](tuple(int(s) for s in input_shape), int(embed_dim), **args)


class FeatureEncoder(nn.Module):
    """Identity or MLP over pre-extracted feature vectors (B, D_in) → (B, embed_dim)."""

    def __init__(
        self, input_dim: int, embed_dim: int, hidden_dims: Sequence[int] = (), input_norm: bool = False
    ) -> None:
        super().__init__()
        if not hidden_dims and embed_dim == input_dim and not input_norm:
            self.net: nn.Module = nn.Identity()
        elif not hidden_dims and embed_dim == input_dim:
            self.net = nn.LayerNorm(input_dim)
        else:
            dims = [input_dim, *hidden_dims]
            layers: list[nn.Module] = [nn.LayerNorm(input_dim)] if input_norm else []
            for d_in, d_out in itertools.pairwise(dims):
                layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            layers += [nn.Linear(dims[-1], embed_dim), nn.ReLU()]
            self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv(3×3)-BN-ReLU blocks with 2×2 max-pooling, global average pooling, then Linear → embed_dim.

    Pooling stops once a spatial side reaches 2, so the same module serves 8×8 digits and 32×80 log-mels.
    """

    def __init__(self, in_channels: int, spatial: tuple[int, int], embed_dim: int, channels: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        h, w = spatial
        c_in = in_channels
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(c_in, embed_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.project(pooled)


@register_encoder("features")
def _features(
    input_shape: tuple[int, ...], embed_dim: int, hidden_dims: Sequence[int] = (), input_norm: bool = False
) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"'features' expects a vector input shape (D,), got {input_shape}")
    return FeatureEncoder(input_shape[0], embed_dim, hidden_dims, input_norm)


@register_encoder("image_cnn")
def _image_cnn(input_shape: tuple[int, ...], embed_dim: int, channels: Sequence[int] = (32, 64)) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"'image_cnn' expects an input shape (C, H, W), got {input_shape}")
    c, h, w = input_shape
    return SmallCNN(c, (h, w), embed_dim, channels)


class _AddChannel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1)


@register_encoder("spectrogram_cnn")
def _spectrogram_cnn(
    input_shape: tuple[int, ...], embed_dim: int, channels: Sequence[int] = (16, 32, 64)
) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"'spectrogram_cnn' expects an input shape (n_mels, T), got {input_shape}")
    n_mels, frames = input_shape
    return nn.Sequential(_AddChannel(), SmallCNN(1, (n_mels, frames), embed_dim, channels))
