"""open_clip backend on a tiny random-weight architecture, through open_clip's real loading paths, on every
runtime (torch reference, ONNX Runtime, OpenVINO)."""

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
    open_clip_preprocessor,
    resolve_open_clip_source,
)
from app.vlm.base import VLMBackend, create_backend
from app.vlm.tokenization import PROBE_TEXTS
from tests.support.runtime import ALL_RUNTIMES, EXPORTED_RUNTIMES, make_context
from tests.support.tiny_model import TINY_ARCH, TINY_CONFIG, register_tiny_arch

TEXTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird.", "a car", "a tree"]


@pytest.fixture(scope="module", autouse=True)
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register the tiny architecture with open_clip (as a user-supplied model config file would be)."""
    register_tiny_arch(tmp_path_factory.mktemp("open_clip_configs"))
    return TINY_ARCH


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def backend(cache_dir: Path) -> OpenClipBackend:
    return create_open_clip_backend(make_context(cache_dir), architecture=TINY_ARCH, pretrained=None)


def _image(seed: int = 0, size: tuple[int, int] = (40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_backend_satisfies_protocol_and_reports_checkpoint_scale(backend: OpenClipBackend) -> None:
    assert isinstance(backend, VLMBackend)
    assert backend.embedding_dim == TINY_CONFIG["embed_dim"]
    # a freshly initialised CLIP has logit_scale = log(1 / 0.07)
    assert backend.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert backend.logit_bias == 0.0
    assert {t: r.runtime for t, r in backend.towers.items()} == {"image": "torch", "text": "torch"}


def test_preprocess_resizes_to_model_resolution_and_accepts_grayscale(backend: OpenClipBackend) -> None:
    pixels = backend.preprocess(_image().convert("L"))
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == np.float32


def test_numpy_preprocessing_equals_open_clips_torchvision_transform() -> None:
    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    ours = open_clip_preprocessor(model)
    for image in (_image(0, (300, 200)), _image(1, (123, 457)), _image(2, (224, 224)), _image(3, (20, 30))):
        np.testing.assert_allclose(ours(image), transform(image).numpy(), atol=1e-6)


def test_exported_tokenizer_equals_open_clips(backend: OpenClipBackend) -> None:
    theirs = open_clip.get_tokenizer(TINY_ARCH)(list(PROBE_TEXTS)).numpy()
    assert np.array_equal(backend._tokenizer(list(PROBE_TEXTS))["text"], theirs)


def test_encode_images_returns_normalised_embeddings_and_raw_features(backend: OpenClipBackend) -> None:
    pixels = np.stack([backend.preprocess(_image(seed)) for seed in range(3)])
    encoding = backend.encode_images(pixels)
    assert encoding.embeddings.shape == (3, 16) and encoding.features is not None
    np.testing.assert_allclose(np.linalg.norm(encoding.embeddings, axis=1), 1.0, atol=1e-5)
    raw = encoding.features / np.linalg.norm(encoding.features, axis=1, keepdims=True)
    np.testing.assert_allclose(raw, encoding.embeddings, atol=1e-6)


def test_text_chunks_give_the_same_embeddings(backend: OpenClipBackend) -> None:
    whole = backend.encode_texts(TEXTS)
    backend.text_batch_size = 2
    np.testing.assert_allclose(backend.encode_texts(TEXTS), whole, rtol=1e-5, atol=1e-6)
    backend.text_batch_size = 256
    assert backend.encode_texts([]).shape == (0, 16)


@pytest.mark.parametrize("runtime", EXPORTED_RUNTIMES)
def test_exported_runtimes_match_the_torch_reference(
    backend: OpenClipBackend, cache_dir: Path, runtime: str
) -> None:
    exported = create_open_clip_backend(make_context(cache_dir, runtime), architecture=TINY_ARCH)
    assert {r.runtime for r in exported.towers.values()} == {runtime}
    pixels = np.stack([backend.preprocess(_image(seed)) for seed in range(4)])
    ours, ref = exported.encode_images(pixels), backend.encode_images(pixels)
    assert np.abs(ours.embeddings - ref.embeddings).max() < 1e-4
    assert np.abs(ours.features - ref.features).max() < 1e-4 * max(1.0, np.abs(ref.features).max())
    assert np.abs(exported.encode_texts(TEXTS) - backend.encode_texts(TEXTS)).max() < 1e-4
    assert exported.logit_scale == backend.logit_scale


def _save_tiny_checkpoint(path: Path, logit_scale: float) -> torch.nn.Module:
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def _assert_same_outputs(backend: VLMBackend, model: torch.nn.Module) -> None:
    pixels = backend.preprocess(_image())[None]
    tokens = open_clip.get_tokenizer(TINY_ARCH)(TEXTS[:2])
    with torch.no_grad():
        expected_image = model.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
        expected_text = model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(backend.encode_images(pixels).embeddings, expected_image, atol=1e-4)
    np.testing.assert_allclose(backend.encode_texts(TEXTS[:2]), expected_text, atol=1e-4)


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_loads_a_local_safetensors_checkpoint_file(tmp_path: Path, runtime: str) -> None:
    reference = _save_tiny_checkpoint(tmp_path / "tiny.safetensors", logit_scale=50.0)
    backend = create_backend(
        "open_clip",
        make_context(tmp_path / "cache", runtime),
        architecture=TINY_ARCH,
        pretrained=str(tmp_path / "tiny.safetensors"),
    )
    assert backend.logit_scale == pytest.approx(50.0, rel=1e-5)
    _assert_same_outputs(backend, reference)


def test_changed_weights_get_a_new_export(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    _save_tiny_checkpoint(weights, logit_scale=50.0)
    first = create_backend(
        "open_clip",
        make_context(tmp_path / "c", "onnxruntime"),
        architecture=TINY_ARCH,
        pretrained=str(weights),
    )
    reference = _save_tiny_checkpoint(weights, logit_scale=20.0)  # same path, other weights
    with torch.no_grad():
        reference.visual.proj.mul_(2.0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    second = create_backend(
        "open_clip",
        make_context(tmp_path / "c", "onnxruntime"),
        architecture=TINY_ARCH,
        pretrained=str(weights),
    )
    assert first.logit_scale == pytest.approx(50.0) and second.logit_scale == pytest.approx(20.0)
    assert second.towers["image"].cache == "built"
    _assert_same_outputs(second, reference)


def test_loads_an_open_clip_model_folder(tmp_path: Path) -> None:
    reference = _save_tiny_checkpoint(tmp_path / "open_clip_model.safetensors", logit_scale=30.0)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    backend = create_open_clip_backend(
        make_context(tmp_path / "cache"), architecture="ignored", pretrained=str(tmp_path)
    )
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
        create_open_clip_backend(make_context(tmp_path), architecture="ViT-B-32", pretrained="not-a-tag")


def test_an_unavailable_tag_fails_loudly_instead_of_falling_back_to_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no network wait
    with pytest.raises(RuntimeError, match="Failed to download weights for tag 'laion2b_s34b_b79k'"):
        create_open_clip_backend(
            make_context(tmp_path / "cache"),
            architecture="ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            cache_dir=str(tmp_path),
        )


@pytest.mark.slow  # ~2 s on an idle 2-core CPU, 20 s when the box is busy
def test_real_vit_b_32_random_weights_shapes(tmp_path: Path) -> None:
    backend = create_backend("open_clip", make_context(tmp_path), architecture="ViT-B-32", pretrained=None)
    assert backend.embedding_dim == 512
    pixels = np.stack([backend.preprocess(_image(seed, (300, 200))) for seed in range(2)])
    assert pixels.shape == (2, 3, 224, 224)
    encoding = backend.encode_images(pixels)
    assert encoding.embeddings.shape == (2, 512) and encoding.features.shape == (2, 512)
    assert backend.encode_texts(TEXTS).shape == (5, 512)


def _assert_matches_fp32_cpu(backend: OpenClipBackend, reference: OpenClipBackend, min_cosine: float) -> None:
    pixels = np.stack([reference.preprocess(_image(seed)) for seed in range(2)])
    ours, expected = backend.encode_images(pixels).embeddings, reference.encode_images(pixels).embeddings
    assert ours.dtype == np.float32
    assert (ours * expected).sum(axis=-1).min() > min_cosine
    texts = backend.encode_texts(TEXTS)
    assert texts.dtype == np.float32
    assert (texts * reference.encode_texts(TEXTS)).sum(axis=-1).min() > min_cosine


def test_bfloat16_torch_weights_still_return_float32_embeddings(
    backend: OpenClipBackend, tmp_path: Path
) -> None:
    low = create_open_clip_backend(make_context(tmp_path, dtype="bfloat16"), architecture=TINY_ARCH)
    assert low.towers["image"].dtype == "bfloat16"
    _assert_matches_fp32_cpu(low, backend, min_cosine=0.99)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_channels_last_on_cuda_matches_fp32_cpu(backend: OpenClipBackend, tmp_path: Path) -> None:
    from app.runtime.cache import ExportCache
    from app.runtime.towers import RuntimeContext
    from app.runtime.types import RuntimeRequest

    context = RuntimeContext(RuntimeRequest(runtime="torch", device="cuda"), ExportCache(tmp_path), "test")
    _assert_matches_fp32_cpu(create_open_clip_backend(context, architecture=TINY_ARCH), backend, 0.999)


@pytest.mark.slow  # inductor compiles for ~1 minute on a 2-core CPU
def test_torch_compile_gives_the_eager_result(backend: OpenClipBackend, tmp_path: Path) -> None:
    compiled = create_open_clip_backend(make_context(tmp_path, torch_compile=True), architecture=TINY_ARCH)
    _assert_matches_fp32_cpu(compiled, backend, min_cosine=0.99999)


class _WrappedTokenizer:
    """Stands for an open_clip tokenizer with no exported form (e.g. an HF tokenizer)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.context_length = inner, inner.context_length

    def __call__(self, texts):  # type: ignore[no-untyped-def]
        return self.inner(texts)


def test_a_tokenizer_without_exported_form_is_served_by_open_clip(
    backend: OpenClipBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = open_clip.get_tokenizer
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda *a, **k: _WrappedTokenizer(real(*a, **k)))
    other = create_open_clip_backend(make_context(tmp_path, "onnxruntime"), architecture=TINY_ARCH)
    assert type(other._tokenizer).__name__ == "OpenClipNativeTokenizer"
    assert np.abs(other.encode_texts(TEXTS) - backend.encode_texts(TEXTS)).max() < 1e-4
