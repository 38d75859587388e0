"""open_clip backend on a tiny random-weight architecture, through open_clip's real loading paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.vlm.backends.open_clip_backend import (
    OpenClipBackend,
    OpenClipSource,
    create_open_clip_backend,
    resolve_open_clip_source,
)
from app.vlm.base import VLMBackend, create_backend
from tests.support.tiny_model import TINY_ARCH, TINY_CONFIG, register_tiny_arch

CPU = torch.device("cpu")
TEXTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird.", "a car", "a tree"]


@pytest.fixture(scope="module", autouse=True)
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register the tiny architecture with open_clip (as a user-supplied model config file would be)."""
    register_tiny_arch(tmp_path_factory.mktemp("open_clip_configs"))
    return TINY_ARCH


@pytest.fixture(scope="module")
def backend() -> OpenClipBackend:
    torch.manual_seed(0)
    return create_open_clip_backend(CPU, torch.float32, architecture=TINY_ARCH, pretrained=None)


def _image(seed: int = 0, size: tuple[int, int] = (40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_backend_satisfies_protocol_and_reports_checkpoint_scale(backend: OpenClipBackend) -> None:
    assert isinstance(backend, VLMBackend)
    assert backend.embedding_dim == TINY_CONFIG["embed_dim"]
    # a freshly initialised CLIP has logit_scale = log(1 / 0.07)
    assert backend.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert backend.logit_bias == 0.0


def test_preprocess_resizes_to_model_resolution_and_accepts_grayscale(backend: OpenClipBackend) -> None:
    pixels = backend.preprocess(_image().convert("L"))
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == torch.float32


def test_encode_images_returns_normalised_embeddings_and_raw_features(backend: OpenClipBackend) -> None:
    pixels = torch.stack([backend.preprocess(_image(seed)) for seed in range(3)])
    encoding = backend.encode_images(pixels)
    assert encoding.embeddings.shape == (3, 16)
    assert encoding.features is not None and encoding.features.shape == (3, 16)
    assert encoding.embeddings.dtype == torch.float32 and encoding.embeddings.device == CPU
    torch.testing.assert_close(encoding.embeddings.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(encoding.features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(encoding.embeddings, torch.nn.functional.normalize(encoding.features, dim=-1))
    # different images -> different embeddings
    assert not torch.allclose(encoding.embeddings[0], encoding.embeddings[1])


def test_text_chunks_give_the_same_embeddings_as_one_batch(
    backend: OpenClipBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = backend.encode_texts(TEXTS)
    monkeypatch.setattr(backend, "text_batch_size", 2)
    torch.testing.assert_close(backend.encode_texts(TEXTS), whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (5, 16)
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(5))
    assert backend.encode_texts([]).shape == (0, 16)


def _save_tiny_checkpoint(path: Path, logit_scale: float) -> torch.nn.Module:
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def _assert_same_outputs(backend: OpenClipBackend, model: torch.nn.Module) -> None:
    pixels = backend.preprocess(_image()).unsqueeze(0)
    tokens = open_clip.get_tokenizer(TINY_ARCH)(TEXTS[:2])
    with torch.no_grad():
        expected_image = model.encode_image(pixels, normalize=True)
        expected_text = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(backend.encode_images(pixels).embeddings, expected_image)
    torch.testing.assert_close(backend.encode_texts(TEXTS[:2]), expected_text)


def test_loads_a_local_safetensors_checkpoint_file(tmp_path: Path) -> None:
    reference = _save_tiny_checkpoint(tmp_path / "tiny.safetensors", logit_scale=50.0)
    backend = create_backend(
        "open_clip", device="cpu", architecture=TINY_ARCH, pretrained=str(tmp_path / "tiny.safetensors")
    )
    assert backend.logit_scale == pytest.approx(50.0, rel=1e-5)
    _assert_same_outputs(backend, reference)


def test_loads_an_open_clip_model_folder(tmp_path: Path) -> None:
    reference = _save_tiny_checkpoint(tmp_path / "open_clip_model.safetensors", logit_scale=30.0)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    backend = create_open_clip_backend(CPU, torch.float32, architecture="ignored", pretrained=str(tmp_path))
    assert backend.logit_scale == pytest.approx(30.0, rel=1e-5)
    _assert_same_outputs(backend, reference)


def test_source_resolution() -> None:
    assert resolve_open_clip_source("ViT-B-32", None) == OpenClipSource("ViT-B-32", None)
    assert resolve_open_clip_source("ViT-B-32", "laion2b_s34b_b79k") == OpenClipSource(
        "ViT-B-32", "laion2b_s34b_b79k"
    )
    assert resolve_open_clip_source("x", "hf-hub:org/repo") == OpenClipSource("hf-hub:org/repo", None)
    assert OpenClipSource("ViT-B-32", None).describe() == "ViT-B-32/random"
    assert OpenClipSource("hf-hub:org/repo", None).describe() == "hf-hub:org/repo"


def test_bad_pretrained_values_fail_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_open_clip_source("ViT-B-32", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        resolve_open_clip_source("ViT-B-32", "not-a-tag")
    with pytest.raises(ValueError, match="unsupported dtype"):
        create_open_clip_backend(CPU, torch.float64, architecture=TINY_ARCH)


def test_an_unavailable_tag_fails_loudly_instead_of_falling_back_to_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no network wait
    with pytest.raises(RuntimeError, match="Failed to download weights for tag 'laion2b_s34b_b79k'"):
        create_open_clip_backend(
            CPU,
            torch.float32,
            architecture="ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            cache_dir=str(tmp_path),
        )


@pytest.mark.slow  # ~2 s on an idle 2-core CPU, 20 s when the box is busy
def test_real_vit_b_32_random_weights_shapes() -> None:
    backend = create_backend("open_clip", device="cpu", architecture="ViT-B-32", pretrained=None)
    assert backend.embedding_dim == 512
    pixels = torch.stack([backend.preprocess(_image(seed, (300, 200))) for seed in range(2)])
    assert pixels.shape == (2, 3, 224, 224)
    encoding = backend.encode_images(pixels)
    assert encoding.embeddings.shape == (2, 512) and encoding.features.shape == (2, 512)
    assert backend.encode_texts(TEXTS).shape == (5, 512)


def _same_weights_backend(dtype: torch.dtype, device: torch.device, **args: object) -> OpenClipBackend:
    torch.manual_seed(0)
    return create_open_clip_backend(device, dtype, architecture=TINY_ARCH, pretrained=None, **args)


def _assert_matches_fp32_cpu(backend: OpenClipBackend, min_cosine: float) -> None:
    reference = _same_weights_backend(torch.float32, CPU)
    pixels = torch.stack([reference.preprocess(_image(seed)) for seed in range(2)])
    ours, expected = backend.encode_images(pixels).embeddings, reference.encode_images(pixels).embeddings
    assert ours.dtype == torch.float32 and ours.device == CPU
    assert (ours * expected).sum(dim=-1).min() > min_cosine
    texts = backend.encode_texts(TEXTS)
    assert texts.dtype == torch.float32 and texts.device == CPU
    assert (texts * reference.encode_texts(TEXTS)).sum(dim=-1).min() > min_cosine


def test_bfloat16_weights_still_return_float32_cpu_embeddings() -> None:
    _assert_matches_fp32_cpu(_same_weights_backend(torch.bfloat16, CPU), min_cosine=0.99)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_channels_last_on_cuda_matches_fp32_cpu() -> None:
    _assert_matches_fp32_cpu(_same_weights_backend(torch.float16, torch.device("cuda")), min_cosine=0.999)


@pytest.mark.slow  # inductor compiles for ~1 minute on a 2-core CPU
def test_torch_compile_gives_the_eager_result() -> None:
    _assert_matches_fp32_cpu(
        _same_weights_backend(torch.float32, CPU, torch_compile=True), min_cosine=0.99999
    )
