"""What the defect map costs per frame: the same model exported with and without its map output.

    python bench/map_cost.py [--arch linecnn] [--size 128] [--runs 400]

Exports one randomly initialised model (with the test-time mirror, as the defaults export it)
twice, once with the ``defect_map`` output and once without, and times single-frame runs of
both in onnxruntime (one thread), interleaved so both see the same machine load. Prints the
medians and their ratio. No target: the map is one position-wise head over the last feature
grid, and this shows what that is next to the network.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="linecnn")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    import torch

    from inspection.card import InputSpec
    from training.export import export_onnx, ort_session
    from training.models import Classifier, FlipAverage, get_model

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="map-cost-"))
    spec = InputSpec(height=args.size, width=args.size)
    model = FlipAverage(Classifier(get_model(args.arch, num_classes=6), mean=[0.5], std=[0.2]),
                        hflip=True, vflip=False).eval()
    export_onnx(model, folder / "plain.onnx", spec)
    export_onnx(model, folder / "mapped.onnx", spec, map_output="defect_map", good_index=0)
    sessions = {"without map": ort_session(folder / "plain.onnx"), "with map": ort_session(folder / "mapped.onnx")}
    frame = np.random.default_rng(0).integers(0, 256, (1, 1, args.size, args.size), dtype=np.uint8)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        for _ in range(50):
            session.run(None, {"pixels": frame})
    names = list(sessions)
    for i in range(args.runs):
        for name in names if i % 2 else names[::-1]:  # alternate who goes first
            started = time.perf_counter()
            sessions[name].run(None, {"pixels": frame})
            times[name].append(time.perf_counter() - started)
    medians = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    print(f"{args.arch} at {args.size} px, mirror on, onnxruntime 1 thread, {args.runs} interleaved runs each:")
    for name, ms in medians.items():
        print(f"  {name:12s} p50 {ms:.3f} ms")
    print(f"  ratio with/without: {medians['with map'] / medians['without map']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
