"""Storage faults answered, never unhandled: disk full, read-only, permission denied, PostgreSQL down, lock timeout.

Real faults from the operating system and the database (a small tmpfs filling up or remounted
read-only, a directory the server may not write, a PostgreSQL role losing its privileges, the
connection to PostgreSQL cut by a proxy we stop, SQLite's lock held by another connection) against the real app. The
TestClient re-raises any unhandled exception, so a fault that would be "Exception in ASGI
application" fails the test. Every frame gets its decision or a structured error with the
fail-safe reject; ``/readyz`` says not ready with the reason while the log cannot commit and
ready again after; ``/metrics`` counts the failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.logdb import PG_URL, pg_unreachable_reason
from tests.helpers.tcpproxy import TcpProxy
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, auth, decided, post_frame, settings_data

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_infrastructure_details")]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (needs root), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=False,
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@contextlib.contextmanager
def writes_denied(path: Path) -> Iterator[None]:
    """Writes under ``path`` fail with a permission error for as long as the block runs.

    As root, mode bits do not stop writes, so the tree is made immutable (``chattr +i``: EPERM);
    as another user its modes are cleared (EACCES). Both are what a wrongly provisioned log
    directory gives the server.
    """
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("denying root's writes needs chattr (e2fsprogs)")
        done = subprocess.run(["chattr", "-R", "+i", str(path)], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=False, capture_output=True)
            pytest.skip(f"this filesystem has no immutable flag: {done.stderr.decode(errors='replace')}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=True, capture_output=True)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _until(predicate: Any, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _ready(client: TestClient) -> bool:
    return client.get("/readyz").status_code == 200


def _structured(resp: Any) -> None:
    """A non-200 frame answer: our error body with the fail-safe reject naming the part."""
    body = resp.json()
    assert set(body) >= {"error", "detail", "failsafe"}, body
    assert body["failsafe"]["decision"] == "reject" and body["failsafe"]["part_id"]


def _ballast(where: Path, size: int) -> Path:
    path = where / "ballast"
    with path.open("wb") as fh:
        fh.write(os.urandom(size))
    return path


def test_disk_full_answers_failsafe_goes_not_ready_and_recovers(tmp_path: Path, small_fs: Path, models_dir: Path,
                                                                keys: dict[str, str]) -> None:
    ballast = _ballast(small_fs, 2 * 1024 * 1024)
    settings = build_settings(settings_data(tmp_path, models_dir, keys, log_url=f"sqlite:///{small_fs / 'log.db'}",
                                            frame_sample_rate=1.0, log_health_interval_s=0.05))
    statuses: dict[int, int] = {}
    with TestClient(create_app(settings)) as client:
        for i in range(400):
            resp = post_frame(client, keys, frame_png(DARK, size=192, seed=i), part_id=f"F{i}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code != 200:
                _structured(resp)
                assert resp.json()["error"] == "storage_full", resp.json()
                break
        assert statuses.get(500) == 1, statuses  # the disk filled up (frames first, then the log)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "storage_full" in ready.json()["problems"]["log"]
        metrics = client.get("/metrics", headers=auth(keys, "engineer")).text
        assert 'inspection_log_failures_total{reason="storage_full"}' in metrics
        assert "inspection_log_ready 0.0" in metrics
        ballast.unlink()
        assert _until(lambda: _ready(client)), client.get("/readyz").json()
        assert post_frame(client, keys, frame_png(DARK, seed=999), part_id="after").status_code == 200
        store = client.app.state.log  # type: ignore[attr-defined]
        report = store.verify()
        assert report.ok, report.as_dict()  # frames not kept are marked in their records: no tampering
        assert store.frames_not_kept >= 0


def test_headroom_floor_stops_keeping_passes_then_prunes_oldest(tmp_path: Path, small_fs: Path, models_dir: Path,
                                                                keys: dict[str, str]) -> None:
    floor = 1536 * 1024
    _ballast(small_fs, 1024 * 1024)  # 2 MiB left: the floor is crossed after about 20 frames
    settings = build_settings(settings_data(tmp_path, models_dir, keys, log_url=f"sqlite:///{tmp_path / 'log.db'}",
                                            frames_dir=str(small_fs / "frames"), frame_sample_rate=1.0,
                                            log_min_free_bytes=floor, log_health_interval_s=0.05))
    with TestClient(create_app(settings)) as client:
        for i in range(80):
            level = DARK if i % 4 == 0 else BRIGHT
            resp = post_frame(client, keys, frame_png(level, size=192, seed=i), part_id=f"H{i}")
            assert resp.status_code == 200, resp.text
            assert _ready(client)
        store = client.app.state.log  # type: ignore[attr-defined]
        from inspection.log.query import RecordFilter, query_records

        def prunes() -> list[Any]:
            return query_records(store, RecordFilter(kind="prune"), limit=100).records

        assert _until(lambda: bool(prunes()) and store.frames.free_bytes() >= floor), store.frames.free_bytes()
        assert all(p.entry.actor == "headroom" for p in prunes())
        assert sum(1 for _ in store.frames.iter_frames()) > 0  # only what was needed was pruned
        assert store.verify().ok


def test_read_only_frames_directory_keeps_deciding_and_says_so(tmp_path: Path, small_fs: Path, models_dir: Path,
                                                              keys: dict[str, str]) -> None:
    settings = build_settings(settings_data(tmp_path, models_dir, keys, frames_dir=str(small_fs / "frames")))
    with TestClient(create_app(settings)) as client:
        assert post_frame(client, keys, frame_png(DARK, seed=1), part_id="R0").status_code == 200
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
        try:
            resp = post_frame(client, keys, frame_png(DARK, seed=2), part_id="R1")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
        assert resp.status_code == 200, resp.text  # the decision is recorded; only its frame is missing
        record = client.app.state.log.get(resp.json()["inspection_id"])  # type: ignore[attr-defined]
        assert record.entry.data["frame_not_kept"] == "storage_error"
        assert client.app.state.log.verify().ok  # type: ignore[attr-defined]
        metrics = client.get("/metrics", headers=auth(keys, "engineer")).text
        assert "inspection_log_frames_not_kept_total 1.0" in metrics


def test_permission_denied_on_the_frames_directory_keeps_deciding_and_says_so(
        tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> None:
    frames = tmp_path / "frames"
    settings = build_settings(settings_data(tmp_path, models_dir, keys, frames_dir=str(frames),
                                            frame_sample_rate=1.0))
    with TestClient(create_app(settings)) as client:
        assert post_frame(client, keys, frame_png(DARK, seed=1), part_id="W0").status_code == 200
        with writes_denied(frames):
            resp = post_frame(client, keys, frame_png(DARK, seed=2), part_id="W1")
        assert resp.status_code == 200, resp.text  # the decision is recorded; only its frame is missing
        store = client.app.state.log  # type: ignore[attr-defined]
        assert store.get(resp.json()["inspection_id"]).entry.data["frame_not_kept"] == "storage_error"
        assert store.verify().ok
        assert post_frame(client, keys, frame_png(DARK, seed=3), part_id="W2").status_code == 200


def test_log_directory_without_write_permission_stops_the_start_with_its_reason(
        tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> None:
    """A SQLite log in a directory the server may not write (a wrongly provisioned volume): the
    start fails naming the directory and the fault, instead of opening the file read-only and
    failing every decision later; the records already there are untouched.

    (While running, SQLite keeps its open files: losing the permission then only shows at the
    next open. The running case is PostgreSQL's REVOKE below, and the frames directory above.)
    """
    from inspection.errors import InspectionError

    data = settings_data(tmp_path, models_dir, keys)
    with TestClient(create_app(build_settings(data))) as client:
        assert post_frame(client, keys, frame_png(DARK, seed=1), part_id="L0").status_code == 200
        before = client.app.state.log.head()  # type: ignore[attr-defined]
    var = tmp_path / "var"
    with writes_denied(var), pytest.raises(InspectionError) as err, TestClient(create_app(build_settings(data))):
        pass
    assert f"its directory {var} is not writable (permission denied)" in str(err.value)
    with TestClient(create_app(build_settings(data))) as client:
        store = client.app.state.log  # type: ignore[attr-defined]
        assert store.head() == before and store.verify().ok


def test_sqlite_lock_timeout_answers_failsafe_and_readiness_follows(tmp_path: Path, models_dir: Path,
                                                                    keys: dict[str, str]) -> None:
    from inspection.log.store import open_log

    db = tmp_path / "locked.db"
    store = open_log(f"sqlite:///{db}", commit_timeout_s=0.5)
    settings = build_settings(settings_data(tmp_path, models_dir, keys, log_health_interval_s=0.05,
                                            log_inline_commit=False))
    import sqlite3

    try:
        with TestClient(create_app(settings, log_store=store)) as client:
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            try:
                resp = post_frame(client, keys, frame_png(DARK), part_id="L1")
                assert resp.status_code == 500 and resp.json()["error"] == "log_unavailable", resp.text
                _structured(resp)
                assert "log_unavailable" in client.get("/readyz").json()["problems"]["log"]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert _until(lambda: _ready(client), 40), client.get("/readyz").json()
            assert post_frame(client, keys, frame_png(DARK), part_id="L2").status_code == 200
    finally:
        store.close()


# ----------------------------------------------------------------------------- PostgreSQL
@pytest.fixture
def pg_schema_url() -> Iterator[tuple[str, str]]:
    if reason := pg_unreachable_reason():
        pytest.skip(reason)
    from tests.helpers.logdb import pg_schema

    with pg_schema() as schema:
        yield PG_URL, schema


@pytest.mark.postgres
def test_postgres_connection_lost_answers_failsafe_and_recovers(tmp_path: Path, models_dir: Path,
                                                                keys: dict[str, str],
                                                                pg_schema_url: tuple[str, str]) -> None:
    from inspection.log.store import open_log

    url, schema = pg_schema_url
    parsed = sa.engine.make_url(url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    store = open_log(parsed.set(port=proxy.port).render_as_string(hide_password=False), schema=schema,
                     commit_timeout_s=5)
    settings = build_settings(settings_data(tmp_path, models_dir, keys, log_health_interval_s=0.05))
    try:
        with TestClient(create_app(settings, log_store=store)) as client:
            assert post_frame(client, keys, frame_png(DARK), part_id="P0").status_code == 200
            decided(client, keys, "P0")  # its part record committed too, before the cut
            proxy.cut()
            resp = post_frame(client, keys, frame_png(DARK), part_id="P1")
            assert resp.status_code == 500 and resp.json()["error"] == "log_unavailable", resp.text
            _structured(resp)
            assert "log_unavailable" in client.get("/readyz").json()["problems"]["log"]
            assert client.post("/v1/audit/verify", headers=auth(keys, "auditor")).json()["error"] == "log_unavailable"
            export = client.get("/v1/audit/export", headers=auth(keys, "auditor"))
            assert export.status_code == 500 and export.json()["error"] == "log_unavailable", export.text
            proxy.restore()
            assert _until(lambda: _ready(client), 20), client.get("/readyz").json()
            assert post_frame(client, keys, frame_png(DARK), part_id="P2").status_code == 200
            assert store.verify().ok
    finally:
        store.close()
        proxy.close()


@pytest.mark.postgres
def test_postgres_permission_denied_answers_failsafe(tmp_path: Path, models_dir: Path, keys: dict[str, str],
                                                     pg_schema_url: tuple[str, str]) -> None:
    from inspection.log.store import open_log

    url, schema = pg_schema_url
    role = "r_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'GRANT ALL ON SCHEMA "{schema}" TO "{role}"'))
    try:
        open_log(url, schema=schema).close()  # tables created by the owner ...
        with admin.begin() as conn:
            conn.execute(sa.text(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
        store = open_log(sa.engine.make_url(url).set(username=role).render_as_string(hide_password=False),
                         schema=schema, frames_dir=tmp_path / "frames", frame_sample_rate=1.0)
        settings = build_settings(settings_data(tmp_path, models_dir, keys, log_health_interval_s=0.05,
                                                labelling={"classes": ["good", "scratch"], "margin": 0.2}))
        try:
            with TestClient(create_app(settings, log_store=store)) as client:
                first = post_frame(client, keys, frame_png(DARK), part_id="Q0")
                assert first.status_code == 200
                with admin.begin() as conn:  # ... and the server's role loses its right to append
                    conn.execute(sa.text(f'REVOKE INSERT ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"'))
                resp = post_frame(client, keys, frame_png(DARK), part_id="Q1")
                assert resp.status_code == 500 and resp.json()["error"] == "storage_error", resp.text
                _structured(resp)
                assert "permission denied" in client.get("/readyz").json()["problems"]["log"]
                label = client.post(f"/v1/labelling/frames/{first.json()['inspection_id']}/labels",
                                    json={"label": "scratch", "expected_revision": 0}, headers=auth(keys, "engineer"))
                assert label.status_code == 500 and label.json()["error"] == "storage_error", label.text
        finally:
            store.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_single_station_constant_is_used() -> None:
    assert SINGLE  # the frames above go to the one-camera station: each frame completes its part


@pytest.mark.mqtt
def test_log_failure_raises_and_clears_the_mqtt_alarm_and_checkpoints_are_retained(
        tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> None:
    import sqlite3

    from inspection.log import checkpoints
    from inspection.log.store import open_log
    from tests.helpers.server import free_port
    from tests.serving.line.peers import MOSQUITTO, Broker, Subscriber

    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, free_port())
    broker.start()
    key = tmp_path / "cp.key"
    public = checkpoints.generate_signing_key(key)
    data = settings_data(tmp_path, models_dir, keys, log_health_interval_s=0.05, log_inline_commit=False,
                         checkpoints={"signing_key": str(key), "every_records": 2, "every_s": 0.1})
    data["stations"][SINGLE]["line"] = {"mqtt": {"enabled": True, "port": broker.port, "status_interval_s": 0.1}}
    db = tmp_path / "mq.db"
    store = open_log(f"sqlite:///{db}", commit_timeout_s=0.5)
    sub = Subscriber(broker.port, clean=True)

    def alarms() -> list[dict[str, Any]]:
        return [m for t, m, _ in list(sub.messages) if t == f"inspection/{SINGLE}/alarm"]

    try:
        with TestClient(create_app(build_settings(data), log_store=store)) as client:
            assert _until(lambda: client.app.state.line.mqtt[SINGLE].connected)  # type: ignore[attr-defined]
            assert post_frame(client, keys, frame_png(DARK), part_id="M0").status_code == 200
            decided(client, keys, "M0")
            assert _until(lambda: any(t == "inspection/log/checkpoint" for t, _, _ in list(sub.messages)))
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                assert post_frame(client, keys, frame_png(DARK), part_id="M1").status_code == 500
                assert _until(lambda: [a["state"] for a in alarms()][-1:] == ["raised"]), alarms()
                assert "log_unavailable" in alarms()[-1]["reason"]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert _until(lambda: [a["state"] for a in alarms()][-1:] == ["cleared"], 40), alarms()
        retained = checkpoints.fetch_mqtt(f"mqtt://127.0.0.1:{broker.port}/inspection/log/checkpoint")
        assert retained and checkpoints.signature_ok(retained[0], checkpoints.load_public_key(public))
    finally:
        sub.close()
        store.close()
        broker.stop()


@pytest.mark.mqtt
def test_alarm_raised_while_the_broker_is_down_reaches_it_when_it_returns(
        tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> None:
    """The log fails while the broker is away too (one network fault, say): the retained alarm is
    kept and published once the broker is back, and the later clear follows it."""
    import sqlite3

    from inspection.log.store import open_log
    from tests.helpers.server import free_port
    from tests.serving.line.peers import MOSQUITTO, Broker, Subscriber

    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, free_port())  # not started: the broker is down from the beginning
    data = settings_data(tmp_path, models_dir, keys, log_health_interval_s=0.05, log_inline_commit=False)
    data["stations"][SINGLE]["line"] = {"mqtt": {"enabled": True, "port": broker.port, "status_interval_s": 0.1}}
    db = tmp_path / "mq.db"
    store = open_log(f"sqlite:///{db}", commit_timeout_s=0.5)
    sub: Subscriber | None = None
    try:
        with TestClient(create_app(build_settings(data), log_store=store)) as client:
            health = client.app.state.log_health  # type: ignore[attr-defined]
            publisher = client.app.state.line.mqtt[SINGLE]  # type: ignore[attr-defined]
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                assert post_frame(client, keys, frame_png(DARK), part_id="D1").status_code == 500
                assert _until(lambda: health.alarm_raised)
                assert not publisher.connected
                broker.start()
                sub = Subscriber(broker.port, clean=True)

                def alarms() -> list[dict[str, Any]]:
                    assert sub is not None
                    return [m for t, m, _ in list(sub.messages) if t == f"inspection/{SINGLE}/alarm"]

                assert _until(lambda: [a["state"] for a in alarms()][-1:] == ["raised"], 20), alarms()
                assert "log_unavailable" in alarms()[-1]["reason"]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert _until(lambda: [a["state"] for a in alarms()][-1:] == ["cleared"], 40), alarms()
    finally:
        if sub is not None:
            sub.close()
        store.close()
        broker.stop()
