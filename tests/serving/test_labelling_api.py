"""The labelling API on the real app: frames come in through /v1/inspections, are queued,
labelled, relabelled and undone through /v1/labelling; bad input is a clear 4xx and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inspection import labels as L
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import frame_png
from tests.serving.conftest import SINGLE, auth, post_frame, settings_data

CLASSES = ["good", "scratch", "dent", "blister"]


@pytest.fixture
def client(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    data = settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0,
                         labelling={"classes": CLASSES, "margin": 0.2, "pass_sample": 10})
    with TestClient(create_app(build_settings(data))) as c:
        yield c


def _frames(client: TestClient, keys: dict[str, str], levels: list[int]) -> list[dict[str, Any]]:
    out = []
    for i, level in enumerate(levels):
        r = post_frame(client, keys, frame_png(level, seed=i), part_id=f"p{i}")
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _label(client: TestClient, keys: dict[str, str], fid: str, label: Any, rev: Any, role: str = "engineer") -> Any:
    return client.post(f"/v1/labelling/frames/{fid}/labels", json={"label": label, "expected_revision": rev},
                       headers=auth(keys, role))


def test_queue_puts_frames_nearest_the_threshold_first(client: TestClient, keys: dict[str, str]) -> None:
    answers = _frames(client, keys, [250, 10, 120, 150, 165, 240, 20])
    r = client.get("/v1/labelling/queue", headers=auth(keys, "engineer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["classes"] == CLASSES
    items = body["items"]
    assert {i["frame_id"] for i in items} == {a["inspection_id"] for a in answers}
    order = [L.BUCKETS.index(i["bucket"]) for i in items]
    assert order == sorted(order)
    by_id = {a["inspection_id"]: a for a in answers}
    for item in items:
        a = by_id[item["frame_id"]]
        assert item["score"] == pytest.approx(a["score"])  # P(defect) as the server decided it
        near = abs(a["score"] - a["threshold"]) <= 0.2
        assert (item["bucket"] == "uncertain") == near
        if not near:
            assert item["bucket"] == ("reject" if a["decision"] == "reject" else "pass")
    uncertain = [abs(i["score"] - i["threshold"]) for i in items if i["bucket"] == "uncertain"]
    assert uncertain and uncertain == sorted(uncertain)
    assert any(i["bucket"] == "reject" for i in items) and any(i["bucket"] == "pass" for i in items)


def test_label_relabel_undo_history_and_current_prediction(client: TestClient, keys: dict[str, str]) -> None:
    (a,) = _frames(client, keys, [140])
    fid = a["inspection_id"]
    r = _label(client, keys, fid, "blister", 0)
    assert r.status_code == 201, r.text
    assert r.json()["revision"] == 1 and r.json()["label"]["actor"] == "engineer-key"
    assert _label(client, keys, fid, "dent", 1, role="admin").status_code == 201
    info = client.get(f"/v1/labelling/frames/{fid}", headers=auth(keys, "engineer")).json()
    assert [h["label"] for h in info["history"]] == ["blister", "dent"]
    assert [h["actor"] for h in info["history"]] == ["engineer-key", "admin-key"]
    assert info["frame"]["label"] == "dent" and info["frame"]["revision"] == 2
    pred = info["prediction"]
    assert pred["model_version"] == "tiny/v1" and pred["score"] == pytest.approx(a["score"], abs=1e-6)
    assert pred["decision"] == a["decision"]
    img = client.get(info["image_url"], headers=auth(keys, "engineer"))
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == frame_png(140, seed=0)
    queue = client.get("/v1/labelling/queue", headers=auth(keys, "engineer")).json()["items"]
    assert fid not in {i["frame_id"] for i in queue}  # labelled frames leave the queue
    u = client.post(f"/v1/labelling/frames/{fid}/undo", json={"expected_revision": 2}, headers=auth(keys, "engineer"))
    assert u.status_code == 201 and u.json()["label"]["label"] == "blister"
    # Every label is an inspection-log record referencing the frame's record.
    recs = client.get("/v1/audit/records", params={"kind": "label", "ref": fid, "order": "asc"},
                      headers=auth(keys, "auditor")).json()["records"]
    assert [(r["defect_class"], r["actor"]) for r in recs] == [
        ("blister", "engineer-key"), ("dent", "admin-key"), ("blister", "engineer-key")]
    assert all(r["frame_sha256"] == recs[0]["frame_sha256"] for r in recs)


def test_bad_input_is_a_clear_4xx_and_history_stays_intact(client: TestClient, keys: dict[str, str]) -> None:
    (a, b) = _frames(client, keys, [140, 30])
    fid = a["inspection_id"]
    assert _label(client, keys, fid, "scratch", 0).status_code == 201
    before = client.get(f"/v1/labelling/frames/{fid}", headers=auth(keys, "engineer")).json()["history"]

    r = _label(client, keys, fid, "crack", 1)
    assert r.status_code == 400
    assert "label 'crack' is not one of the classes ['good', 'scratch', 'dent', 'blister']" in r.json()["detail"]
    r = _label(client, keys, "0" * 32, "dent", 0)
    assert r.status_code == 404 and "0" * 32 in r.json()["detail"]
    r = _label(client, keys, fid, "dent", 0)  # someone else labelled it after we loaded revision 0
    assert r.status_code == 409 and "revision 1, you saw revision 0" in r.json()["detail"]
    assert r.json()["error"] == "conflict"
    r = _label(client, keys, fid, "dent", "one")
    assert r.status_code == 400
    r = client.post(f"/v1/labelling/frames/{fid}/undo", json={"expected_revision": 5}, headers=auth(keys, "engineer"))
    assert r.status_code == 409
    part_records = client.get("/v1/audit/records", params={"kind": "part"}, headers=auth(keys, "auditor")).json()[
        "records"
    ]
    assert part_records
    r = _label(client, keys, part_records[0]["inspection_id"], "dent", 0)
    assert r.status_code == 400 and "'part' record" in r.json()["detail"]
    for role in ("line", "auditor"):
        assert _label(client, keys, b["inspection_id"], "dent", 0, role=role).status_code == 403

    after = client.get(f"/v1/labelling/frames/{fid}", headers=auth(keys, "engineer")).json()["history"]
    assert after == before
    labels = client.get("/v1/audit/records", params={"kind": "label"}, headers=auth(keys, "auditor")).json()["records"]
    assert len(labels) == 1
    assert client.post("/v1/audit/verify", headers=auth(keys, "auditor")).json()["ok"] is True


def test_unlabelled_imports_are_queued_last_and_scored_by_the_current_model(client: TestClient,
                                                                           keys: dict[str, str]) -> None:
    _frames(client, keys, [30])
    log = client.app.state.log  # type: ignore[attr-defined]
    (imp,) = L.import_unlabelled(log, [("new/blister-1.png", frame_png(60, seed=9))], actor="cli")
    items = client.get("/v1/labelling/queue", headers=auth(keys, "engineer")).json()["items"]
    assert items[-1]["frame_id"] == imp.entry.inspection_id and items[-1]["bucket"] == "import"
    assert items[-1]["import_source"] == "new/blister-1.png"
    info = client.get(f"/v1/labelling/frames/{imp.entry.inspection_id}", headers=auth(keys, "engineer")).json()
    assert info["prediction"]["model_version"] == "tiny/v1" and info["prediction"]["station"] in (SINGLE, "press-1")
    assert _label(client, keys, imp.entry.inspection_id, "blister", 0).status_code == 201


def test_label_page_is_served(client: TestClient) -> None:
    r = client.get("/label")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/v1/labelling/queue" in r.text and "Content-Security-Policy" in r.headers
