"""Defect maps through the real app: a reject answers where the defect is, in the frame's pixels;
its record keeps the map's PNG (content-addressed, verified); asking a map of a model without
maps is refused before anything is recorded; older cards serve as before.

The model is the tests' tiny ONNX graph with a ``defect_map`` output (each 8 x 8 cell's darkness),
so a dark square at a known place is where the map must peak.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version
from tests.serving.conftest import SINGLE, STATION, all_records, auth, post_frame, settings_data

SIZE = 64  # model input; the map is 8 x 8 cells of 8 px


def spot_frame(width: int, height: int, box: tuple[int, int, int, int], *, level: int = 110) -> bytes:
    """A grey frame (dark enough to be rejected) with a black square at ``box`` = (x, y, w, h)."""
    image = np.full((height, width), level, dtype=np.uint8)
    x, y, w, h = box
    image[y : y + h, x : x + w] = 0
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


@pytest.fixture
def mapped_client(tmp_path: Path, keys: dict[str, str]) -> TestClient:
    root = tmp_path / "models"
    make_model_version(root, name="mapped", version="v1", size=SIZE, map_cell=8)
    make_model_version(root, name="tiny", version="v1")  # an older card: no map
    registry = ModelRegistry(root)
    registry.promote("mapped", "v1", station=SINGLE)
    registry.promote("tiny", "v1", station=STATION)
    with TestClient(create_app(build_settings(settings_data(tmp_path, root, keys)))) as c:
        yield c


def inside(point: list[float], box: list[float]) -> bool:
    return box[0] <= point[0] <= box[0] + box[2] and box[1] <= point[1] <= box[1] + box[3]


def test_a_reject_answers_and_logs_where_the_defect_is_in_frame_pixels(mapped_client: TestClient, keys) -> None:
    # A 256 x 128 frame (stretched to 64 x 64): the black square sits at x 176..208, y 32..64.
    r = post_frame(mapped_client, keys, spot_frame(256, 128, (176, 32, 32, 32)), part_id="M1")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["decision"] == "reject"
    where = answer["defect_map"]
    assert inside(where["peak"], [176, 32, 32, 32]), where
    # The box holds the square and not much more (one 32 x 16 frame px cell of slack each side).
    bx, by, bw, bh = where["box"]
    assert bx <= 176 and by <= 32 and bx + bw >= 208 and by + bh >= 64
    assert bw <= 32 + 64 and bh <= 32 + 32
    assert where["extent"] == [0, 0, 256, 128]
    store = mapped_client.app.state.log
    entry = store.get(answer["inspection_id"]).entry
    kept = entry.data["defect_map"]
    assert kept["peak"] == where["peak"] and kept["cells"] == [8, 8] and entry.data["map_kept"] is True
    png = store.frame(kept["sha256"])  # re-hashed on read
    heat = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (8, 8) and np.unravel_index(int(np.argmax(heat)), heat.shape) == (2, 5)
    # The audit API names it and serves it.
    d = mapped_client.get(f"/v1/audit/records/{answer['inspection_id']}", headers=auth(keys, "auditor")).json()
    assert d["defect_map"]["stored"] and d["defect_map"]["box"] == where["box"]
    got = mapped_client.get(d["defect_map"]["url"], headers=auth(keys, "auditor"))
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and got.content == png


def test_a_pass_keeps_no_map_unless_asked(mapped_client: TestClient, keys) -> None:
    quiet = post_frame(mapped_client, keys, frame_png(BRIGHT, size=SIZE), part_id="P1")
    assert quiet.json()["decision"] == "pass" and "defect_map" not in quiet.json()
    asked = post_frame(mapped_client, keys, frame_png(BRIGHT, size=SIZE), part_id="P2", map="1")
    assert asked.json()["decision"] == "pass" and set(asked.json()["defect_map"]) == {"peak", "peak_value", "box",
                                                                                      "extent"}
    for answer in (quiet.json(), asked.json()):
        entry = mapped_client.app.state.log.get(answer["inspection_id"]).entry
        assert "defect_map" not in (entry.data or {})  # a pass's record keeps no map
    r = mapped_client.get(f"/v1/audit/records/{quiet.json()['inspection_id']}/map", headers=auth(keys, "auditor"))
    assert r.status_code == 404 and "no defect map" in r.json()["detail"]


def test_letterboxed_and_cropped_frames_map_back_to_the_frame(tmp_path: Path, keys) -> None:
    from inspection.card import InputSpec, load_card, save_card

    root = tmp_path / "models"
    version = make_model_version(root, name="boxed", version="v1", size=SIZE, map_cell=8)
    card = load_card(Path(version.path))
    # The camera sees 40 px of conveyor left of the part; the part (200 x 100) is letterboxed.
    spec = InputSpec(**{**card.input.model_dump(), "roi": (40, 0, 200, 100), "geometry": "letterbox"})
    save_card(card.model_copy(update={"input": spec}), Path(version.path))
    ModelRegistry(root).promote("boxed", "v1", station=SINGLE)
    with TestClient(create_app(build_settings(settings_data(tmp_path, root, keys)))) as c:
        r = post_frame(c, keys, spot_frame(240, 100, (80, 50, 25, 25)), part_id="L1")
    where = r.json()["defect_map"]
    assert inside(where["peak"], [80, 50, 25, 25]), where
    # 200 x 100 scaled by 0.32 to 64 x 32, centred: the map covers 100 px of padding above and below.
    assert where["extent"] == [40, -50, 200, 200]


def test_a_map_asked_of_a_model_without_maps_is_refused_and_nothing_is_recorded(mapped_client: TestClient,
                                                                                keys) -> None:
    before = len(all_records(mapped_client))
    r = post_frame(mapped_client, keys, frame_png(DARK), station=STATION, camera="top", part_id="N1", map="1")
    assert r.status_code == 409
    assert "tiny/v1" in r.json()["detail"] and "no defect map" in r.json()["detail"]
    bad = post_frame(mapped_client, keys, frame_png(DARK, size=SIZE), part_id="N2", map="perhaps")
    assert bad.status_code == 400 and "map='perhaps'" in bad.json()["detail"]
    assert len(all_records(mapped_client)) == before
    # Without the flag the older card serves as it always did: decision, no map.
    old = post_frame(mapped_client, keys, frame_png(DARK), station=STATION, camera="top", part_id="N3")
    assert old.status_code == 200 and old.json()["decision"] == "reject" and "defect_map" not in old.json()


def test_verify_reports_a_deleted_or_swapped_map(mapped_client: TestClient, keys) -> None:
    answer = post_frame(mapped_client, keys, spot_frame(64, 64, (8, 8, 8, 8)), part_id="V1").json()
    store = mapped_client.app.state.log
    assert store.verify().ok
    sha = store.get(answer["inspection_id"]).entry.data["defect_map"]["sha256"]
    path = store.frames.path(sha)
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    report = store.verify()
    assert not report.ok and any("defect map" in p.detail and p.kind == "frame_altered" for p in report.problems)
    path.unlink()
    report = store.verify()
    assert not report.ok and any("defect map" in p.detail and p.kind == "frame_missing" for p in report.problems)


def test_a_model_whose_maps_differ_from_its_golden_maps_is_refused(tmp_path: Path) -> None:
    """The golden check judges the maps too: a map branch altered alone would otherwise pass."""
    from inspection.card import hash_files, load_card, save_card
    from inspection.errors import ModelIntegrityError
    from inspection.golden import verify_version
    from serving.model import load_model
    from serving.settings import RuntimeSettings

    version = make_model_version(tmp_path / "models", name="mapped", version="v1", size=SIZE, map_cell=8)
    folder = Path(version.path)
    assert load_model(version, RuntimeSettings()).golden_max_diff <= 1e-4
    with np.load(folder / "golden.npz") as g:
        arrays = {k: g[k] for k in g.files}
    arrays["maps"] = arrays["maps"] + 0.01
    np.savez(folder / "golden.npz", **arrays)
    card = load_card(folder)
    save_card(card.model_copy(update={"files": hash_files(folder, list(card.files))}), folder)
    with pytest.raises(ModelIntegrityError, match="golden frames re-scored"):
        verify_version(load_card(folder), folder)
    with pytest.raises(ModelIntegrityError, match="golden frames re-scored"):
        load_model(ModelRegistry(tmp_path / "models").get("mapped", "v1"), RuntimeSettings())
