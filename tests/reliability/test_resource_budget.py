"""The resource budget of docs/RELIABILITY.md, checked against the hostile requests of the security review
(issue 12): each one is sent as it was found to a real server process (tiny model, uvicorn) whose address
space is capped, and must get a 4xx (or a bounded 200) within the budget's peak memory, while another
client keeps being answered. ``benchmarks/reliability/hostile.py`` prints the same figures as a table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.client import TrustServeClient, TrustServeError
from tests.reliability import attacks, hostile
from tests.reliability.budget import AttackResult, MeasuredServer
from tests.reliability.conftest import LIVE_ADMIN_KEY

SINGLE_REQUEST_MB = 300  # peak RSS growth of any single request within the body limit
MANY_MAXIMAL_IMAGES_MB = 1536  # a request of maximal images (as many as the pixel budget admits)
PROBE_MAX_S = 5.0  # another client's classify or /readyz during an attack (shared 2-core box: slack)
ATTACK_MAX_S = 10.0  # a refused hostile request is refused at once, not after the work
QUEUE = 32  # the live server's TRUSTSERVE_MAX_QUEUE_SIZE


@pytest.fixture(scope="module")
def server(live_server) -> MeasuredServer:  # type: ignore[no-untyped-def]
    """The reliability suite's live server (tiny model, queue of 32, 2 s body timeout, admin key), its
    address space capped from now on."""
    return MeasuredServer(live_server, headers={"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}).attach()


@pytest.fixture(scope="module")
def prepared(server: MeasuredServer, tmp_path_factory: pytest.TempPathFactory) -> attacks.Prepared:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        return attacks.prepare(client, tmp_path_factory.mktemp("fifo"))


def within_budget(result: AttackResult, allowed: set[str], budget_mb: float = SINGLE_REQUEST_MB) -> None:
    """Alive, only the expected statuses, peak memory within budget, and the probe client served."""
    assert result.alive, f"{result.name}: the server died"
    assert set(result.statuses) <= allowed, f"{result.name}: {result.statuses}"
    assert result.peak_growth_mb <= budget_mb, f"{result.name}: peak RSS +{result.peak_growth_mb} MB"
    assert result.probes_ok >= 1 and not result.probes_failed, f"{result.name}: probe {result.probes_failed}"
    assert result.probe_max_s <= PROBE_MAX_S, f"{result.name}: probe waited {result.probe_max_s} s"


# 1, 2 ----------------------------------------------------------------------------------------------
def test_import_manifest_cannot_name_a_host_file(server: MeasuredServer, prepared: attacks.Prepared) -> None:
    paths = ["/dev/zero", str(prepared.fifo), "/tmp", "/etc/hostname", "/no/such/file"]

    def run(client: httpx.Client) -> Iterator[int | str]:
        for path in paths:
            yield from attacks.import_host_path(prepared, path)(client)

    result = server.attack("import naming host files", run, timeout_s=20)
    within_budget(result, {"422"})
    assert sum(result.statuses.values()) == len(paths)
    assert result.seconds < ATTACK_MAX_S


def test_import_errors_do_not_tell_whether_a_host_file_exists(prepared: attacks.Prepared, server) -> None:  # type: ignore[no-untyped-def]
    messages = set()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=20) as client:
        for path in ("/etc/hostname", "/no/such/file", "/etc"):
            body = hostile.rewrite_manifest(prepared.archive, hostile.point_file_at(path))
            r = client.post("/v1/label-sets/import", content=body, headers=attacks.GZIP)
            messages.add(r.json()["error"]["message"].replace(path, "<path>"))
    assert len(messages) == 1, messages


def test_sparse_tar_member_is_refused_before_it_is_read(server: MeasuredServer) -> None:
    assert len(hostile.sparse_tar_gz("victim/v00000001.arrays.safetensors")) < 200
    result = server.attack("sparse member", attacks.sparse_member)
    within_budget(result, {"422"}, budget_mb=64)
    assert result.seconds < ATTACK_MAX_S


# 3 ---------------------------------------------------------------------------------------------------
def test_audio_at_absurd_rates_or_lengths_is_refused(server: MeasuredServer) -> None:
    def run(client: httpx.Client) -> Iterator[int]:
        yield from attacks.audio_1hz(client)
        yield attacks._predict_media(client, hostile.silent_flac(seconds=120), "a.flac")

    result = server.attack("audio", run)
    within_budget(result, {"422"}, budget_mb=64)
    assert result.seconds < ATTACK_MAX_S


def test_audio_limits_leave_real_audio_alone_and_errors_show_no_object_address(
    server: MeasuredServer,
) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        ok = attacks._predict_media(client, hostile.silent_flac(channels=8, seconds=2), "eight.flac")
        files = [
            ("image", ("i.png", hostile.small_png(), "image/png")),
            ("audio", ("a.wav", b"RIFFjunk", "x")),
        ]
        bad = client.post("/v1/multimodal/rel-media/predict", files=files)
    assert ok == 200
    assert bad.status_code == 422
    assert "object at 0x" not in bad.text and "BytesIO" not in bad.text


# 4 ---------------------------------------------------------------------------------------------------
def test_text_encoding_flood_is_refused_before_any_encoding(server: MeasuredServer) -> None:
    def run(client: httpx.Client) -> Iterator[int]:
        yield from attacks.text_flood(client)
        yield from attacks.label_set_prompt_flood(client)

    result = server.attack("text flood", run)
    within_budget(result, {"422"})
    assert result.seconds < ATTACK_MAX_S


def test_new_prompts_up_to_the_limit_are_served_while_others_are(server: MeasuredServer) -> None:
    def run(client: httpx.Client) -> Iterator[int]:
        body = hostile.text_flood(labels=60, templates=1)  # 60 new prompts (the limit is 64)
        yield client.post("/v1/classify", json=body).status_code

    within_budget(server.attack("60 new prompts", run), {"200"})


# 5 ---------------------------------------------------------------------------------------------------
def test_many_giant_images_are_refused_from_their_headers(server: MeasuredServer) -> None:
    def run(client: httpx.Client) -> Iterator[int]:
        yield from attacks.giant_pngs(16)(client)
        yield from attacks.giant_support_pngs(16)(client)

    result = server.attack("16 PNGs of 6324²", run)
    within_budget(result, {"413"}, budget_mb=64)
    assert result.seconds < ATTACK_MAX_S


def test_maximal_images_within_the_pixel_budget_stay_within_the_memory_budget(server: MeasuredServer) -> None:
    result = server.attack("3 RGBA PNGs of 6324²", attacks.giant_pngs(3, alpha=True), timeout_s=120)
    within_budget(result, {"200"}, budget_mb=MANY_MAXIMAL_IMAGES_MB)
    assert result.retained_mb < 200, f"still held after the request: {result.retained_mb} MB"


def test_large_jpegs_decode_at_draft_size(server: MeasuredServer) -> None:
    result = server.attack("8 JPEGs of 6000²", attacks.giant_jpegs(8), timeout_s=120)
    within_budget(result, {"200"})


# 6 ---------------------------------------------------------------------------------------------------
def test_slow_bodies_hold_no_admission_slot_and_are_cut_off(server: MeasuredServer) -> None:
    result = server.attack("slow bodies", attacks.slow_bodies(QUEUE + 8, seconds=3.0), timeout_s=30)
    within_budget(result, {"200", "slow:408"}, budget_mb=64)
    assert result.statuses.get("slow:408", 0) == QUEUE + 8, result.statuses


# 7, 8 -------------------------------------------------------------------------------------------------
def test_path_hostile_labels_and_format_templates_are_refused(server: MeasuredServer) -> None:
    def run(client: httpx.Client) -> Iterator[int]:
        yield from attacks.hostile_labels(client)
        yield from attacks.hostile_templates(client)

    result = server.attack("labels and templates", run)
    within_budget(result, {"422"})


def test_client_cannot_be_steered_to_another_label_set(
    server: MeasuredServer, prepared: attacks.Prepared
) -> None:
    with TrustServeClient(server.url, api_key=LIVE_ADMIN_KEY) as ts:
        for label in ("../../victim", "..", ".", "../victim/classes/cat", "cat?x"):
            with pytest.raises(TrustServeError) as err:
                ts.remove_class("lbls", label)
            assert err.value.status in (404, 422), (label, err.value)
        assert ts.get_label_set("victim")["labels"] == ["cat", "dog"]
        assert ts.get_label_set("lbls")["labels"] == ["cat", "dog", "bird"]


# 9 ---------------------------------------------------------------------------------------------------
def test_unknown_ids_and_long_paths_leave_no_state_and_short_logs(server: MeasuredServer) -> None:
    log = Path(server.server.log_path)  # type: ignore[arg-type]
    before = log.stat().st_size

    def run(client: httpx.Client) -> Iterator[int]:
        yield from attacks.unknown_id_flood(120)(client)
        yield from attacks.long_path_flood(30)(client)

    result = server.attack("120 unknown 60 KB ids + 30 long paths", run, timeout_s=120)
    within_budget(result, {"404"}, budget_mb=64)
    assert result.retained_mb < 8, f"{result.retained_mb} MB kept after 120 unknown ids (60 KB each)"
    assert (log.stat().st_size - before) / 150 < 1024, "more than 1 kB of log per request"


def test_deleting_a_label_set_drops_its_metric_series(server: MeasuredServer) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        assert (
            client.post("/v1/label-sets", json={"id": "short-lived", "labels": ["a", "b"]}).status_code == 201
        )
        files = [("image", ("p.png", hostile.small_png(), "image/png"))]
        assert client.post("/v1/classify", files=files, data={"label_set": "short-lived"}).status_code == 200
        assert 'label_set="short-lived"' in client.get("/metrics").text
        assert client.delete("/v1/label-sets/short-lived").status_code == 204
        assert 'label_set="short-lived"' not in client.get("/metrics").text


# 10 --------------------------------------------------------------------------------------------------
def test_import_runs_the_validation_of_create(server: MeasuredServer, prepared: attacks.Prepared) -> None:
    variants = attacks.import_variants(prepared)
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        for i, (name, body) in enumerate(variants.items()):
            r = client.post(f"/v1/label-sets/import?id=bad-{i}", content=body, headers=attacks.GZIP)
            assert r.status_code == 422, (name, r.status_code, r.text[:300])
            assert len(r.content) < 2048, (name, len(r.content))
        good = client.post(
            "/v1/label-sets/import?id=good-copy", content=prepared.archive, headers=attacks.GZIP
        )
        assert good.status_code == 201, good.text
    result = server.attack("import variants", attacks.import_invalid(prepared))
    within_budget(result, {"422"})


# general rule: JSON bodies are bounded by their element count before they are parsed -------------------
def test_json_element_flood_is_refused_before_parsing(server: MeasuredServer) -> None:
    result = server.attack("30 MB of JSON objects", attacks.json_element_flood)
    within_budget(result, {"413"}, budget_mb=96)
