"""All settings in one place: environment variables ``TRUSTSERVE_*``, an optional YAML config file
(``TRUSTSERVE_CONFIG_FILE``), then defaults. Validated at start-up with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.runtime.cache import DEFAULT_CACHE_DIR as DEFAULT_EXPORT_CACHE_DIR
from app.vlm.presets import DEFAULT_MODELS_DIR

# Below this many prototypes an exact flat index is as fast as HNSW (benchmarks/faiss/README.md).
DEFAULT_HNSW_THRESHOLD = 50_000


class _YamlConfigSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by TRUSTSERVE_CONFIG_FILE (lowest priority after defaults)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("TRUSTSERVE_CONFIG_FILE")
        if not path:
            return {}
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"TRUSTSERVE_CONFIG_FILE={path!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config file must be a YAML mapping of setting -> value")
        return data


class Settings(BaseSettings):
    """Server settings. Every field can be set as ``TRUSTSERVE_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="TRUSTSERVE_", extra="forbid", validate_default=True)

    # model
    model: str = Field("offline-conse", description="VLM preset name (models/*.yaml) or path to a preset")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="model repository folder")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16")
    torch_compile: bool = Field(False, description="wrap torch-runtime towers in torch.compile")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="where model towers run; auto = fastest that passes the fp32 parity check"
    )
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32", description="fp32 (exact), bf16 (CPUs with native bf16), int8 (calibrated quantization)"
    )
    export_cache_dir: Path = Field(DEFAULT_EXPORT_CACHE_DIR, description="exported towers (shared is fine)")
    runtime_threads: int = Field(0, ge=0, le=256, description="threads per model call; 0 = every core")
    int8_calibration_dir: Path | None = Field(None, description="images that calibrate int8 quantization")
    multimodal_dir: Path | None = Field(None, description="extra folder of multimodal checkpoints")

    # server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    store_dir: Path = Field(Path("./trustserve-data"), description="label-set store directory")
    database_url: SecretStr | None = Field(None, description="postgresql://... to share label sets")
    index_hnsw_threshold: int = Field(
        DEFAULT_HNSW_THRESHOLD,
        ge=1,
        description="label sets with this many prototypes or more search them with HNSW, fewer exactly",
    )
    label_sync_interval_s: float = Field(
        5.0, gt=0, le=300, description="replicas: fallback version check period (LISTEN/NOTIFY is primary)"
    )

    # batching and back-pressure
    max_batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="images per model call: on CPU each call holds the model thread and ~20 MB of "
        "activations per image (default model), so 8; raise it on a GPU (deploy/docker-compose.gpu.yml: 32)",
    )
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_size: int = Field(256, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    preprocess_workers: int = Field(2, ge=1, le=64)
    preprocess_niceness: int = Field(
        0,
        ge=0,
        le=19,
        description="Linux: niceness of the pre-processing threads (0 = as the server). 5 lets decoding "
        "yield the cores to ONNX Runtime's parallel sections (faster under CPU contention) but slowed the "
        "torch runtime by 10-20 %: measured in benchmarks/README.md",
    )
    warmup: bool = True

    # request limits: every input that sizes work is bounded before the work starts (docs/RELIABILITY.md,
    # "Resource budget")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_json_items: int = Field(
        200_000, ge=100, description="values + containers in a JSON body, counted before it is parsed"
    )
    body_timeout_s: float = Field(
        20.0, gt=0, description="time to send a request body, extended by 1 s per body_min_rate bytes"
    )
    body_min_rate: int = Field(
        16_384, ge=1, description="bytes/s an upload must keep up after body_timeout_s"
    )
    max_buffered_body_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="request bodies being received at once, all clients (429)"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed")
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_pixels: int = Field(
        128_000_000, ge=1, description="pixels decoded per request, all images (JPEGs at their draft size)"
    )
    max_image_side: int = Field(20_000, ge=1)
    min_image_side: int = Field(1, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    max_labels: int = Field(1000, ge=1)
    max_label_length: int = Field(200, ge=1)
    max_new_prompts_per_request: int = Field(
        64, ge=1, description="label × template prompts not yet in the text cache, per classify request"
    )
    max_new_prompts_per_write: int = Field(
        30_000, ge=1, description="label × template prompts a label-set create / add-classes may encode"
    )
    max_label_set_labels: int = Field(100_000, ge=2, description="labels one label set may hold")
    max_calibration_images: int = Field(20_000, ge=1, description="labelled images per calibration")
    max_archive_members: int = Field(
        4096, ge=1, description="entries in an uploaded archive of class folders (support images)"
    )
    max_audio_seconds: float = Field(60.0, gt=0, description="longest audio upload (multimodal predict)")
    max_audio_channels: int = Field(8, ge=1)
    text_cache_size: int = Field(100_000, ge=0)

    # live trust monitoring per calibrated label set (app/trust/monitoring.py); memory bound in total:
    # monitor_max_label_sets × (17 B × monitor_window_size + 2 kB)
    monitor_window_size: int = Field(1000, ge=10, le=100_000, description="live answers kept per label set")
    monitor_window_seconds: float = Field(
        3600.0, gt=0, description="live answers older than this leave the window"
    )
    monitor_min_samples: int = Field(
        300, ge=1, description="answers in the window before live rates, ATC and drift are reported"
    )
    monitor_max_label_sets: int = Field(
        256, ge=1, le=100_000, description="label sets with a live window (least recently used dropped)"
    )
    monitor_max_series: int = Field(
        50, ge=0, le=10_000, description="label sets with own Prometheus series; the rest: label_set=_other"
    )

    # auth, exposure and CORS
    api_keys: SecretStr | None = Field(None, description="comma list of key[:scope], scope read|admin")
    api_keys_file: Path | None = None
    allow_unauthenticated: bool = Field(
        False, description="accept admin writes without API keys on a non-loopback bind address"
    )
    public_docs: bool = Field(
        False, description="/docs, /redoc, /openapi.json without a key when keys are on"
    )
    cors_origins: list[str] = Field(default_factory=list)

    # logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v not in {"auto", "cpu"} and not v.startswith("cuda"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        allowed = {"auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"}
        if v not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}")
        return v

    @model_validator(mode="after")
    def _check_models_dir(self) -> Settings:
        if not self.models_dir.is_dir():
            raise ValueError(f"models_dir {str(self.models_dir)!r} is not a directory")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlConfigSource(settings_cls), file_secret_settings)
