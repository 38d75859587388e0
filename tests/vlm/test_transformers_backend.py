"""transformers backend on tiny random CLIP / SigLIP models saved to disk and loaded via from_pretrained."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    Dinov2Config,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.vlm.backends.transformers_backend import TransformersDualEncoderBackend, create_transformers_backend
from app.vlm.base import VLMBackend, create_backend
from tests.support.runtime import EXPORTED_RUNTIMES, make_context

TEXTS = ["a photo of a cat.", "a photo of a dog.", "this is a bird", "a car", "a tree and a plane"]
TINY_TOWER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_VISION = {**TINY_TOWER, "image_size": 32, "patch_size": 16}


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A real CLIPTokenizer whose BPE vocabulary is just the 256 byte symbols (no merges, no download)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = list(bytes_to_unicode().values())
    for token in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel saved like a Hub checkpoint folder."""
    path = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = _byte_level_clip_tokenizer()
    text = {**TINY_TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 24}
    text |= {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=8)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SiglipModel with a freshly trained 40-piece SentencePiece tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import SiglipTokenizer

    path = tmp_path_factory.mktemp("tiny-siglip")
    words = " ".join(TEXTS).replace(".", "").split()
    sentences = [" ".join(np.roll(words, i)) for i in range(len(words))]
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model_bytes,
        vocab_size=40,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (path / "spiece.model").write_bytes(model_bytes.getvalue())
    tokenizer = SiglipTokenizer(vocab_file=str(path / "spiece.model"))
    text = {**TINY_TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": 12}
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=TINY_VISION))
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


def _load(
    model_dir: Path, cache_dir: Path, runtime: str = "torch", **request: object
) -> TransformersDualEncoderBackend:
    context = make_context(cache_dir, runtime, **request)
    return create_transformers_backend(context, model_id=str(model_dir), local_files_only=True)


@pytest.fixture(scope="module")
def clip_backend(clip_dir: Path, cache_dir: Path) -> TransformersDualEncoderBackend:
    return _load(clip_dir, cache_dir)


@pytest.fixture(scope="module")
def siglip_backend(siglip_dir: Path, cache_dir: Path) -> TransformersDualEncoderBackend:
    return _load(siglip_dir, cache_dir)


def _reference_logits(model_dir: Path, backend: TransformersDualEncoderBackend, padding: str) -> np.ndarray:
    """logits_per_image from the model's own forward, tokenised and preprocessed the documented way."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    pixels = processor(images=[_image(seed) for seed in range(2)], return_tensors="pt")["pixel_values"]
    max_length = model.config.text_config.max_position_embeddings
    tokens = tokenizer(TEXTS, padding=padding, max_length=max_length, truncation=True, return_tensors="pt")
    inputs = {"input_ids": tokens["input_ids"], "pixel_values": pixels}
    if padding != "max_length":
        inputs["attention_mask"] = tokens["attention_mask"]
    with torch.no_grad():
        return model(**inputs).logits_per_image.numpy()


def test_numpy_preprocessing_equals_the_slow_image_processor(clip_dir: Path, siglip_dir: Path) -> None:
    from transformers import AutoImageProcessor

    for model_dir in (clip_dir, siglip_dir):
        backend = _load(model_dir, model_dir.parent / f"{model_dir.name}-pp")
        processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
        for seed in range(3):
            image = _image(seed)
            theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
            np.testing.assert_allclose(backend.preprocess(image), theirs, atol=1e-5)


def test_clip_loads_from_a_local_folder_and_matches_the_model_forward(
    clip_dir: Path, clip_backend: TransformersDualEncoderBackend
) -> None:
    assert isinstance(clip_backend, VLMBackend)
    assert clip_backend.model_type == "clip"
    assert clip_backend.embedding_dim == 8
    assert clip_backend.logit_scale == pytest.approx(np.exp(2.6592), rel=1e-4)  # CLIPConfig default
    assert clip_backend.logit_bias == 0.0
    pixels = np.stack([clip_backend.preprocess(_image(seed)) for seed in range(2)])
    assert pixels.shape == (2, 3, 32, 32)
    encoding = clip_backend.encode_images(pixels)
    texts = clip_backend.encode_texts(TEXTS)
    ours = clip_backend.logit_scale * encoding.embeddings @ texts.T + clip_backend.logit_bias
    np.testing.assert_allclose(
        ours, _reference_logits(clip_dir, clip_backend, "longest"), rtol=1e-4, atol=1e-4
    )


def test_embeddings_are_normalised_features_are_raw(clip_backend: TransformersDualEncoderBackend) -> None:
    encoding = clip_backend.encode_images(clip_backend.preprocess(_image())[None])
    assert encoding.features is not None and encoding.features.shape == (1, 8)
    assert encoding.embeddings.dtype == np.float32
    norm = np.linalg.norm(encoding.features, axis=-1, keepdims=True)
    np.testing.assert_allclose(encoding.embeddings, encoding.features / norm, atol=1e-6)
    assert float(norm[0, 0]) != pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(clip_backend.encode_texts(TEXTS), axis=-1), 1.0, atol=1e-5)


def test_text_chunks_match_one_batch(
    clip_backend: TransformersDualEncoderBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = clip_backend.encode_texts(TEXTS)
    monkeypatch.setattr(clip_backend, "text_batch_size", 2)
    np.testing.assert_allclose(clip_backend.encode_texts(TEXTS), whole, rtol=1e-5, atol=1e-5)
    assert clip_backend.encode_texts([]).shape == (0, 8)


def test_siglip_is_detected_and_keeps_its_logit_bias(
    siglip_dir: Path, siglip_backend: TransformersDualEncoderBackend
) -> None:
    assert siglip_backend.model_type == "siglip"
    assert siglip_backend.logit_bias == pytest.approx(-3.0)
    assert siglip_backend.embedding_dim == 16
    pixels = np.stack([siglip_backend.preprocess(_image(seed)) for seed in range(2)])
    encoding = siglip_backend.encode_images(pixels)
    texts = siglip_backend.encode_texts(TEXTS)
    ours = siglip_backend.logit_scale * encoding.embeddings @ texts.T + siglip_backend.logit_bias
    expected = _reference_logits(siglip_dir, siglip_backend, "max_length")
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_siglip_text_embedding_does_not_depend_on_batch_mates(
    siglip_backend: TransformersDualEncoderBackend,
) -> None:
    alone = siglip_backend.encode_texts(["a car"])
    in_batch = siglip_backend.encode_texts(["a tree and a plane and a bird", "a car"])[1:]
    np.testing.assert_allclose(alone, in_batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime", EXPORTED_RUNTIMES)
@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_exported_runtimes_match_the_torch_reference(
    request: pytest.FixtureRequest, cache_dir: Path, which: str, runtime: str
) -> None:
    model_dir = request.getfixturevalue(f"{which}_dir")
    reference = request.getfixturevalue(f"{which}_backend")
    exported = _load(model_dir, cache_dir, runtime)
    assert {r.runtime for r in exported.towers.values()} == {runtime}
    pixels = np.stack([reference.preprocess(_image(seed)) for seed in range(3)])
    ours, ref = exported.encode_images(pixels), reference.encode_images(pixels)
    assert np.abs(ours.embeddings - ref.embeddings).max() < 1e-4
    assert np.abs(exported.encode_texts(TEXTS) - reference.encode_texts(TEXTS)).max() < 1e-4
    assert (exported.logit_scale, exported.logit_bias) == (reference.logit_scale, reference.logit_bias)


def test_registered_under_transformers(clip_dir: Path, tmp_path: Path) -> None:
    backend = create_backend(
        "transformers", make_context(tmp_path), model_id=str(clip_dir), local_files_only=True
    )
    assert backend.name == f"transformers:{clip_dir}"


def test_rejects_a_non_dual_encoder(tmp_path: Path) -> None:
    Dinov2Config(**TINY_TOWER).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="'dinov2' model"):
        _load(tmp_path / "m", tmp_path / "cache")


def test_bfloat16_torch_weights_still_return_float32_embeddings(
    clip_dir: Path, clip_backend: TransformersDualEncoderBackend, tmp_path: Path
) -> None:
    low = _load(clip_dir, tmp_path, dtype="bfloat16")
    pixels = clip_backend.preprocess(_image())[None]
    ours, expected = low.encode_images(pixels).embeddings, clip_backend.encode_images(pixels).embeddings
    assert ours.dtype == np.float32
    assert (ours * expected).sum() > 0.99
    texts = low.encode_texts(TEXTS)
    assert texts.dtype == np.float32
    assert (texts * clip_backend.encode_texts(TEXTS)).sum(axis=-1).min() > 0.99
