"""The attacks of the security review (issue 12), each a function ``run(client) -> statuses`` against a
live server prepared by ``prepare`` (label sets ``victim`` and ``lbls``, an exported archive, a FIFO).

Used by ``tests/reliability/test_resource_budget.py`` (asserts the budget) and
``benchmarks/reliability/hostile.py`` (prints the before/after table).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from tests.reliability import hostile
from tests.reliability.multimodal_models import MEDIA

GZIP = {"content-type": "application/gzip"}
Run = Callable[[httpx.Client], Iterator[int | str]]


@dataclass
class Prepared:
    """What the attacks need from the server: an exported label-set archive and a FIFO on its host."""

    archive: bytes
    fifo: Path


def prepare(client: httpx.Client, workdir: Path, *, build_payloads: bool = False) -> Prepared:
    for name, labels in (("victim", ["cat", "dog"]), ("lbls", ["cat", "dog", "bird"])):
        r = client.post("/v1/label-sets", json={"id": name, "labels": labels})
        assert r.status_code in (201, 409), r.text
    archive = client.get("/v1/label-sets/victim/export")
    assert archive.status_code == 200, archive.text
    fifo = workdir / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    if build_payloads:  # built once (cached), before any attack is timed
        for payload in (hostile.compressible_png, hostile.large_jpeg, hostile.silent_flac):
            payload()
        hostile.compressible_png(alpha=True)
    return Prepared(archive.content, fifo)


def _import(client: httpx.Client, body: bytes, new_id: str = "imported") -> int:
    return client.post(f"/v1/label-sets/import?id={new_id}", content=body, headers=GZIP).status_code


# 1 -------------------------------------------------------------------------------------------------
def import_host_path(prepared: Prepared, path: str) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        yield _import(client, hostile.rewrite_manifest(prepared.archive, hostile.point_file_at(path)))

    return run


# 2 -------------------------------------------------------------------------------------------------
def sparse_member(client: httpx.Client) -> Iterator[int]:
    yield _import(client, hostile.sparse_tar_gz("victim/v00000001.arrays.safetensors"))


# 3 -------------------------------------------------------------------------------------------------
def _predict_media(client: httpx.Client, audio: bytes, name: str) -> int:
    files = [("image", ("i.png", hostile.small_png(), "image/png")), ("audio", (name, audio, "audio/wav"))]
    return client.post(f"/v1/multimodal/{MEDIA}/predict", files=files).status_code


def audio_1hz(client: httpx.Client) -> Iterator[int]:
    yield _predict_media(client, hostile.wav_at_rate(1, 16_000), "a.wav")


def audio_8ch_flac(client: httpx.Client) -> Iterator[int]:
    yield _predict_media(client, hostile.silent_flac(), "a.flac")


# 4 -------------------------------------------------------------------------------------------------
def text_flood(client: httpx.Client) -> Iterator[int]:
    yield client.post("/v1/classify", json=hostile.text_flood(1000, 32)).status_code


def longest_new_prompts(labels: int = 85) -> Run:
    """Ad-hoc classify whose ``labels`` × the preset's templates are all new prompts of maximal label
    length (200 characters): the most text work one classify may cause at the default limits."""

    def run(client: httpx.Client) -> Iterator[int]:
        body = {
            "images": hostile.text_flood(2, 1)["images"],
            "labels": [f"{i:05d} " + "long label words " * 11 + "x" * 7 for i in range(labels)],
        }
        assert all(len(label) == 200 for label in body["labels"])
        yield client.post("/v1/classify", json=body).status_code

    return run


def many_images(count: int = 64, side: int = 320) -> Run:
    """One classify with ``count`` ordinary photos-sized images (the per-request image limit)."""

    def run(client: httpx.Client) -> Iterator[int]:
        files = [("image", (f"{i}.png", hostile.noise_png(side, seed=i), "image/png")) for i in range(count)]
        yield client.post("/v1/classify", files=files, data={"labels": '["a cat", "a dog"]'}).status_code

    return run


def label_set_prompt_flood(client: httpx.Client) -> Iterator[int]:
    body = hostile.text_flood(20_000, 32)
    yield client.post(
        "/v1/label-sets", json={"id": "flood", "labels": body["labels"], "templates": body["templates"]}
    ).status_code


# 5 -------------------------------------------------------------------------------------------------
def giant_pngs(count: int, alpha: bool = False) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        png = hostile.compressible_png(alpha=alpha)
        files = [("image", (f"{i}.png", png, "image/png")) for i in range(count)]
        yield client.post("/v1/classify", files=files, data={"labels": '["a cat", "a dog"]'}).status_code

    return run


def giant_jpegs(count: int) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        jpeg = hostile.large_jpeg()
        files = [("image", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(count)]
        yield client.post("/v1/classify", files=files, data={"labels": '["a cat", "a dog"]'}).status_code

    return run


def giant_support_pngs(count: int) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        png = hostile.compressible_png()
        files = [("images", (f"{i}.png", png, "image/png")) for i in range(count)]
        yield client.post("/v1/label-sets/lbls/images", files=files, data={"label": "cat"}).status_code

    return run


# 6 -------------------------------------------------------------------------------------------------
def slow_bodies(connections: int, seconds: float) -> Run:
    """``connections`` clients send classify headers, then one body byte per second; meanwhile a normal
    client classifies once per second (its statuses are what this attack returns)."""

    def run(client: httpx.Client) -> Iterator[int]:
        url = httpx.URL(str(client.base_url))
        auth = client.headers.get("authorization")
        head = (
            "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + (f"Authorization: {auth}\r\n" if auth else "")
            + "Content-Length: 1000000\r\n\r\n--b\r\n"
        ).encode()
        socks = []
        try:
            for _ in range(connections):
                s = socket.create_connection((url.host, url.port), timeout=5)
                s.sendall(head)
                socks.append(s)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(1.0)
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"x")
                files = [("image", ("p.png", hostile.small_png(), "image/png"))]
                yield client.post("/v1/classify", files=files, data={"labels": '["a", "b"]'}).status_code
            yield from (f"slow:{status}" for status in _first_statuses(socks))
        finally:
            for s in socks:
                s.close()

    return run


def _first_statuses(socks: list[socket.socket], wait_s: float = 3.0) -> list[str]:
    """What each slow client got back within ``wait_s`` (all together): the status of its first
    response line ("408" when the server cut it off), "closed", or "no answer"."""
    answers = dict.fromkeys(range(len(socks)), "no answer")
    deadline = time.monotonic() + wait_s
    with selectors.DefaultSelector() as selector:
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                selector.unregister(key.fileobj)
                try:
                    parts = socks[key.data].recv(64).split(b"\r\n", 1)[0].decode("latin-1").split()
                except OSError:
                    parts = []
                answers[key.data] = parts[1] if len(parts) > 1 else "closed"
    return [answers[i] for i in range(len(socks))]


# 7, 8 ---------------------------------------------------------------------------------------------
def hostile_labels(client: httpx.Client) -> Iterator[int]:
    for i, labels in enumerate(hostile.hostile_labels()):
        yield client.post("/v1/label-sets", json={"id": f"hl-{i}", "labels": labels}).status_code
    yield client.post("/v1/label-sets/lbls/classes", json={"labels": ["../../victim"]}).status_code


def hostile_templates(client: httpx.Client) -> Iterator[int]:
    for i, template in enumerate(hostile.HOSTILE_TEMPLATES):
        body = {"id": f"ht-{i}", "labels": ["cat", "dog"], "templates": [template]}
        yield client.post("/v1/label-sets", json=body).status_code
        classify = {
            "images": hostile.text_flood(2, 1)["images"],
            "labels": ["cat", "dog"],
            "templates": [template],
        }
        yield client.post("/v1/classify", json=classify).status_code


# 9 -------------------------------------------------------------------------------------------------
def unknown_id_flood(requests: int) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        for i in range(requests):
            label_set_id = secrets.token_hex(30_000)  # 60 KB
            if i % 2:
                yield client.delete(f"/v1/label-sets/{label_set_id}").status_code
            else:
                yield client.patch(f"/v1/label-sets/{label_set_id}", json={"description": "x"}).status_code

    return run


def long_path_flood(requests: int) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        for _ in range(requests):
            yield client.get("/x" + "a" * 65_000).status_code

    return run


# 10 ------------------------------------------------------------------------------------------------
def _with_arrays(prepared: Prepared, change: Callable[[dict[str, np.ndarray]], None]) -> bytes:
    """The exported archive with its arrays file changed (and the manifest entry re-hashed)."""
    files = hostile.read_members(prepared.archive)
    name = next(n for n in files if n.endswith(".safetensors"))
    tensors = dict(load_safetensors(files[name]))
    change(tensors)
    data = save_safetensors(tensors)

    def entry(body: dict[str, Any]) -> None:
        body["files"]["arrays"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    return hostile.rewrite_manifest(prepared.archive, entry, members=lambda f: f.__setitem__(name, data))


def _meta(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["meta"][field] = value

    return change


def import_variants(prepared: Prepared) -> dict[str, bytes]:
    """Archives holding what a create request would refuse, each checksum-consistent."""
    arch = prepared.archive
    text = "text_embeddings"

    def set_array(name: str, value: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Callable[..., None]:
        return lambda t: t.__setitem__(name, value(t))

    return {
        "NUL label": hostile.rewrite_manifest(arch, _meta("labels", ["cat", "d\x00g"])),
        "ESC label": hostile.rewrite_manifest(arch, _meta("labels", ["cat", "\x1b[31mdog"])),
        "5 MB label": hostile.rewrite_manifest(arch, _meta("labels", ["cat", "d" * 5_000_000])),
        "Cat/cat": hostile.rewrite_manifest(arch, _meta("labels", ["Cat", "cat"])),
        "path label": hostile.rewrite_manifest(arch, _meta("labels", ["cat", "../../x"])),
        "{}{} template": hostile.rewrite_manifest(arch, _meta("templates", ["{}{}"])),
        "format template": hostile.rewrite_manifest(arch, _meta("templates", ["{{}}{0:x>20000000}"])),
        "shape mismatch": _with_arrays(prepared, set_array(text, lambda t: np.concatenate([t[text]] * 2))),
        "negative counts": _with_arrays(
            prepared, set_array("prototype_counts", lambda t: np.full_like(t["prototype_counts"], -5))
        ),
        "embedding dim": _with_arrays(prepared, set_array(text, lambda t: t[text][:, :-1].copy())),
        "NaN embeddings": _with_arrays(prepared, set_array(text, lambda t: np.full_like(t[text], np.nan))),
        "unknown array": _with_arrays(prepared, set_array("extra", lambda t: np.zeros(3, np.float32))),
        "deep manifest": hostile.rewrite_manifest(arch, lambda b: None, raw_manifest=hostile.deep_manifest()),
    }


def import_invalid(prepared: Prepared) -> Run:
    def run(client: httpx.Client) -> Iterator[int]:
        for i, body in enumerate(import_variants(prepared).values()):
            yield _import(client, body, f"variant-{i}")

    return run


# 11 ------------------------------------------------------------------------------------------------
def json_element_flood(client: httpx.Client) -> Iterator[int]:
    yield client.post(
        "/v1/classify", content=hostile.json_element_flood(), headers={"content-type": "application/json"}
    ).status_code
