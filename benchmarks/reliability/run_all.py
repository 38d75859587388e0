"""The full reliability run in one command, and the figures table of docs/RELIABILITY.md.

    python -m benchmarks.reliability.run_all            # full: corpus x5 over HTTP, fuzz, soak, 20 kills
    python -m benchmarks.reliability.run_all --quick    # what CI runs (the default test selection)

It runs tests/reliability with ``TRUSTSERVE_FULL_RELIABILITY=1`` (or not, with --quick), collects the
figures each part writes to ``TRUSTSERVE_RELIABILITY_REPORT``, and prints them as a Markdown table.
Everything runs on loopback against the tiny random-weight model; every part stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_suite(report: Path, *, full: bool, extra: list[str]) -> int:
    env = {**os.environ, "TRUSTSERVE_RELIABILITY_REPORT": str(report), "HF_HUB_OFFLINE": "1"}
    if full:
        env["TRUSTSERVE_FULL_RELIABILITY"] = "1"
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-p", "no:cacheprovider", "-q",
               "-rxXfE", "--timeout", "3600", *extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    return subprocess.call(command, cwd=REPO, env=env)


def _load(report: Path, name: str) -> dict[str, Any]:
    path = report / name
    return json.loads(path.read_text()) if path.exists() else {}


def figures_table(report: Path) -> str:
    corpus, fuzz, load, crash = (_load(report, f"{n}.json") for n in ("corpus", "fuzz", "load", "crash"))
    rows: list[tuple[str, str, str]] = []
    for where in ("in_process", "live_server"):
        c = corpus.get(where)
        if c:
            if where == "in_process":
                label, followups = "in-process, last of 3 replays of the cheap half", ""
            else:
                label = f"live server over HTTP, {c['rounds']} rounds"
                followups = f", next normal request OK {c['followups_ok']}/{c['cases']}"
            rows.append((
                f"Hostile-input corpus ({label})",
                f"{c['cases']} requests over {c['endpoints']} operations",
                f"4xx {c['answered_4xx']}, 2xx {c['answered_2xx']} (odd but valid), 5xx {c['answered_5xx']}, "
                f"no answer {c['no_answer']}, failed checks {c['failed']}{followups}; "
                f"RSS {c['rss_mb'][0]} → {c['rss_mb'][-1]} MB",
            ))  # fmt: skip
    if fuzz:
        total = sum(fuzz["examples"].values())
        rows.append((
            "Schema fuzzing (schemathesis, live server)",
            f"{total} generated requests over {fuzz['operations']} operations "
            f"(max {fuzz['max_examples']} each)",
            f"failing examples {sum(fuzz.get('failed_examples', {}).values())} "
            f"(operations: {sorted(fuzz.get('failed_examples', {})) or 'none'}); checks: not_a_server_error, "
            "response_schema_conformance, content_type_conformance",
        ))  # fmt: skip
    for name, title in (("at_capacity", "Soak at capacity (8 clients)"),
                        ("above_capacity", "Load above capacity (64 clients x 8 images)")):  # fmt: skip
        s = load.get(name)
        if s:
            extra = f", RSS growth {s['rss_growth_mb']} MB" if "rss_growth_mb" in s else ""
            rows.append((
                title,
                f"{s['requests']} requests in {s['seconds']} s ({s['requests_per_s']}/s)",
                f"statuses {s['statuses']}, transport errors {s['transport_errors']}; accepted p50 "
                f"{s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms; "
                f"peak RSS {s['peak_rss_mb']} MB{extra}",
            ))  # fmt: skip
    if crash:
        rows.append((
            "Crash consistency (SIGKILL during label-set writes)",
            f"{crash['trials']} kills, {crash['writes_acknowledged']} acknowledged writes, "
            f"{crash['label_sets_total']} label sets",
            f"survived {crash['survived']}/{crash['trials']} (old-or-new version, checksums, restart); "
            f"kills with writes in flight: {crash['kills_with_writes_in_flight']}; creations killed before "
            f"their first commit, reported unavailable: {crash.get('uncommitted_creations_reported', 0)}",
        ))  # fmt: skip
    lines = ["| Part | Tried | Result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the CI-sized version")
    parser.add_argument("--report-dir", type=Path, default=None, help="keep the JSON figures here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k corpus)")
    args = parser.parse_args()
    report = args.report_dir or Path(tempfile.mkdtemp(prefix="trustserve-reliability-"))
    started = time.monotonic()
    code = run_suite(report, full=not args.quick, extra=args.pytest_args)
    print(f"\nreliability run ({'quick' if args.quick else 'full'}) took {time.monotonic() - started:.0f} s; "
          f"pytest exit code {code}; figures in {report}\n")  # fmt: skip
    print(figures_table(report))
    sys.exit(code)


if __name__ == "__main__":
    main()
