"""HTTP contract of /v1/multimodal: a minimal app with only this router, a real MultimodalService over
random-weight checkpoints written to tmp_path (routing and validation are under test, not accuracy)."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.api.auth import ApiKeyAuth
from app.api.errors import install_error_handlers
from app.api.routes.multimodal import router
from app.config import Settings
from app.multimodal.checkpoint import CalibrationInfo, CheckpointConfig, save_checkpoint
from app.multimodal.model import LateFusionClassifier
from app.multimodal.service import MultimodalService
from app.multimodal.specs import FusionSpec, ImagePreprocessing, LogMelPreprocessing, ModalitySpec

AUDIO = LogMelPreprocessing(n_fft=256, hop_length=128, n_mels=8, duration_s=0.25, f_max=4000.0)
CLASSES = ["a", "b", "c"]


def _save(folder: Path, name: str, modalities: list[ModalitySpec], threshold: float | None) -> None:
    torch.manual_seed(0)
    spec = FusionSpec(modalities=modalities, num_classes=3, outlier_class=True)
    calibration = CalibrationInfo(threshold=threshold, rule="target_risk" if threshold is not None else None)
    config = CheckpointConfig(name=name, fusion=spec, class_names=CLASSES, calibration=calibration)
    save_checkpoint(folder, LateFusionClassifier(spec).eval(), config)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    root = tmp_path_factory.mktemp("models")
    _save(
        root / "av",
        "av",
        [
            ModalitySpec(
                name="image",
                encoder="image_cnn",
                input_shape=[1, 8, 8],
                embed_dim=8,
                encoder_args={"channels": [4]},
                preprocessing=ImagePreprocessing(height=8, width=8),
            ),
            ModalitySpec(
                name="audio",
                encoder="spectrogram_cnn",
                input_shape=[8, AUDIO.num_frames],
                embed_dim=8,
                encoder_args={"channels": [4]},
                preprocessing=AUDIO,
            ),
        ],
        threshold=0.0,
    )
    _save(
        root / "feats",
        "feats",
        [
            ModalitySpec(name="video", encoder="features", input_shape=[6], embed_dim=6),
            ModalitySpec(name="audio", encoder="features", input_shape=[4], embed_dim=4),
        ],
        threshold=None,
    )
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{}")
    (root / "broken" / "model.safetensors").write_bytes(b"junk")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.multimodal = MultimodalService.from_dirs([root])
    app.state.auth = ApiKeyAuth()  # no keys configured: open, as in create_app's default
    app.state.settings = Settings(warmup=False)
    return TestClient(app)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    t = np.arange(4000) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_list_models_skips_broken_checkpoint(client: TestClient) -> None:
    response = client.get("/v1/multimodal/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"av", "feats"}
    av = models["av"]
    assert [m["name"] for m in av["modalities"]] == ["image", "audio"]
    assert av["modalities"][1]["input"] == "log_mel" and av["class_names"] == CLASSES
    assert av["calibration"]["calibrated"] and not models["feats"]["calibration"]["calibrated"]


def test_json_feature_vectors(client: TestClient) -> None:
    body = {"inputs": {"video": [0.1] * 6, "audio": [0.2, -1, 3, 0]}, "top_k": 2}
    response = client.post("/v1/multimodal/feats/predict", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "feats" and len(data["top_k"]) == 2
    assert data["prediction"] == data["top_k"][0]
    assert set(data["scores"]) >= {
        "msp",
        "energy",
        "max_logit",
        "neg_entropy",
        "doctor_alpha",
        "softmax_variance",
    }
    assert data["confidence"] == data["scores"]["msp"]
    assert data["decision"] == {
        "accept": None,
        "threshold": None,
        "score": "msp",
        "rule": None,
        "guarantee": None,
        "calibrated": False,
        "applies_to": "prediction",
        "note": "checkpoint has no calibrated threshold: no decision",
    }
    assert sum(p["probability"] for p in data["top_k"]) <= 1.0 + 1e-9
    assert set(data["timing_ms"]) == {"preprocess", "inference", "total"}


def test_multipart_files_and_calibrated_decision(client: TestClient) -> None:
    files = {"image": ("digit.png", _png(), "image/png"), "audio": ("word.wav", _wav(), "audio/wav")}
    response = client.post("/v1/multimodal/av/predict", files=files, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["top_k"]) == 3 and {p["label"] for p in data["top_k"]} == set(CLASSES)
    assert data["decision"]["calibrated"] and data["decision"]["accept"] is True  # threshold 0.0
    assert math.isclose(sum(p["probability"] for p in data["top_k"]), 1.0, rel_tol=1e-6)


def test_multipart_mixes_file_and_json_vector(client: TestClient) -> None:
    """A file for one modality, a JSON vector for the other: the same answer as the vector given as the
    preprocessed input in a JSON body (the file and the vector take their own paths to the same model)."""
    files = {"image": ("digit.png", _png(), "image/png")}
    silent = [0.0] * (8 * AUDIO.num_frames)
    response = client.post("/v1/multimodal/av/predict", files=files, data={"audio": json.dumps(silent)})
    assert response.status_code == 200, response.text
    mixed = response.json()
    assert mixed["model"] == "av" and len(mixed["top_k"]) == 3
    assert {p["label"] for p in mixed["top_k"]} == set(CLASSES)
    assert mixed["prediction"] == mixed["top_k"][0]
    assert mixed["confidence"] == mixed["scores"]["msp"] == pytest.approx(mixed["prediction"]["probability"])
    assert mixed["decision"]["calibrated"] and mixed["decision"]["accept"] is True  # threshold 0.0
    with_other_audio = client.post(
        "/v1/multimodal/av/predict", files=files, data={"audio": json.dumps([1.0] * len(silent))}
    ).json()
    assert with_other_audio["scores"] != mixed["scores"]  # the vector reaches the model


@pytest.mark.parametrize(
    ("model", "inputs", "status", "code", "fragment"),
    [
        (
            "nope",
            {"video": [0.0] * 6, "audio": [0.0] * 4},
            404,
            "model_not_found",
            "unknown multimodal model",
        ),
        ("feats", {"video": [0.0] * 6, "sound": [0.0] * 4}, 422, "invalid_modalities", "unknown modalities"),
        ("feats", {"video": [0.0] * 6}, 422, "invalid_modalities", "missing modalities ['audio']"),
        (
            "feats",
            {"video": [0.0] * 5, "audio": [0.0] * 4},
            422,
            "invalid_modality_input",
            "expected 6 values",
        ),
    ],
)
def test_json_errors(
    client: TestClient, model: str, inputs: dict, status: int, code: str, fragment: str
) -> None:
    response = client.post(f"/v1/multimodal/{model}/predict", json={"inputs": inputs})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"]


def test_nan_and_infinity_are_rejected(client: TestClient) -> None:
    for bad in ("NaN", "Infinity"):
        body = '{"inputs": {"video": [BAD, 0, 0, 0, 0, 0], "audio": [0, 0, 0, 0]}}'.replace("BAD", bad)
        response = client.post(
            "/v1/multimodal/feats/predict", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert "NaN or infinite" in response.json()["error"]["message"]


def test_bad_files_and_bodies(client: TestClient) -> None:
    files = {"image": ("digit.png", _png(), "image/png"), "audio": ("word.wav", b"RIFFgarbage", "audio/wav")}
    response = client.post("/v1/multimodal/av/predict", files=files)
    assert response.status_code == 422 and "unreadable audio" in response.json()["error"]["message"]

    files = {"image": ("digit.png", b"not an image", "image/png"), "audio": ("word.wav", _wav(), "audio/wav")}
    response = client.post("/v1/multimodal/av/predict", files=files)
    assert response.status_code == 422 and "not an image" in response.json()["error"]["message"]

    response = client.post(
        "/v1/multimodal/feats/predict",
        files={"video": ("v.bin", b"1234", "x/y")},
        data={"audio": "[0,0,0,0]"},
    )
    assert response.status_code == 422 and "not a file" in response.json()["error"]["message"]

    response = client.post("/v1/multimodal/feats/predict", data={"video": "hello", "audio": "[0,0,0,0]"})
    assert response.status_code == 422 and "JSON list of numbers" in response.json()["error"]["message"]

    form = {"video": "[0,0,0,0,0,0]", "audio": "[0,0,0,0]", "top_k": "many"}
    response = client.post("/v1/multimodal/feats/predict", data=form)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_top_k"

    response = client.post(
        "/v1/multimodal/feats/predict", content=b"{broken", headers={"content-type": "application/json"}
    )  # the same answer as POST /v1/classify's (app.api.parsing)
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_json"

    nested = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post(
        "/v1/multimodal/feats/predict", content=nested, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_json"

    response = client.post("/v1/multimodal/feats/predict", json={"inputs": {"video": [0.0]}, "x": 1})
    assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_field"

    response = client.post("/v1/multimodal/feats/predict", json={"inputs": {"video": "abc"}})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"

    response = client.post(
        "/v1/multimodal/feats/predict", content=b"x", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


def test_service_missing_gives_503() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.auth = ApiKeyAuth()
    response = TestClient(app).get("/v1/multimodal/models")
    assert response.status_code == 503 and response.json()["error"]["code"] == "multimodal_unavailable"


def test_openapi_documents_both_body_forms(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/multimodal/{model}/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}


def test_multipart_form_has_the_limits_of_every_route(client: TestClient) -> None:
    """The form read of predict is bounded like classify's: too many parts, or a part over the body
    limit, is a 400 ``invalid_multipart`` before any modality is looked at."""
    many = {f"m{i}": "[0]" for i in range(40)}
    response = client.post("/v1/multimodal/feats/predict", data=many)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_multipart"
    files = {f"f{i}": (f"{i}.bin", b"x", "application/octet-stream") for i in range(40)}
    response = client.post("/v1/multimodal/feats/predict", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_multipart"
