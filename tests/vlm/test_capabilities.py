"""Backends declare what they can do (runtimes, precisions, torch.compile, logit bias) next to their
factory; settings they cannot honour are refused at start-up with a clear message (issue 16, defect 4:
``TRUSTSERVE_TORCH_COMPILE=1`` used to crash the default preset with a TypeError)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import BertConfig, BertModel

from app.api.app import create_app
from app.runtime.torch_executor import TorchExecutor
from app.runtime.types import UnsupportedSettingError
from app.vlm import registry  # noqa: F401  (fills the registry)
from app.vlm.backends.offline_conse import minilm_dir
from app.vlm.base import BACKENDS, BackendCapabilities, create_backend
from tests.support.runtime import make_context


def test_every_backend_declares_its_capabilities() -> None:
    assert set(BACKENDS) == {"offline", "open_clip", "transformers"}
    for registered in BACKENDS.values():
        assert isinstance(registered.capabilities, BackendCapabilities)
    assert not BACKENDS["offline"].capabilities.logit_bias
    assert BACKENDS["open_clip"].capabilities.logit_bias and BACKENDS["transformers"].capabilities.logit_bias


def test_a_capability_a_backend_lacks_is_refused(tmp_path: Path) -> None:
    limited = BackendCapabilities(
        runtimes=frozenset({"torch"}), precisions=frozenset({"fp32"}), torch_compile=False
    )
    with pytest.raises(UnsupportedSettingError, match="cannot run on 'openvino'"):
        limited.check("x", make_context(tmp_path, "openvino"))
    with pytest.raises(UnsupportedSettingError, match="TORCH_COMPILE"):
        limited.check("x", make_context(tmp_path, "torch", torch_compile=True))


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, root / name)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(root)
    return root


def test_torch_compile_builds_the_offline_backend(tiny_text_dir: Path, tmp_path: Path) -> None:
    """The default preset's backend with TRUSTSERVE_TORCH_COMPILE=1 (runtime torch): no TypeError; the
    image tower is wrapped in torch.compile (compilation itself happens on the first call)."""
    context = make_context(tmp_path, "torch", torch_compile=True)
    backend = create_backend("offline", context, variant="lite0", text_model_dir=str(tiny_text_dir))
    assert isinstance(backend.image_tower, TorchExecutor)
    assert backend.image_tower._call is not backend.image_tower.module  # compiled wrapper


def _startup_error(client: TestClient) -> str:
    for _ in range(600):
        r = client.get("/readyz")
        if r.status_code == 503 and r.json().get("status") == "unavailable":
            return str(r.json().get("detail"))
        if r.status_code == 200:
            return ""
        time.sleep(0.05)
    raise AssertionError("no start-up verdict")


def test_unsupported_settings_are_a_clear_start_up_error(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(runtime="onnxruntime", torch_compile=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        detail = _startup_error(client)
    assert "TRUSTSERVE_TORCH_COMPILE" in detail and "onnxruntime" in detail
