"""Does a colour line keep its colour? Stains of the surrounding brightness, both modes.

None of the shared datasets is colour (magnetic tile and ELPV are gray, NEU-DET stores gray as
R=G=B), so this bench generates a colour camera's frames of a gray, shaded part (each channel
its own sensor noise) with two defect types of 5-9 px: a **stain**, whose colour shifts along a
random direction orthogonal to the luma weights (the same brightness as around it), and a
**dent**, darker. It trains, one after the other on the same set and split:

* classifier: the defaults (the recipe keeps colour: ``recipe.colour_channels``) against
  ``--channels 1`` (every frame converted to gray, as before 2026-12-06);
* anomaly mode (good frames only): the defaults against the synthesizer without its
  colour-only kind (``Synthesizer._discolour``, patched out for that arm only);

and prints, per arm, the test AUROC of good vs stain and good vs dent (the exported ONNX graph
on serving's preprocessing). Run (a few minutes on 2 cores):

    .venv/bin/python bench/colour_stains.py [--seeds 0 1] [--out /tmp/colour-stains]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspection.dataset.layout import Sample, write_dataset
from inspection.dataset.split import read_split
from inspection.metrics import roc_auc
from inspection.preprocess import prepare_frame
from training import anomaly
from training.config import load_config
from training.train import main as train_main

#: OpenCV's BGR order: the luma weights a gray conversion applies.
LUMA_BGR = np.array([0.114, 0.587, 0.299])
SIZE = 64


def generate(dest: Path, seed: int) -> Path:
    """240 good frames, 60 stains, 60 dents (64 x 64 colour PNG)."""
    rng = np.random.default_rng(seed)
    items = []
    for label, n in (("good", 240), ("stain", 60), ("dent", 60)):
        for i in range(n):
            img = rng.normal(rng.uniform(90, 160), 5.0, (SIZE, SIZE, 3))
            img += cv2.GaussianBlur(rng.normal(0, 20, (SIZE, SIZE)), (0, 0), 6)[:, :, None]  # shading
            k = int(rng.integers(5, 10))
            y, x = (int(v) for v in rng.integers(0, SIZE - k, 2))
            if label == "stain":
                d = rng.normal(0, 1, 3)
                d -= LUMA_BGR * (d @ LUMA_BGR) / (LUMA_BGR @ LUMA_BGR)
                img[y : y + k, x : x + k] += d / np.linalg.norm(d) * rng.uniform(8, 18)
            elif label == "dent":
                img[y : y + k, x : x + k] -= rng.uniform(8, 18)
            ok, buf = cv2.imencode(".png", np.clip(np.rint(img), 0, 255).astype(np.uint8))
            assert ok
            items.append((Sample(f"images/{label}/{i:03d}.png", label), buf.tobytes()))
    write_dataset(dest, name=dest.name, classes=["good", "stain", "dent"], good_class="good", items=items)
    return dest


@contextmanager
def without_colour_kind() -> Iterator[None]:
    """The synthesizer as it was before its colour-only kind (the ablation arm)."""
    original = anomaly.Synthesizer.__call__

    def call(self: anomaly.Synthesizer, chw: np.ndarray) -> np.ndarray:
        out = chw.astype(np.float32)
        self.kinds[int(self.rng.integers(len(self.kinds)))](out)
        return np.clip(out, 0, 255).astype(np.uint8)

    anomaly.Synthesizer.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        anomaly.Synthesizer.__call__ = original  # type: ignore[method-assign]


def per_class_auroc(version: Path, data: Path) -> dict[str, float]:
    import onnxruntime as ort

    from inspection.card import load_card

    card = load_card(version)
    assert card.dataset.split_file
    split = read_split(version / card.dataset.split_file)
    session = ort.InferenceSession(str(version / card.model_file), providers=["CPUExecutionProvider"])
    scores, labels = [], []
    for path, part in sorted(split.items()):
        if part == "test":
            _, pixels = prepare_frame((data / path).read_bytes(), card.input)
            probs = session.run(["probabilities"], {"pixels": pixels[None]})[0][0]
            scores.append(1.0 - float(probs[card.classes.index(card.good_class or "good")]))
            labels.append(path.split("/")[1])
    s, lab = np.array(scores), np.array(labels)
    out = {}
    for cls in ("stain", "dent"):
        keep = (lab == "good") | (lab == cls)
        out[cls] = roc_auc(lab[keep] == cls, s[keep])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=None, help="keep datasets and models here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="colour-stains-"))
    arms: tuple[tuple[str, str, dict[str, object]], ...] = (
        ("classifier", "colour (default)", {}),
        ("classifier", "gray (--channels 1)", {"channels": 1}),
        ("anomaly", "colour kind (default)", {"mode": "anomaly", "max_overkill": 0.05}),
        ("anomaly", "without the colour kind", {"mode": "anomaly", "max_overkill": 0.05}),
    )
    print("| seed | mode | arm | channels | test AUROC, good vs stain | good vs dent |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        data = generate(root / f"data-{seed}", seed)
        for k, (mode, arm, over) in enumerate(arms):
            cfg = {"data": data, "models_dir": root / f"models-{seed}", "name": f"arm{k}-{mode}", "seed": seed,
                   "image_size": SIZE, "epochs": 40, "progress": False, "threads": args.threads, **over}
            if mode == "classifier":
                cfg["max_escape"] = 0.1
            ablate: AbstractContextManager[None] = without_colour_kind() if arm.startswith("without") else nullcontext()
            with ablate:
                result = train_main(load_config(None, cfg))
            auroc = per_class_auroc(result.path, data)
            print(f"| {seed} | {mode} | {arm} | {result.card.input.channels} | {auroc['stain']:.3f} | "
                  f"{auroc['dent']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
