"""``trustserve label-sets ...``: label sets on a running server, over its HTTP API (``app.client``).

- ``create ID --from-folder DIR``: one sub-folder per class (``app.classfolders``) → the labels, then the
  support images uploaded class by class in batches (a progress bar counts images).
- ``list``, ``export ID [--out FILE]`` (streamed, progress in bytes, written atomically), ``import FILE
  [--id NEW]`` (progress in bytes), ``delete ID`` (asks first unless ``--yes``).

Every command takes ``--server`` (``TRUSTSERVE_SERVER``) and ``--api-key`` (``TRUSTSERVE_API_KEY``; read
from the environment rather than the command line where shell history matters). Errors are the server's
own messages; the exit status is 1 for a refused request, 2 for bad arguments.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import typer
from tqdm import tqdm

from app.classfolders import ClassFolderError, read_class_folder
from app.client import TrustServeClient, TrustServeError

label_sets_app = typer.Typer(help="Label sets on a running server (create from a folder, list, export, "
                             "import, delete).", no_args_is_help=True)  # fmt: skip

Server = Annotated[
    str, typer.Option("--server", envvar="TRUSTSERVE_SERVER", help="URL of the running server")
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="TRUSTSERVE_API_KEY", help="API key (admin for writes)", show_default=False
    ),
]
DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_BATCH = 16  # support images per request (the server's max_images_per_request bounds it too)


@contextmanager
def _client(server: str, api_key: str | None) -> Iterator[TrustServeClient]:
    """A client whose refusals end the command with the server's message (exit status 1)."""
    try:
        with TrustServeClient(server, api_key=api_key, timeout=600) as client:
            yield client
    except TrustServeError as exc:
        typer.echo(f"error: {exc.status} {exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:  # connection refused, unknown host, timeout
        typer.echo(f"error: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from None


class ByteProgress(Protocol):
    """Called with the bytes just moved and, when known, the total."""

    def __call__(self, n: int, total: int | None = None, /) -> None: ...


@contextmanager
def byte_progress(desc: str, total: int | None = None) -> Iterator[ByteProgress]:
    """A progress bar in bytes for a transfer; ``progress(n, total)`` counts ``n`` more bytes (and sets the
    total once the server declares it)."""
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, dynamic_ncols=True) as bar:

        def progress(n: int, total: int | None = None, /) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(n)

        yield progress


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@label_sets_app.command("create")
def create_command(
    label_set: Annotated[str, typer.Argument(help="id of the new label set (slug: a-z, 0-9, '-', '_')")],
    from_folder: Annotated[
        Path | None,
        typer.Option("--from-folder", help="one sub-folder per class: labels + support images"),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="a label (repeat; instead of --from-folder)")
    ] = None,
    description: Annotated[str, typer.Option(help="free text stored with the label set")] = "",
    batch_size: Annotated[
        int, typer.Option(min=1, max=256, help="support images per request")
    ] = DEFAULT_BATCH,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Create a label set: from a folder of class folders (uploads its images), or from --label values."""
    if (from_folder is None) == (not label):
        typer.echo("give exactly one of --from-folder or --label", err=True)
        raise typer.Exit(2)
    folder = None
    if from_folder is not None:
        try:
            folder = read_class_folder(from_folder)
        except ClassFolderError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if folder.skipped:
            typer.echo(f"skipped {len(folder.skipped)} entries that are not class-folder images", err=True)
    labels = folder.labels if folder is not None else list(label or [])
    with _client(server, api_key) as client:
        created = client.create_label_set(label_set, labels, description=description)
        counts = {c["label"]: c["support_images"] for c in created["classes"]}
        if folder is not None:
            counts = _upload_support(client, label_set, folder.images, batch_size)
        _echo_json({"id": label_set, "labels": labels, "support_images": counts})


def _upload_support(
    client: TrustServeClient, label_set: str, images: dict[str, list[Path]], batch_size: int
) -> dict[str, int]:
    counts: dict[str, int] = {}
    total = sum(len(paths) for paths in images.values())
    with tqdm(total=total, unit="image", desc=f"support images → {label_set}", dynamic_ncols=True) as bar:
        for label, paths in images.items():
            for start in range(0, len(paths), batch_size):
                batch = paths[start : start + batch_size]
                bar.set_postfix_str(label, refresh=False)
                try:
                    answer = client.add_support_images(label_set, label, batch)
                except TrustServeError as exc:
                    bar.close()
                    typer.echo(
                        f"label set {label_set!r} was created; {bar.n} of {total} images were uploaded "
                        f"before the server refused {str(batch[0])!r}…:",
                        err=True,
                    )
                    raise exc
                counts = answer["support_counts"]
                bar.update(len(batch))
    return counts


@label_sets_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="the server's JSON answer")] = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """List the label sets (and stored ones the server could not load)."""
    with _client(server, api_key) as client:
        listing = client.list_label_sets()
    if as_json:
        _echo_json(listing)
        return
    typer.echo(f"{'id':<24} {'classes':>7} {'with images':>11} {'score':<14} {'calibrated':<10} version")
    for ls in listing["label_sets"]:
        calibrated = "yes" if ls["calibrated"] else "no"
        typer.echo(
            f"{ls['id']:<24} {ls['classes']:>7} {ls['classes_with_prototypes']:>11} "
            f"{ls['trust_score']:<14} {calibrated:<10} {ls['version']}"
        )
    for bad in listing.get("unavailable", []):
        typer.echo(f"{bad['id']:<24} unavailable: {bad['reason']}")


@label_sets_app.command("export")
def export_command(
    label_set: Annotated[str, typer.Argument(help="label-set id")],
    out: Annotated[Path | None, typer.Option("--out", help="archive to write (default: ID.tar.gz)")] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Download a label set as a .tar.gz archive (written atomically: no half-written file on failure)."""
    target = out or Path(f"{label_set}.tar.gz")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as tmp,
            _client(server, api_key) as client,
            byte_progress(f"export {label_set}") as progress,
        ):
            written = client.download_export(label_set, tmp, progress=progress)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    typer.echo(f"wrote {target} ({written} bytes)", err=True)


@label_sets_app.command("import")
def import_command(
    archive: Annotated[Path, typer.Argument(help="an archive written by `label-sets export`")],
    new_id: Annotated[str | None, typer.Option("--id", help="import under this id")] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Upload an exported archive as a new label set."""
    try:
        data = archive.read_bytes()
    except OSError as exc:
        typer.echo(f"error: cannot read {str(archive)!r}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    with _client(server, api_key) as client, byte_progress(f"import {archive.name}", len(data)) as progress:
        imported = client.import_label_set(data, new_id, progress=progress)
    counts = {c["label"]: c["support_images"] for c in imported["classes"]}
    _echo_json({"id": imported["id"], "version": imported["version"], "support_images": counts,
                "calibrated": imported["calibrated"]})  # fmt: skip


@label_sets_app.command("delete")
def delete_command(
    label_set: Annotated[str, typer.Argument(help="label-set id")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Delete a label set (asks first; export it before if you may want it back)."""
    if not yes:
        typer.confirm(f"delete label set {label_set!r} on {server}?", abort=True)
    with _client(server, api_key) as client:
        client.delete_label_set(label_set)
    typer.echo(f"deleted {label_set}", err=True)
