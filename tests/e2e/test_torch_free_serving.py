"""With an exported runtime and a warm export cache the server never imports torch: a subprocess whose
imports of torch (and of the torch-based model libraries) fail serves classify, label sets, /v1/models and a
multimodal prediction from files (the shipped demo checkpoint: a PNG through the EfficientNet-Lite0
extractor tower, a WAV through the speech extractor, then the fused classifier), and torch is not in
``sys.modules`` afterwards. This is what the slim CPU image relies on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.config import Settings
from app.multimodal.service import MultimodalService
from app.runtime.cache import ExportCache
from app.vlm.loading import load_models, runtime_request
from app.vlm.presets import get_preset
from tests.support.live_server import REPO_ROOT
from tests.support.tiny_model import TINY_PRESET

DEMO_CHECKPOINT = REPO_ROOT / "models" / "multimodal" / "av-digits-acr"

BLOCKED = ("torch", "torchvision", "open_clip", "timm", "efficientnet_lite_pytorch")

# the start of every server script: torch and the torch-based libraries cannot be imported, a PNG helper,
# and a wait for /readyz (a template for str.format: {blocked} is filled in, doubled braces are literal)
NO_TORCH_PREAMBLE = textwrap.dedent(
    """
    import io, json, sys, time
    BLOCKED = {blocked!r}

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"torch-free serving imported {{name}}")
            return None

    sys.meta_path.insert(0, NoTorch())
    from fastapi.testclient import TestClient
    from PIL import Image
    from app.api.app import create_app
    from app.config import Settings

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, "PNG")
        return buf.getvalue()

    def wait_ready(client):
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                return
            time.sleep(0.05)
    """
)

SERVER = NO_TORCH_PREAMBLE + textwrap.dedent(
    """
    import numpy as np
    import soundfile as sf

    settings = Settings(model={preset!r}, models_dir={models_dir!r}, export_cache_dir={cache!r},
                        runtime={runtime!r}, store_dir={store!r}, device="cpu", log_json=False,
                        multimodal_dir={multimodal!r})

    out = {{}}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        r = client.post("/v1/classify", files={{"image": ("a.png", png("red"), "image/png")}},
                        data={{"labels": json.dumps(["red", "blue"])}})
        out["classify"] = r.status_code
        r = client.post("/v1/label-sets", json={{"id": "colours", "labels": ["red", "blue"]}})
        out["create"] = r.status_code
        for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            r = client.post("/v1/label-sets/colours/images", data={{"label": label}},
                            files=[("images", ("x.png", png(colour), "image/png"))])
            out["add_" + label] = r.status_code
        r = client.post("/v1/classify", files={{"image": ("a.png", png((200, 30, 30)), "image/png")}},
                        data={{"label_set": "colours"}})
        out["classify_label_set"] = r.status_code
        out["scores"] = sorted(r.json()["results"][0]["scores"])
        out["models"] = client.get("/v1/models").json()["models"][0]["runtime"]
        out["metrics"] = "trustserve_model_runtime_info" in client.get("/metrics").text
        digit = Image.new("L", (8, 8), 0)
        digit.paste(255, (3, 1, 5, 7))
        buf = io.BytesIO(); digit.save(buf, "PNG")
        wav = io.BytesIO()
        t = np.arange(16000) / 16000
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="WAV")
        r = client.post("/v1/multimodal/av-digits-acr/predict",
                        files={{"image": ("d.png", buf.getvalue(), "image/png"),
                               "audio": ("d.wav", wav.getvalue(), "audio/wav")}})
        out["multimodal"] = r.status_code
        out["multimodal_prediction"] = r.json().get("prediction", {{}}).get("label")
    out["torch_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_warm_cache_serves_without_torch(tiny_models_dir: Path, tmp_path: Path, runtime: str) -> None:
    cache = tmp_path / "export-cache"
    settings = Settings(
        model=TINY_PRESET, models_dir=tiny_models_dir, export_cache_dir=cache, runtime=runtime, device="cpu"
    )
    load_models(get_preset(TINY_PRESET, tiny_models_dir), settings)  # warm the cache (this process has torch)
    demo = MultimodalService.from_dirs([DEMO_CHECKPOINT], runtime_request(settings), ExportCache(cache))
    assert demo.names == ["av-digits-acr"]
    script = SERVER.format(
        blocked=BLOCKED,
        preset=TINY_PRESET,
        models_dir=str(tiny_models_dir),
        cache=str(cache),
        runtime=runtime,
        store=str(tmp_path / "store"),
        multimodal=str(DEMO_CHECKPOINT),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["torch_loaded"] == []
    assert result["classify"] == result["classify_label_set"] == 200, result
    assert result["create"] == 201 and result["add_red"] == result["add_blue"] == 200, result
    assert "trustvlm" in result["scores"]  # prototypes were encoded and searched without torch
    assert {tower: info["runtime"] for tower, info in result["models"].items()} == {
        "image": runtime,
        "text": runtime,
    }
    assert all(info["cache"] == "hit" for info in result["models"].values())
    assert result["metrics"]
    assert result["multimodal"] == 200, result  # extractor + fusion towers on the exported runtime
    assert result["multimodal_prediction"] in {
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"
    }  # fmt: skip


INDEPENDENT_SPACE_SERVER = NO_TORCH_PREAMBLE + textwrap.dedent(
    """
    settings = Settings(model={preset!r}, models_dir={models_dir!r}, export_cache_dir={cache!r},
                        runtime={runtime!r}, store_dir={store!r}, device="cpu", log_json=False)

    out = {{}}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        r = client.post("/v1/label-sets",
                        json={{"id": "colours", "labels": ["red", "blue"], "image_space": "independent"}})
        out["create"] = r.status_code
        for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            r = client.post("/v1/label-sets/colours/images", data={{"label": label}},
                            files=[("images", ("x.png", png(colour), "image/png"))])
            out["add_" + label] = r.status_code
        r = client.post("/v1/classify", files={{"image": ("a.png", png((200, 30, 30)), "image/png")}},
                        data={{"label_set": "colours"}})
        out["classify_label_set"] = r.status_code
        out["trust_image_space"] = r.json()["results"][0]["trust"].get("image_space")
        out["space"] = client.get("/v1/label-sets/colours").json().get("space")
    out["torch_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps(out))
    """
)


def test_exported_independent_space_serves_without_torch(tiny_models_dir: Path, tmp_path: Path) -> None:
    """``trustserve models export`` also exports the preset's extra image spaces, so a label set in the
    independent space works where torch is absent (the slim image bakes its cache the same way)."""
    from typer.testing import CliRunner

    from app.cli import cli
    from tests.support.tiny_model import TINY_TWO_SPACES_PRESET

    cache = tmp_path / "export-cache"
    args = ["models", "export", TINY_TWO_SPACES_PRESET, "--runtime", "onnxruntime", "--cache-dir", str(cache)]
    exported = CliRunner().invoke(cli, [*args, "--models-dir", str(tiny_models_dir)])
    assert exported.exit_code == 0, exported.output
    script = INDEPENDENT_SPACE_SERVER.format(
        blocked=BLOCKED,
        preset=TINY_TWO_SPACES_PRESET,
        models_dir=str(tiny_models_dir),
        cache=str(cache),
        runtime="onnxruntime",
        store=str(tmp_path / "store"),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["torch_loaded"] == []
    assert result["create"] == 201 and result["add_red"] == result["add_blue"] == 200, result
    assert result["classify_label_set"] == 200, result
    assert result["space"] == "independent", result
    assert result["trust_image_space"] and "tiny2" in result["trust_image_space"], result
