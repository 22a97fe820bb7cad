"""Export memory vs number of records: N logged inspections exported to CSV (and JSON Lines).

Prints the peak Python heap (tracemalloc) while exporting 1,000 and 10,000 records side by
side; with a streamed export the two figures are about the same, i.e. memory does not grow
with the number of rows. Usage::

    python bench/log_export_memory.py [--rows 1000 10000] [--url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from inspection.log.export import iter_export
from inspection.log.records import LogEntry
from inspection.log.store import SqlInspectionLog, open_log


def fill(log: SqlInspectionLog, n: int, *, seed: int = 0) -> None:
    """Append ``n`` realistic inspection records (concurrently, so group commit batches them)."""
    rng = random.Random(seed)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)

    def entry(i: int) -> LogEntry:
        reject = rng.random() < 0.1
        ok = rng.random()
        return LogEntry(
            kind="inspection", time=t0 + timedelta(seconds=i), station=f"press-{i % 4}", camera="top",
            part_id=f"SN{i:08d}", frame_sha256=uuid.uuid4().hex * 2, decision="reject" if reject else "pass",
            defect_class="scratch" if reject else None,
            scores={"good": ok, "scratch": 1 - ok, "dent": 0.0, "crack": 0.0}, threshold=0.5,
            model_name="coating", model_version="12", model_sha256="ab" * 32, latency_ms=rng.uniform(2, 9),
        )

    async def go() -> None:
        for start in range(0, n, 500):
            await asyncio.gather(*(log.append_async(entry(i)) for i in range(start, min(n, start + 500))))

    asyncio.run(go())


def export_peak(log: SqlInspectionLog, fmt: str, out: Path) -> tuple[int, int, float]:
    """(peak heap bytes, bytes written, seconds) for exporting every record to ``out``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    written = 0
    with out.open("w", encoding="utf-8", newline="") as fh:
        for chunk in iter_export(log, fmt):
            fh.write(chunk)
            written += len(chunk)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, os.path.getsize(out), elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--url", default=None, help="PostgreSQL url (default: a temporary SQLite log)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            if args.url:
                import sqlalchemy as sa

                schema = "bench_" + uuid.uuid4().hex[:12]
                admin = sa.create_engine(args.url)
                with admin.begin() as c:
                    c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
                log = open_log(args.url, schema=schema, frames_dir=Path(tmp) / "frames")
            else:
                log = open_log(f"sqlite:///{tmp}/log-{n}.db", sqlite_synchronous="NORMAL")
            try:
                t = time.perf_counter()
                fill(log, n)
                fill_s = time.perf_counter() - t
                row = [n, fill_s]
                for fmt in ("csv", "jsonl"):
                    row += export_peak(log, fmt, Path(tmp) / f"out-{n}.{fmt}")
                results.append(row)
            finally:
                log.close()
                if args.url:
                    with admin.begin() as c:
                        c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                    admin.dispose()
    store = "PostgreSQL" if args.url else "SQLite"
    print(f"export memory ({store}); peak = tracemalloc peak of the Python heap during the export")
    print(f"{'rows':>7} {'fill s':>7} | {'CSV peak KiB':>12} {'CSV MiB':>8} {'CSV s':>6} | "
          f"{'JSONL peak KiB':>14} {'JSONL MiB':>9} {'JSONL s':>7}")
    for n, fill_s, cp, cb, cs, jp, jb, js in results:
        print(f"{n:>7} {fill_s:>7.1f} | {cp / 1024:>12.0f} {cb / 2**20:>8.1f} {cs:>6.2f} | "
              f"{jp / 1024:>14.0f} {jb / 2**20:>9.1f} {js:>7.2f}")
    if len(results) >= 2:
        first, last = results[0], results[-1]
        print(f"rows x{last[0] / first[0]:.0f} -> CSV peak x{last[2] / first[2]:.2f}, "
              f"JSONL peak x{last[5] / first[5]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
