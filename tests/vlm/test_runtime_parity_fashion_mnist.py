"""fp32 on an exported runtime is invisible on the real offline model (issue 13): on 1,000 Fashion-MNIST
test images, ONNX Runtime and OpenVINO give the torch reference's embeddings within 1e-4, the same zero-shot
top-1, and the same accept/reject decisions of a TrustVLM threshold calibrated (target coverage 0.8) on
train images. Slow: exports EfficientNet-Lite2 and MiniLM once, then encodes ~1,700 images per runtime."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.calibration import calibrate_target_coverage
from app.trust.datasets import balanced_subsample, load_dataset
from app.trust.encoding import LoadedModel
from app.trust.prototypes import PrototypeBank, draw_support_indices
from app.trust.scores import trustvlm_scores
from app.vlm.presets import DEFAULT_MODELS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # torch encodes ~1,700 images
TEST_IMAGES, SHOTS, CALIBRATION_IMAGES = 1000, 16, 500


def _answers(runtime: str) -> dict[str, np.ndarray]:
    model = LoadedModel.load(
        "offline-conse", models_dir=DEFAULT_MODELS_DIR, device="cpu", dtype="auto", runtime=runtime
    )
    assert {r.split("=")[1].split("/")[0] for r in model.runtime.split(",")} == {runtime}
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test", limit=TEST_IMAGES, seed=0)
    support = draw_support_indices(np.asarray(train.labels), SHOTS, seed=0)
    rest = np.setdiff1d(np.arange(len(train)), support)
    calib = rest[balanced_subsample(np.asarray(train.labels)[rest], CALIBRATION_IMAGES, seed=1)]
    text = model.class_embeddings(test.class_names)
    out: dict[str, np.ndarray] = {}
    for split, data, idx in (("test", test, None), ("calib", train, calib), ("support", train, support)):
        images = [data.images[int(i)] for i in (range(len(data)) if idx is None else idx)]
        emb, feat = model.encode_images(images, batch_size=32, desc=f"{runtime} {split}", progress=False)
        out[f"{split}_emb"], out[f"{split}_feat"] = emb, feat
        out[f"{split}_labels"] = np.asarray(data.labels if idx is None else np.asarray(data.labels)[idx])
    bank = PrototypeBank.from_features(out["support_feat"], out["support_labels"], len(test.class_names))
    for split in ("test", "calib"):
        logits = model.logit_scale * out[f"{split}_emb"] @ text.T
        scores = trustvlm_scores(
            logits, out[f"{split}_feat"], bank.prototypes(), bank.has_prototype, alpha=2.0
        )
        out[f"{split}_pred"], out[f"{split}_score"] = logits.argmax(1), scores.trustvlm
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return _answers("torch")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_runtime_is_invisible_on_fashion_mnist(reference: dict[str, np.ndarray], runtime: str) -> None:
    ours = _answers(runtime)
    assert len(ours["test_pred"]) == TEST_IMAGES
    assert np.abs(ours["test_emb"] - reference["test_emb"]).max() < 1e-4
    np.testing.assert_array_equal(ours["test_pred"], reference["test_pred"])
    correct = reference["calib_pred"] == reference["calib_labels"]
    threshold = calibrate_target_coverage(reference["calib_score"], correct, 0.8).threshold
    ours_threshold = calibrate_target_coverage(
        ours["calib_score"], ours["calib_pred"] == ours["calib_labels"], 0.8
    )
    assert abs(ours_threshold.threshold - threshold) < 1e-4
    np.testing.assert_array_equal(
        ours["test_score"] >= ours_threshold.threshold, reference["test_score"] >= threshold
    )
