"""A simulated production line: sends held-out frames as parts and scores the decisions.

Used by ``inspection demo`` (and usable against any running server): each part's frame goes
to every camera of the station (``POST /v1/inspections``), then the reject actuator's query
``GET /v1/parts/{id}/decision?wait_ms=`` returns the part decision. Decisions are compared with
the ground-truth labels, so the summary speaks the quality engineer's language: escapes
(defective parts passed) and overkills (good parts rejected), plus latency percentiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
                  ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class LinePart:
    part_id: str
    image: Path
    true_label: str


@dataclass
class PartOutcome:
    part_id: str
    true_label: str
    decision: str
    defect_class: str | None
    failsafe_reason: str | None
    model_version: str | None
    latency_ms: float          # client-side: first frame sent -> part decision received
    server_latency_ms: float   # the server's own figure for the slowest view
    #: The defect map's box (x, y, w, h, frame pixels) of the view that rejected most surely.
    defect_box: list[float] | None = None


@dataclass
class LineReport:
    outcomes: list[PartOutcome] = field(default_factory=list)
    good_class: str | None = "good"
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.outcomes)

    def counts(self) -> dict[str, int]:
        defective = [o for o in self.outcomes if o.true_label != self.good_class]
        good = [o for o in self.outcomes if o.true_label == self.good_class]
        return {
            "parts": self.n,
            "passed": sum(o.decision == "pass" for o in self.outcomes),
            "rejected": sum(o.decision == "reject" for o in self.outcomes),
            "failsafe": sum(o.failsafe_reason is not None for o in self.outcomes),
            "defective": len(defective),
            "good": len(good),
            "escapes": sum(o.decision == "pass" for o in defective),
            "overkills": sum(o.decision == "reject" for o in good),
        }

    def latency(self, attr: str = "latency_ms") -> dict[str, float]:
        values = np.array([getattr(o, attr) for o in self.outcomes], dtype=float)
        if values.size == 0:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(values.max())}

    def summary(self) -> str:
        c = self.counts()
        esc = c["escapes"] / c["defective"] if c["defective"] else float("nan")
        ovk = c["overkills"] / c["good"] if c["good"] else float("nan")
        lat, srv = self.latency(), self.latency("server_latency_ms")
        versions = sorted({o.model_version for o in self.outcomes if o.model_version})
        return "\n".join([
            f"parts inspected: {c['parts']} in {self.wall_s:.1f} s  (model {', '.join(versions) or '-'})",
            f"  passed {c['passed']}, rejected {c['rejected']} (of which fail-safe {c['failsafe']})",
            f"  escapes  (defective passed): {c['escapes']} of {c['defective']} defective = {esc:.1%}",
            f"  overkill (good rejected):    {c['overkills']} of {c['good']} good = {ovk:.1%}",
            (f"  part decision latency, client side: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
             f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"),
            f"  frame latency, server side:         p50 {srv['p50']:.1f} ms, p99 {srv['p99']:.1f} ms",
        ])


def run_line(
    base_url: str,
    parts: Iterable[LinePart],
    *,
    station: str,
    cameras: list[str],
    api_key: str | None = None,
    good_class: str | None = "good",
    concurrency: int = 1,
    wait_ms: float = 2000.0,
    timeout_s: float = 30.0,
    rate_hz: float | None = None,
) -> LineReport:
    """Send every part's frame to each camera, read the part decision, compare with truth.

    ``concurrency`` parts are in flight at once (a line with several parts between camera
    and reject gate). ``rate_hz``: parts reach the cameras at this rate, as on a conveyor
    (None: as fast as the server answers). Network errors propagate: the simulator is a test
    driver, not a PLC.
    """
    if rate_hz is not None and not rate_hz > 0:
        raise ValueError(f"rate_hz={rate_hz!r}: parts per second must be positive (or None for as fast as possible)")
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    parts = list(parts)

    def one(client: httpx.Client, part: LinePart, slot: float | None = None) -> PartOutcome:
        data = part.image.read_bytes()
        if slot is not None:
            time.sleep(max(0.0, slot - time.perf_counter()))  # the part reaches the camera on its slot
        ctype = _CONTENT_TYPES.get(part.image.suffix.lower(), "application/octet-stream")
        started = time.perf_counter()
        server_ms, box, surest = 0.0, None, -1.0
        for camera in cameras:
            r = client.post("/v1/inspections", content=data,
                            params={"station": station, "camera": camera, "part_id": part.part_id},
                            headers={**headers, "Content-Type": ctype})
            if r.status_code == 200:
                answer = r.json()
                server_ms = max(server_ms, float(answer.get("latency_ms", 0.0)))
                where = answer.get("defect_map")
                if where and float(where["peak_value"]) > surest:
                    surest, box = float(where["peak_value"]), list(where["box"])
        d = client.get(f"/v1/parts/{part.part_id}/decision", params={"station": station, "wait_ms": wait_ms},
                       headers=headers)
        d.raise_for_status()
        body: dict[str, Any] = d.json()
        elapsed = (time.perf_counter() - started) * 1000.0
        views = body.get("views") or []
        versions = {v.get("model_version") for v in views if v.get("model_version")}
        defect = next((v.get("defect_class") for v in views if v.get("decision") == "reject"), None)
        return PartOutcome(part.part_id, part.true_label, body.get("decision") or "reject", defect,
                           body.get("failsafe_reason"), ",".join(sorted(versions)) or None, elapsed, server_ms,
                           box)

    report = LineReport(good_class=good_class)
    started = time.perf_counter()
    slots = [None if rate_hz is None else started + i / rate_hz for i in range(len(parts))]
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        if concurrency <= 1:
            report.outcomes = [one(client, p, t) for p, t in zip(parts, slots, strict=True)]
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                report.outcomes = list(pool.map(lambda pt: one(client, *pt), zip(parts, slots, strict=True)))
    report.wall_s = time.perf_counter() - started
    return report


def located(outcomes: Iterable[PartOutcome], footprint: Callable[[PartOutcome], np.ndarray | None],
            good_class: str | None = "good") -> tuple[int, int]:
    """(hits, judged): of the defective parts rejected with a defect map whose true defect
    ``footprint`` is known (``bool[H, W]`` in frame pixels), how many had a map box covering at
    least one pixel of it."""
    hits = judged = 0
    for o in outcomes:
        if o.true_label == good_class or o.decision != "reject" or o.defect_box is None:
            continue
        truth = footprint(o)
        if truth is None or not truth.any():
            continue
        x, y, w, h = o.defect_box
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        judged += 1
        hits += bool(truth[y0:y1, x0:x1].any())
    return hits, judged
