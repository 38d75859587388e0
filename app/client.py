"""Typed Python client for the trustserve HTTP API (sync and async, on httpx).

    from app.client import TrustServeClient
    with TrustServeClient("http://127.0.0.1:8000", api_key=None) as ts:
        answer = ts.classify(["coffee.jpg"], labels=["espresso", "a cat", "a rocket"])
        print(answer["results"][0]["prediction"], answer["results"][0]["decision"])

Both clients share one request builder per endpoint, so they cannot drift apart.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
from PIL import Image

ImageInput = bytes | str | Path | Image.Image
Json = dict[str, Any]
CHUNK_BYTES = 64 * 1024  # streamed uploads and downloads (progress bars)


class TrustServeError(Exception):
    """A non-2xx answer: ``status``, the server's error ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return "image", image
    if isinstance(image, str | Path):
        path = Path(image)
        return path.name, path.read_bytes()
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return "image.png", buf.getvalue()


def segment(value: str) -> str:
    """``value`` as one URL path segment: every reserved character percent-encoded (``/`` too), and a
    segment of dots (``.``, ``..``) encoded as ``%2E`` so no client or proxy resolves it as a relative
    path (``remove_class("x", "../../y")`` must never become ``DELETE /v1/label-sets/y``)."""
    encoded = quote(str(value), safe="")
    return encoded.replace(".", "%2E") if set(encoded) == {"."} else encoded


def _files(field: str, images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (name, data, "application/octet-stream")) for name, data in map(_image_bytes, images)]


def _chunks(data: bytes, progress: Callable[[int], object]) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start : start + CHUNK_BYTES]
        yield chunk
        progress(len(chunk))


def _streamed_form(kwargs: Json, progress: Callable[[int, int | None], object]) -> Json:
    """A multipart request (``files`` + ``data``) encoded once by httpx, then sent in chunks with a declared
    length (the server bounds bodies by it), ``progress(n, total)`` after each chunk."""
    encoded = httpx.Request("POST", "http://localhost/", files=kwargs["files"], data=kwargs["data"])
    body = encoded.read()
    headers = {"content-type": encoded.headers["content-type"], "content-length": str(len(body))}
    return {"content": _chunks(body, lambda n: progress(n, len(body))), "headers": headers}


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        code, message = err.get("code", "error"), err.get("message", response.text)
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500]
    retry = response.headers.get("retry-after")
    raise TrustServeError(response.status_code, code, message, float(retry) if retry else None)


def _decode(response: httpx.Response) -> Any:
    _raise_for_error(response)
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.content


# -- one request builder per endpoint (method, path, httpx kwargs) ---------------------------------
def _classify_request(
    images: Sequence[ImageInput],
    labels: Sequence[str] | None,
    label_set: str | None,
    templates: Sequence[str] | None,
    top_k: int,
) -> tuple[str, str, Json]:
    data: dict[str, str] = {"top_k": str(top_k)}
    if labels is not None:
        data["labels"] = json.dumps(list(labels))
    if label_set is not None:
        data["label_set"] = label_set
    if templates is not None:
        data["templates"] = json.dumps(list(templates))
    return "POST", "/v1/classify", {"files": _files("image", images), "data": data}


def _create_label_set_request(
    name: str, labels: Sequence[str], templates: Sequence[str] | None, options: Mapping[str, Any]
) -> tuple[str, str, Json]:
    body: Json = {"id": name, "labels": list(labels), **options}
    if templates is not None:
        body["templates"] = list(templates)
    return "POST", "/v1/label-sets", {"json": body}


def _support_request(label_set: str, label: str, images: Sequence[ImageInput]) -> tuple[str, str, Json]:
    return (
        "POST",
        f"/v1/label-sets/{segment(label_set)}/images",
        {"files": _files("images", images), "data": {"label": label}},
    )


def _calibrate_request(
    label_set: str, images: Sequence[ImageInput], labels: Sequence[str], options: Mapping[str, Any]
) -> tuple[str, str, Json]:
    data = {"labels": json.dumps(list(labels)), **{k: str(v) for k, v in options.items()}}
    return (
        "POST",
        f"/v1/label-sets/{segment(label_set)}/calibrate",
        {"files": _files("images", images), "data": data},
    )


def _predict_request(model: str, inputs: Mapping[str, Sequence[float]], top_k: int) -> tuple[str, str, Json]:
    body = {"inputs": {k: list(v) for k, v in inputs.items()}, "top_k": top_k}
    return "POST", f"/v1/multimodal/{segment(model)}/predict", {"json": body}


class _Endpoints:
    """Request builders shared by both clients."""

    @staticmethod
    def headers(api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class TrustServeClient:
    """Blocking client."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_Endpoints.headers(api_key), timeout=timeout, transport=transport
        )

    def _call(self, method: str, path: str, kwargs: Json | None = None) -> Any:
        return _decode(self._http.request(method, path, **(kwargs or {})))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TrustServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # health & models
    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def models(self) -> Json:
        return self._call("GET", "/v1/models")

    def metrics(self) -> str:
        return self._call("GET", "/metrics").decode()

    # classify
    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | None = None,
        *,
        label_set: str | None = None,
        templates: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> Json:
        return self._call(*_classify_request(images, labels, label_set, templates, top_k))

    # label sets
    def create_label_set(
        self, name: str, labels: Sequence[str], *, templates: Sequence[str] | None = None, **options: Any
    ) -> Json:
        return self._call(*_create_label_set_request(name, labels, templates, options))

    def list_label_sets(self) -> Json:
        return self._call("GET", "/v1/label-sets")

    def get_label_set(self, label_set: str) -> Json:
        return self._call("GET", f"/v1/label-sets/{segment(label_set)}")

    def delete_label_set(self, label_set: str) -> Json:
        return self._call("DELETE", f"/v1/label-sets/{segment(label_set)}")

    def add_support_images(self, label_set: str, label: str, images: Sequence[ImageInput]) -> Json:
        return self._call(*_support_request(label_set, label, images))

    def calibrate(
        self,
        label_set: str,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        progress: Callable[[int, int | None], object] | None = None,
        **options: Any,
    ) -> Json:
        """Calibrate on labelled images; ``progress(n, total)`` is called as each chunk of ``n`` bytes of
        the upload is sent (``total``: the body's length)."""
        method, path, kwargs = _calibrate_request(label_set, images, labels, options)
        if progress is not None:
            kwargs = _streamed_form(kwargs, progress)
        return self._call(method, path, kwargs)

    def add_classes(self, label_set: str, labels: Sequence[str]) -> Json:
        return self._call(
            "POST", f"/v1/label-sets/{segment(label_set)}/classes", {"json": {"labels": list(labels)}}
        )

    def remove_class(self, label_set: str, label: str) -> Json:
        return self._call("DELETE", f"/v1/label-sets/{segment(label_set)}/classes/{segment(label)}")

    def export_label_set(self, label_set: str) -> bytes:
        return self._call("GET", f"/v1/label-sets/{segment(label_set)}/export")

    def import_label_set(
        self, archive: bytes, new_id: str | None = None, *, progress: Callable[[int], object] | None = None
    ) -> Json:
        """Upload an export archive; ``progress(n)`` is called as each chunk of ``n`` bytes is sent."""
        params = {"id": new_id} if new_id else {}
        headers = {"content-type": "application/gzip"}
        content: bytes | Iterator[bytes] = archive
        if progress is not None:  # a stream with a declared length (the server bounds bodies by it)
            content = _chunks(archive, progress)
            headers["content-length"] = str(len(archive))
        return self._call(
            "POST", "/v1/label-sets/import", {"content": content, "params": params, "headers": headers}
        )

    def download_export(
        self, label_set: str, out: BinaryIO, *, progress: Callable[[int, int | None], object] | None = None
    ) -> int:
        """Stream a label set's export archive into ``out``; ``progress(n, total)`` after each chunk (total:
        the declared length, or None). Returns the bytes written."""
        written = 0
        with self._http.stream("GET", f"/v1/label-sets/{segment(label_set)}/export") as response:
            if not response.is_success:
                response.read()
                _raise_for_error(response)
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            for chunk in response.iter_bytes(CHUNK_BYTES):
                out.write(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(len(chunk), total)
        return written

    # multimodal
    def multimodal_models(self) -> Json:
        return self._call("GET", "/v1/multimodal/models")

    def predict(self, model: str, inputs: Mapping[str, Sequence[float]], top_k: int = 5) -> Json:
        return self._call(*_predict_request(model, inputs, top_k))


class AsyncTrustServeClient:
    """Asyncio client with the same methods as ``TrustServeClient``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_Endpoints.headers(api_key),
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=256),
        )

    async def _call(self, method: str, path: str, kwargs: Json | None = None) -> Any:
        return _decode(await self._http.request(method, path, **(kwargs or {})))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTrustServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).status_code == 200

    async def models(self) -> Json:
        return await self._call("GET", "/v1/models")

    async def metrics(self) -> str:
        return (await self._call("GET", "/metrics")).decode()

    async def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str] | None = None,
        *,
        label_set: str | None = None,
        templates: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> Json:
        return await self._call(*_classify_request(images, labels, label_set, templates, top_k))

    async def create_label_set(
        self, name: str, labels: Sequence[str], *, templates: Sequence[str] | None = None, **options: Any
    ) -> Json:
        return await self._call(*_create_label_set_request(name, labels, templates, options))

    async def list_label_sets(self) -> Json:
        return await self._call("GET", "/v1/label-sets")

    async def get_label_set(self, label_set: str) -> Json:
        return await self._call("GET", f"/v1/label-sets/{segment(label_set)}")

    async def delete_label_set(self, label_set: str) -> Json:
        return await self._call("DELETE", f"/v1/label-sets/{segment(label_set)}")

    async def add_support_images(self, label_set: str, label: str, images: Sequence[ImageInput]) -> Json:
        return await self._call(*_support_request(label_set, label, images))

    async def calibrate(
        self, label_set: str, images: Sequence[ImageInput], labels: Sequence[str], **options: Any
    ) -> Json:
        return await self._call(*_calibrate_request(label_set, images, labels, options))

    async def add_classes(self, label_set: str, labels: Sequence[str]) -> Json:
        return await self._call(
            "POST", f"/v1/label-sets/{segment(label_set)}/classes", {"json": {"labels": list(labels)}}
        )

    async def remove_class(self, label_set: str, label: str) -> Json:
        return await self._call("DELETE", f"/v1/label-sets/{segment(label_set)}/classes/{segment(label)}")

    async def export_label_set(self, label_set: str) -> bytes:
        return await self._call("GET", f"/v1/label-sets/{segment(label_set)}/export")

    async def import_label_set(self, archive: bytes, new_id: str | None = None) -> Json:
        params = {"id": new_id} if new_id else {}
        return await self._call(
            "POST",
            "/v1/label-sets/import",
            {"content": archive, "params": params, "headers": {"content-type": "application/gzip"}},
        )

    async def multimodal_models(self) -> Json:
        return await self._call("GET", "/v1/multimodal/models")

    async def predict(self, model: str, inputs: Mapping[str, Sequence[float]], top_k: int = 5) -> Json:
        return await self._call(*_predict_request(model, inputs, top_k))
