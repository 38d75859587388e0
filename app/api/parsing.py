"""Request parsing for every route that reads a body by hand: JSON and multipart forms, with the same
limits and the same error codes everywhere (classify, label-set images / calibrate / import, multimodal).

- JSON: 400 ``malformed_json`` (not JSON, not UTF-8, nested too deeply), 422 ``unknown_field``, 422
  ``invalid_request`` (schema); the body size and element count were bounded by the middleware.
- forms: 415 ``unsupported_media_type``, 400 ``invalid_multipart`` (malformed, too many parts, a part
  over the body limit), 422 ``unknown_field``, 422 ``invalid_<field>`` for a field that is not what it
  should be (a file, a JSON list, a number, a boolean).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from app.config import Settings
from app.errors import InvalidInput, MalformedInput, TrustserveError, UnsupportedMedia, shown

M = TypeVar("M", bound=BaseModel)
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
JSON = "application/json"
TRUE, FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def validation_error(exc: ValidationError) -> InvalidInput:
    """The first schema violation, as the client should read it."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidInput(f"invalid request: {where}: {first.get('msg')}", code="invalid_request")


async def read_json(request: Request, model: type[M]) -> M:
    """The body as ``model``: unknown top-level keys are refused before validation (so a body of many
    unknown keys costs no per-key validation error)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedInput("the request body is not valid JSON", code="malformed_json") from None
    except RecursionError:
        raise MalformedInput("the JSON body is nested too deeply", code="malformed_json") from None
    if isinstance(data, dict):
        unknown = data.keys() - model.model_fields.keys()
        if unknown:
            names = sorted(str(k)[:40] for k in unknown)[:5]
            raise InvalidInput(f"unknown field(s) ({len(unknown)}): {names}", code="unknown_field")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def read_form(
    request: Request,
    settings: Settings,
    *,
    max_files: int,
    max_fields: int,
    media_types: tuple[str, ...] = (MULTIPART,),
    expected: str = "multipart/form-data with image files",
) -> FormData:
    """The form, refused (415) unless it is one of ``media_types``; at most ``max_files`` files and
    ``max_fields`` other fields, each part within the body limit."""
    if media_type(request) not in media_types:
        raise UnsupportedMedia(f"send {expected}", code="unsupported_media_type")
    try:
        return await request.form(
            max_files=max_files, max_fields=max_fields, max_part_size=settings.max_body_bytes
        )
    except TrustserveError:  # a body limit (size, time) broken while reading
        raise
    except Exception as exc:  # malformed multipart, too many parts, bad boundary
        raise MalformedInput(
            f"could not parse the multipart body: {str(exc)[:200]}", code="invalid_multipart"
        ) from None


async def form_files(form: FormData, keys: tuple[str, ...]) -> list[bytes]:
    """The uploads of the form fields ``keys`` (each must be a file), in order."""
    files: list[bytes] = []
    for key in keys:
        for item in form.getlist(key):
            if not isinstance(item, UploadFile):
                raise InvalidInput(f"form field {key!r} must be a file upload", code="invalid_image")
            files.append(await item.read())
    return files


def form_texts(form: FormData, allowed: set[str] | None = None) -> dict[str, list[str]]:
    """The text fields by name (every value of repeated ones); ``unknown_field`` outside ``allowed``."""
    texts: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            texts.setdefault(key, []).append(value)
    if allowed is not None:
        unknown = set(texts) - allowed
        if unknown:
            names = sorted(shown(k) for k in unknown)[:10]
            raise InvalidInput(f"unknown form field(s): {names}", code="unknown_field")
    return texts


def json_list(raw: str, field: str) -> list[Any]:
    """A form field holding a JSON list (``invalid_<field>`` otherwise)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a JSON list", code=f"invalid_{field}")
    return value


def string_list(values: list[str], field: str) -> list[str]:
    """A repeatable list field: several values, or one JSON list of strings."""
    if len(values) == 1 and values[0].lstrip().startswith("["):
        parsed = json_list(values[0], field)
        if not all(isinstance(x, str) for x in parsed):
            raise InvalidInput(f"{field} must be a JSON list of strings", code=f"invalid_{field}")
        return parsed
    return values


def form_int(value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(
            f"{field} must be an integer, got {shown(value)}", code=f"invalid_{field}"
        ) from None


def form_float(value: str, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidInput(f"{field} must be a number, got {shown(value)}", code=f"invalid_{field}") from None


def form_bool(value: str, field: str) -> bool:
    text = value.strip().lower()
    if text not in TRUE | FALSE:
        raise InvalidInput(f"{field} must be true or false", code=f"invalid_{field}")
    return text in TRUE


def decode_base64_image(data: object, index: int) -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is allowed)."""
    if not isinstance(data, str):
        raise InvalidInput(f"images[{index}] must be a base64 string", code="invalid_base64")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInput(f"images[{index}] is not valid base64", code="invalid_base64") from None
