"""``trustserve label-sets ...`` (create --from-folder, list, export, import, delete) against a real server
process on the tiny model, with API keys on: the commands as mounted in ``app.cli``, over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.labelsets.conftest import colour_image
from tests.support.live_server import REPO_ROOT, LiveServer, free_port, tiny_server
from tests.support.uploads import write_class_folders

COLOURS = ["blue", "green", "red"]
READ_KEY, ADMIN_KEY = "cli-read-key-51ab", "cli-admin-key-0f3e"


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("remote-cli")
    env = {"TRUSTSERVE_API_KEYS": f"{READ_KEY}:read,{ADMIN_KEY}:admin"}
    with tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log", env=env) as srv:
        yield srv


def class_folders(root: Path, per_class: int, seed: int) -> Path:
    extras = {"README.txt": "not a class folder", "red/notes.md": "not an image"}
    return write_class_folders(root, COLOURS, per_class, seed, colour_image, extras)


def run(server: LiveServer, *args: str, key: str | None = ADMIN_KEY, stdin: str | None = None):  # type: ignore[no-untyped-def]
    options = ["--server", server.url, *(["--api-key", key] if key else [])]
    return CliRunner().invoke(cli, ["label-sets", *args, *options], input=stdin)


def get(server: LiveServer, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {READ_KEY}"}, timeout=30)


def test_create_from_a_folder_uploads_every_class_with_a_progress_bar(
    server: LiveServer, tmp_path: Path
) -> None:
    folder = class_folders(tmp_path / "support", per_class=5, seed=0)
    result = run(server, "create", "colours", "--from-folder", str(folder), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == {"id": "colours", "labels": COLOURS, "support_images": dict.fromkeys(COLOURS, 5)}
    assert "skipped 2 entries" in result.stderr
    assert "support images → colours" in result.stderr and "15/15" in result.stderr  # tqdm's bar

    stored = get(server, "/v1/label-sets/colours").json()
    assert stored["labels"] == COLOURS
    assert {
        c["label"]: (c["support_images"], c["has_prototype"]) for c in stored["classes"]
    } == dict.fromkeys(COLOURS, (5, True))


def test_created_from_a_folder_calibrated_then_classify_decides(server: LiveServer, tmp_path: Path) -> None:
    """The README's flow on the command line: create from a folder, calibrate, classify with a decision."""
    assert (
        run(server, "create", "shades", "--from-folder", str(class_folders(tmp_path / "s", 3, 7))).exit_code
        == 0
    )
    calibration = class_folders(tmp_path / "calibration", per_class=10, seed=1000)
    result = CliRunner().invoke(
        cli,
        ["calibrate", "shades", str(calibration), "--target-coverage", "0.8", "--server", server.url,
         "--api-key", ADMIN_KEY],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["n"] == 30
    assert "encode as PNG" in result.stderr and "30/30" in result.stderr  # tqdm's bars: images, then bytes
    assert "upload → shades" in result.stderr and "the server is calibrating" in result.stderr
    refused = CliRunner().invoke(
        cli,
        ["calibrate", "nope", str(calibration), "--target-coverage", "0.8", "--server", server.url,
         "--api-key", ADMIN_KEY],
    )  # fmt: skip
    assert refused.exit_code == 1 and "calibration failed: " in refused.stderr and "nope" in refused.stderr

    image = tmp_path / "probe.png"
    colour_image("green", 4242).save(image)
    answer = httpx.post(
        f"{server.url}/v1/classify",
        files={"image": ("probe.png", image.read_bytes(), "image/png")},
        data={"label_set": "shades"},
        headers={"Authorization": f"Bearer {READ_KEY}"},
        timeout=60,
    ).json()["results"][0]
    assert answer["decision"]["calibrated"] is True and answer["decision"]["accept"] in (True, False)


def test_list_export_import_delete_round_trip(server: LiveServer, tmp_path: Path) -> None:
    assert run(server, "create", "trip", "--label", "cat", "--label", "dog").exit_code == 0

    listed = run(server, "list", key=READ_KEY)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith("trip "))
    assert row.split()[:5] == ["trip", "2", "0", "trustvlm", "no"]
    as_json = json.loads(run(server, "list", "--json", key=READ_KEY).stdout)
    assert "trip" in {ls["id"] for ls in as_json["label_sets"]}

    archive = tmp_path / "out" / "trip.tar.gz"
    archive.parent.mkdir()
    exported = run(server, "export", "trip", "--out", str(archive), key=READ_KEY)
    assert exported.exit_code == 0, exported.output
    assert archive.read_bytes() == get(server, "/v1/label-sets/trip/export").content
    assert f"wrote {archive}" in exported.stderr and "export trip" in exported.stderr
    assert [p.name for p in archive.parent.iterdir()] == ["trip.tar.gz"]  # no temporary file left

    imported = run(server, "import", str(archive), "--id", "trip-copy")
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["support_images"] == {"cat": 0, "dog": 0}
    assert "import trip.tar.gz" in imported.stderr
    assert get(server, "/v1/label-sets/trip-copy").json()["labels"] == ["cat", "dog"]

    kept = run(server, "delete", "trip-copy", stdin="n\n")
    assert kept.exit_code == 1 and "Aborted" in kept.output
    assert get(server, "/v1/label-sets/trip-copy").status_code == 200
    deleted = run(server, "delete", "trip-copy", stdin="y\n")
    assert deleted.exit_code == 0, deleted.output
    assert get(server, "/v1/label-sets/trip-copy").status_code == 404
    assert run(server, "delete", "trip", "--yes").exit_code == 0
    assert get(server, "/v1/label-sets/trip").status_code == 404


def test_refusals_are_the_servers_messages(server: LiveServer, tmp_path: Path) -> None:
    folder = class_folders(tmp_path / "f", per_class=1, seed=3)
    read_only = run(server, "create", "nope", "--from-folder", str(folder), key=READ_KEY)
    assert read_only.exit_code == 1 and "error: 403" in read_only.stderr
    no_key = run(server, "list", key=None)
    assert no_key.exit_code == 1 and "error: 401" in no_key.stderr
    missing = run(server, "export", "no-such-set", "--out", str(tmp_path / "x.tar.gz"))
    assert missing.exit_code == 1 and "404" in missing.stderr and not (tmp_path / "x.tar.gz").exists()
    assert list(tmp_path.glob(".x.tar.gz.*")) == []  # the temporary file is gone too
    both = run(server, "create", "x", "--from-folder", str(folder), "--label", "a")
    assert both.exit_code == 2 and "exactly one" in both.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no class folders" in run(server, "create", "x", "--from-folder", str(empty)).stderr
    bad_archive = tmp_path / "bad.tar.gz"
    bad_archive.write_bytes(b"not an archive")
    refused = run(server, "import", str(bad_archive))
    assert refused.exit_code == 1 and "error: 4" in refused.stderr
    unreachable = CliRunner().invoke(
        cli, ["label-sets", "list", "--server", f"http://127.0.0.1:{free_port()}"]
    )
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.stderr
    log = server.log_tail(10**7)
    assert READ_KEY not in log and ADMIN_KEY not in log


def test_the_installed_entry_point_shows_the_progress_bar(server: LiveServer, tmp_path: Path) -> None:
    """``python -m app.cli`` as a separate process (the key from the environment, not the command line)."""
    folder = class_folders(tmp_path / "support", per_class=2, seed=11)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "label-sets", "create", "proc", "--from-folder", str(folder),
         "--server", server.url],
        cwd=REPO_ROOT, env={**os.environ, "TRUSTSERVE_API_KEY": ADMIN_KEY},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "6/6" in done.stderr and json.loads(done.stdout)["support_images"] == dict.fromkeys(COLOURS, 2)
