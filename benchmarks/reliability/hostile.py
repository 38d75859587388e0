"""The hostile requests of the security review (issue 12), measured against a real server process:
peak RSS growth, memory still held after, wall time, status codes, and whether a probe client was answered
meanwhile. Prints the before/after table of docs/RELIABILITY.md ("Resource budget").

    python -m benchmarks.reliability.hostile                      # this tree, tiny model
    python -m benchmarks.reliability.hostile --code /work/main    # another checkout ("before")
    python -m benchmarks.reliability.hostile --model offline-conse --only text_flood
    python -m benchmarks.reliability.hostile --fresh --json out.json

The server runs from ``--code`` (its ``app`` and ``tests/support``), started from a scratch folder so that
nothing else is imported; its address space is capped at its ready-time virtual size + ``--headroom-gb``
(RLIMIT_AS), so an unbounded attack fails at the cap instead of exhausting the machine. ``--fresh`` starts
a new server for every attack (needed for code that an attack wedges or kills).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.reliability import attacks  # noqa: E402
from tests.reliability.budget import AttackResult, MeasuredServer  # noqa: E402
from tests.reliability.multimodal_models import write_multimodal_dir  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.tiny_model import write_tiny_models_dir  # noqa: E402

SERVER_ENV = {  # default settings otherwise (max_queue_size 256: the slow-body attack opens 260)
    "TRUSTSERVE_LOG_JSON": "true",
    "OMP_NUM_THREADS": "1",
}
# settings this tree added (ignored by older code: unknown TRUSTSERVE_* variables are not read)
NEW_SETTINGS_ENV = {"TRUSTSERVE_BODY_TIMEOUT_S": "2"}


def _attacks(prepared: attacks.Prepared) -> list[tuple[str, str, Callable, float]]:
    """(name, issue item, run, client timeout s)."""
    return [
        ("import_dev_zero", "1", attacks.import_host_path(prepared, "/dev/zero"), 120),
        ("import_fifo", "1", attacks.import_host_path(prepared, str(prepared.fifo)), 20),
        ("import_directory", "1", attacks.import_host_path(prepared, "/tmp"), 20),
        ("import_host_file", "1", attacks.import_host_path(prepared, "/etc/hostname"), 20),
        ("sparse_member_2gb", "2", attacks.sparse_member, 120),
        ("audio_1hz_wav", "3", attacks.audio_1hz, 120),
        ("audio_8ch_silent_flac", "3", attacks.audio_8ch_flac, 120),
        ("text_flood_1000x32", "4", attacks.text_flood, 300),
        ("label_set_20000x32", "4", attacks.label_set_prompt_flood, 300),
        ("longest_new_prompts_21x3", "budget", attacks.longest_new_prompts(21), 300),
        ("classify_64_images", "budget", attacks.many_images(64), 300),
        ("png_rgba_6324sq_x1", "5", attacks.giant_pngs(1, alpha=True), 300),
        ("png_6324sq_x3", "5", attacks.giant_pngs(3), 300),
        ("png_rgba_6324sq_x3", "5", attacks.giant_pngs(3, alpha=True), 300),
        ("png_6324sq_x16", "5", attacks.giant_pngs(16), 300),
        ("png_6324sq_x32", "5", attacks.giant_pngs(32), 300),
        ("jpeg_6000sq_x8", "5", attacks.giant_jpegs(8), 300),
        ("support_png_6324sq_x16", "5", attacks.giant_support_pngs(16), 300),
        ("slow_bodies_260", "6", attacks.slow_bodies(260, 8), 120),
        ("hostile_labels", "7", attacks.hostile_labels, 60),
        ("hostile_templates", "8", attacks.hostile_templates, 60),
        ("unknown_ids_2000x60kb", "9", attacks.unknown_id_flood(2000), 60),
        ("long_paths_300x65kb", "9", attacks.long_path_flood(300), 60),
        ("import_invalid_variants", "10", attacks.import_invalid(prepared), 120),
        ("json_element_flood_30mb", "gen", attacks.json_element_flood, 120),
    ]


def _server(code: Path, model: str, root: Path, log: Path) -> LiveServer:
    env = {
        **SERVER_ENV,
        **NEW_SETTINGS_ENV,
        "PYTHONPATH": str(code),
        "TRUSTSERVE_STORE_DIR": str(root / "store"),
        "TRUSTSERVE_MULTIMODAL_DIR": str(write_multimodal_dir(root / "multimodal")),
    }
    if model == "tiny":
        models = write_tiny_models_dir(root / "models")
        command = [sys.executable, "-m", "tests.support.serve_tiny", "--models-dir", str(models)]
    else:
        env["TRUSTSERVE_MODEL"] = model
        command = [sys.executable, "-m", "app.cli", "serve"]
    return LiveServer(command, env=env, log_path=log, cwd=root)


def _log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def run(args: argparse.Namespace) -> list[dict]:
    import httpx

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        root = Path(tmp)
        log = root / "server.log"
        server: MeasuredServer | None = None
        prepared: attacks.Prepared | None = None
        count = len(_attacks(attacks.Prepared(b"", root / "fifo")))
        for index in range(count):
            if server is None or not server.alive() or args.fresh:
                if server is not None:
                    server.stop()
                    shutil.rmtree(root / "store", ignore_errors=True)
                live = _server(args.code, args.model, root, log)
                server = MeasuredServer(live, headroom_bytes=int(args.headroom_gb * 2**30)).start()
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    prepared = attacks.prepare(client, root, build_payloads=True)
            assert prepared is not None
            name, item, fn, timeout = _attacks(prepared)[index]
            if args.only and name not in args.only:
                continue
            log_before = _log_size(log)
            result: AttackResult = server.attack(name, fn, timeout_s=timeout)
            row = {
                "item": item,
                **result.row(),
                "log_growth_kb": round((_log_size(log) - log_before) / 1024, 1),
            }
            row["load_average"] = os.getloadavg()
            rows.append(row)
            print(json.dumps(row), flush=True)
        if server is not None:
            server.stop()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| # | attack | statuses | s | peak RSS +MB | held after MB | probes ok / failed | probe max s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        failed = len(r["probes_failed"])
        alive = "" if r["alive"] else " **server died**"
        lines.append(
            f"| {r['item']} | {r['name']} | {r['statuses']}{alive} | {r['seconds']} | "
            f"{r['peak_growth_mb']} | {r['retained_mb']} | {r['probes_ok']} / {failed} | {r['probe_max_s']} |"
        )
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    statuses = ", ".join(f"{n}× {k}" for k, n in sorted(r["statuses"].items()))
    failed = len(r["probes_failed"])
    died = "; **server died**" if not r["alive"] else ""
    peak = "n/a" if r["peak_growth_mb"] != r["peak_growth_mb"] else f"{r['peak_growth_mb']:+.0f} MB"
    held = "" if r["retained_mb"] != r["retained_mb"] else f" (held {r['retained_mb']:+.0f})"
    probes = f"probes {r['probes_ok']} ok / {failed} failed, max {r['probe_max_s']} s"
    return f"{statuses}{died}; {r['seconds']} s; peak RSS {peak}{held}; {probes}"


def compare(before: list[dict], after: list[dict]) -> str:
    """A Markdown table of the same attacks against two checkouts."""
    old = {r["name"]: r for r in before}
    lines = ["| # | request | before | after |", "|---|---|---|---|"]
    for r in after:
        lines.append(f"| {r['item']} | `{r['name']}` | {_cell(old.get(r['name']))} | {_cell(r)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose app/ the server runs")
    parser.add_argument("--model", default="tiny", help="tiny (test model) or a preset, e.g. offline-conse")
    parser.add_argument("--only", nargs="*", help="attack names")
    parser.add_argument("--fresh", action="store_true", help="a new server for every attack")
    parser.add_argument("--headroom-gb", type=float, default=4.0, help="RLIMIT_AS above the ready VmSize")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="two --json files")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        print(compare(before, after))
        return
    print(f"code {args.code}, model {args.model}, load average {os.getloadavg()}", flush=True)
    rows = run(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
