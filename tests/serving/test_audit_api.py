"""The auditor's API on the real app: real inspections go in through /v1/inspections, then are
found, shown with their frame, exported, verified and disposed of through /v1/audit."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.serving.conftest import SINGLE, auth


def png(brightness: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(brightness, 3, (32, 32)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def inspect(client: TestClient, keys: dict[str, str], part_id: str, brightness: int) -> dict[str, Any]:
    resp = client.post(
        "/v1/inspections",
        params={"station": SINGLE, "camera": "cam", "part_id": part_id},
        content=png(brightness, seed=len(part_id) + brightness),
        headers={**auth(keys, "line"), "Content-Type": "image/png"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def inspected(client: TestClient, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    plan = {"A1": 250, "A2": 5, "B1": 250, "B2": 5, "C1": 250}
    return {part: inspect(client, keys, part, b) for part, b in plan.items()}


def test_list_filters_by_part_and_decision(client: TestClient, keys: dict[str, str], inspected: dict[str, Any]) -> None:
    h = auth(keys, "auditor")
    rejects = client.get("/v1/audit/records", params={"decision": "reject", "kind": "inspection"}, headers=h).json()
    expected = sorted(p for p, r in inspected.items() if r["decision"] == "reject")
    assert expected == ["A2", "B2"]
    assert sorted(r["part_id"] for r in rejects["records"]) == expected
    one = client.get("/v1/audit/records", params={"part_id": "B1", "kind": "inspection"}, headers=h).json()["records"]
    assert [(r["inspection_id"], r["decision"]) for r in one] == [(inspected["B1"]["inspection_id"], "pass")]


def test_every_decision_says_in_words_what_decided_with_one_model_notation(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    page = client.get("/v1/audit/records", params={"kind": "inspection", "order": "asc"}, headers=h).json()
    assert page["total"] == 5
    by_part = {r["part_id"]: r for r in page["records"]}
    reject, passed = by_part["A2"], by_part["A1"]
    threshold = f"{inspected['A2']['threshold']:.3f}"
    assert reject["summary"] == f"P(defect) {inspected['A2']['score']:.3f} ≥ threshold {threshold} → reject"
    assert passed["summary"].startswith("P(defect)") and passed["summary"].endswith("→ pass")
    assert " < threshold " in passed["summary"]
    assert passed["defect_class"] is None and reject["defect_class"]  # a pass names no defect
    assert reject["model"] == inspected["A2"]["model_version"] == "tiny/v1"
    # the filter takes the notation every answer uses (and the older ones)
    for value in ("tiny/v1", "tiny@v1", "v1"):
        got = client.get("/v1/audit/records", params={"kind": "inspection", "model_version": value}, headers=h).json()
        assert got["total"] == 5, value
    none = client.get("/v1/audit/records", params={"kind": "inspection", "model_version": "other/v1"}, headers=h)
    assert none.json()["total"] == 0
    clash = client.get("/v1/audit/records", params={"model_version": "tiny/v1", "model_name": "other"}, headers=h)
    assert clash.status_code in (400, 422) and "names model 'tiny'" in clash.json()["detail"]
    part = client.get("/v1/audit/records", params={"kind": "part", "part_id": "A2"}, headers=h).json()["records"][0]
    assert part["summary"] == "part reject: rejected by cam (1 of 1 views)"
    # the old raw forms are gone from what the page shows
    assert "@" not in (reject["model"] or "") and "0.5962327718734741" not in reject["summary"]


def test_a_disposition_is_not_a_rejected_part_and_overrides_are_marked(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    target = inspected["A1"]["inspection_id"]  # a pass, overridden to reject
    r = client.post(f"/v1/audit/records/{target}/dispositions", json={"action": "override", "decision": "reject",
                                                                       "note": "scratch seen at the bench"}, headers=h)
    assert r.status_code in (200, 201), r.text
    rejects = client.get("/v1/audit/records", params={"decision": "reject"}, headers=h).json()
    assert {x["kind"] for x in rejects["records"]} <= {"inspection", "part"}
    assert rejects["total"] == len(rejects["records"]) == 4  # A2 and B2: their frames and their parts
    overrides = client.get("/v1/audit/records", params={"decision": "reject", "kind": "disposition"}, headers=h)
    assert [x["ref"] for x in overrides.json()["records"]] == [target]
    detail = client.get(f"/v1/audit/records/{target}", headers=h).json()
    assert [(x["kind"], x["data"]["action"]) for x in detail["related"]] == [("disposition", "override")]


def test_cursor_pagination_walks_every_record_once(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    seqs: list[int] = []
    params: dict[str, Any] = {"limit": 2, "kind": "inspection"}
    while True:
        page = client.get("/v1/audit/records", params=params, headers=h).json()
        seqs += [r["seq"] for r in page["records"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(seqs) == 5 and seqs == sorted(seqs, reverse=True)


def test_record_detail_has_frame_and_chain_status(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    rid = inspected["A2"]["inspection_id"]
    d = client.get(f"/v1/audit/records/{rid}", headers=h).json()
    assert d["record"]["decision"] == "reject" and d["record"]["part_id"] == "A2"
    assert d["chain"]["ok"] is True and d["frame"]["stored"] is True
    frame = client.get(d["frame"]["url"], headers=h)
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
    assert frame.content == png(5, seed=len("A2") + 5)
    # A pass's frame is not kept at the default sample rate.
    passed = inspected["A1"]["inspection_id"]
    assert client.get(f"/v1/audit/records/{passed}", headers=h).json()["frame"]["stored"] is False
    assert client.get(f"/v1/audit/records/{passed}/frame", headers=h).status_code == 404


def test_unknown_record_is_404(client: TestClient, keys: dict[str, str]) -> None:
    resp = client.get("/v1/audit/records/nope", headers=auth(keys, "auditor"))
    assert resp.status_code == 404 and "nope" in resp.json()["detail"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_streams_filtered_records(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any], fmt: str
) -> None:
    resp = client.get(
        "/v1/audit/export",
        params={"format": fmt, "decision": "pass", "kind": "inspection"},
        headers=auth(keys, "admin"),
    )
    assert resp.status_code == 200
    assert f'filename="inspection-log.{fmt}"' in resp.headers["content-disposition"]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(resp.text)))
    else:
        rows = [json.loads(line) for line in resp.text.splitlines()]
    assert [r["part_id"] for r in rows] == ["A1", "B1", "C1"]


def test_verify_reports_tampering(client: TestClient, keys: dict[str, str], inspected: dict[str, Any]) -> None:
    h = auth(keys, "auditor")
    ok = client.post("/v1/audit/verify", headers=h).json()
    assert ok["ok"] is True and ok["records"] >= 5
    target = client.get(f"/v1/audit/records/{inspected['B2']['inspection_id']}", headers=h).json()["record"]["seq"]
    with client.app.state.log.engine.begin() as conn:
        conn.execute(sa.text("UPDATE inspection_records SET decision = 'pass' WHERE seq = :s"), {"s": target})
    bad = client.post("/v1/audit/verify", headers=h).json()
    assert (bad["ok"], bad["first_bad_seq"], bad["tampering"]) == (False, target, "edited")
    detail = client.get(f"/v1/audit/records/{inspected['B2']['inspection_id']}", headers=h).json()
    assert detail["chain"]["hash_ok"] is False and detail["chain"]["ok"] is False


def test_disposition_is_a_new_record_referencing_the_original(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    rid = inspected["A2"]["inspection_id"]
    before = client.get(f"/v1/audit/records/{rid}", headers=h).json()["record"]
    resp = client.post(
        f"/v1/audit/records/{rid}/dispositions",
        json={"action": "override", "decision": "pass", "note": "glare"},
        headers=h,
    )
    assert resp.status_code == 201, resp.text
    disp = resp.json()["record"]
    assert (disp["kind"], disp["ref"], disp["decision"], disp["actor"]) == ("disposition", rid, "pass", "auditor-key")
    assert disp["data"]["original_decision"] == "reject" and disp["data"]["note"] == "glare"
    after = client.get(f"/v1/audit/records/{rid}", headers=h).json()
    assert after["record"] == before  # nothing updated in place
    assert [r["inspection_id"] for r in after["related"]] == [disp["inspection_id"]]
    assert client.post("/v1/audit/verify", headers=h).json()["ok"] is True


@pytest.mark.parametrize(
    ("body", "status"),
    [({"action": "override"}, 400), ({"action": "maybe"}, 400), ({"action": "confirm", "note": "x" * 2001}, 400)],
)
def test_bad_disposition_is_refused(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any], body: Any, status: int
) -> None:
    rid = inspected["A1"]["inspection_id"]
    resp = client.post(f"/v1/audit/records/{rid}/dispositions", json=body, headers=auth(keys, "auditor"))
    assert resp.status_code in (status, 422), resp.text


def test_disposition_of_a_disposition_is_a_conflict(
    client: TestClient, keys: dict[str, str], inspected: dict[str, Any]
) -> None:
    h = auth(keys, "auditor")
    rid = inspected["A1"]["inspection_id"]
    disp = client.post(f"/v1/audit/records/{rid}/dispositions", json={"action": "confirm"}, headers=h).json()["record"]
    resp = client.post(f"/v1/audit/records/{disp['inspection_id']}/dispositions", json={"action": "confirm"}, headers=h)
    assert resp.status_code == 409 and "disposition" in resp.json()["detail"]


@pytest.mark.parametrize("role", ["line", "engineer"])
def test_other_roles_cannot_audit(client: TestClient, keys: dict[str, str], role: str) -> None:
    assert client.get("/v1/audit/records", headers=auth(keys, role)).status_code == 403
    assert client.post("/v1/audit/verify", headers=auth(keys, role)).status_code == 403
    assert client.get("/v1/audit/records").status_code == 401


def test_bad_query_values_are_400_with_reason(client: TestClient, keys: dict[str, str]) -> None:
    h = auth(keys, "auditor")
    for params, needle in (
        ({"limit": 0}, "limit"),
        ({"kind": "nope"}, "kind"),
        ({"format": "xml"}, "format"),
        ({"part_id": "a\x00b"}, "NUL"),
        ({"time_from": "2026-01-02T00:00:00Z", "time_to": "2026-01-01T00:00:00Z"}, "before"),
    ):
        path = "/v1/audit/export" if "format" in params else "/v1/audit/records"
        resp = client.get(path, params=params, headers=h)
        assert resp.status_code in (400, 422), (params, resp.text)
        assert needle in resp.text


def test_audit_page_is_served(client: TestClient) -> None:
    resp = client.get("/audit")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "Verify chain" in resp.text and "sessionStorage" in resp.text


def test_retention_policy_prunes_frames_and_records_it(tmp_path: Any, models_dir: Any, keys: dict[str, str]) -> None:
    import time

    from serving.app import create_app
    from serving.settings import build_settings
    from tests.serving.conftest import settings_data

    settings = build_settings(settings_data(tmp_path, models_dir, keys, frames_max_bytes=0, retention_interval_s=1))
    with TestClient(create_app(settings)) as client:
        rejected = inspect(client, keys, "R1", 5)
        h = auth(keys, "auditor")
        deadline = time.monotonic() + 20
        while True:
            prunes = client.get("/v1/audit/records", params={"kind": "prune"}, headers=h).json()["records"]
            removed = [sha for p in prunes for sha in p["data"]["removed"]]
            record = client.get(f"/v1/audit/records/{rejected['inspection_id']}", headers=h).json()
            if record["record"]["frame_sha256"] in removed:
                break
            assert time.monotonic() < deadline, "retention never pruned the reject's frame"
            time.sleep(0.2)
        assert prunes[0]["actor"] == "retention"
        assert record["frame"]["stored"] is False and record["record"]["decision"] == "reject"  # the record stays
        assert client.post("/v1/audit/verify", headers=h).json()["ok"] is True


def test_a_fail_safe_parts_reason_is_not_read_as_a_code(client: TestClient, keys: dict[str, str]) -> None:
    # A part's fail-safe reason names the camera first ("cam: unsupported_media_type",
    # serving.parts): read as "<code>: <why>" it showed the camera as the code.
    r = client.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "F1"},
                    content=b"not an image", headers={**auth(keys, "line"), "Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    h = auth(keys, "auditor")
    deadline = time.monotonic() + 10
    parts: list[Any] = []
    while not parts and time.monotonic() < deadline:  # the part record follows the view's answer
        parts = client.get("/v1/audit/records", params={"kind": "part", "part_id": "F1"}, headers=h).json()["records"]
    assert len(parts) == 1
    assert parts[0]["failsafe_reason"] == "cam: unsupported_media_type"
    assert parts[0]["summary"] == "fail-safe reject: cam: unsupported_media_type"
    view = client.get("/v1/audit/records", params={"kind": "inspection", "part_id": "F1"}, headers=h).json()["records"]
    assert view[0]["summary"].startswith("fail-safe reject (unsupported_media_type): ")
