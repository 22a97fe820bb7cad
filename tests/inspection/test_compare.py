"""Model comparison on a shared test split, and the promotion gate (real ONNX models, real log)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.cli import main as cli
from inspection.compare import compare_models, paired_difference
from inspection.dataset.layout import Sample, write_dataset
from inspection.log.query import RecordFilter, query_records
from inspection.log.store import open_log
from inspection.metrics import wilson_interval
from inspection.registry import ModelRegistry
from tests.helpers.tiny_model import make_model_version, score

# brightness per class: the tiny model rejects dark frames; "dent" frames sit near the threshold.
LEVELS = {"good": [225, 230, 235, 240, 245, 250], "scratch": [10, 20, 30, 40], "dent": [120, 140, 150, 165, 180]}


def _png(level: int, seed: int) -> bytes:
    img = np.clip(np.random.default_rng(seed).normal(level, 3, (32, 32)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    items = []
    for c, (cls, levels) in enumerate(LEVELS.items()):
        for i, level in enumerate(levels):
            # Every frame its own noise: one noise at two grey levels is a near duplicate (the
            # thumbnails correlate at 1), and the comparison would count the pair as one unit.
            items.append((Sample(f"images/{cls}/{i}.png", cls, "test"), _png(level, 10 * c + i)))
            items.append((Sample(f"images/{cls}/train{i}.png", cls, "train"), _png(level, 100 + 10 * c + i)))
    data = tmp_path / "data"
    write_dataset(data, name="cmp", classes=["good", "scratch", "dent"], good_class="good", items=items)
    models = tmp_path / "models"
    make_model_version(models, version="v1", threshold=0.5)                 # A: the reference
    make_model_version(models, version="v2", threshold=0.5, bias=1.5)       # B: rejects more (fewer escapes)
    make_model_version(models, version="v3", threshold=0.995)               # C: passes nearly everything
    return data, models


def _expected(models: Path, version: str, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rejects of one version on the test split, by the card's rule, computed here independently."""
    from inspection.dataset.layout import read_dataset

    mv = ModelRegistry(models).get("tiny", version)
    ds = read_dataset(data)
    test = [s for s in ds.samples if s.split == "test"]
    pixels = np.stack([cv2.imread(str(ds.path_of(s)), cv2.IMREAD_GRAYSCALE)[None] for s in test])
    probs = score(mv.path / "model.onnx", pixels)
    rejected = (1.0 - probs[:, 0]) >= mv.card.thresholds.reject
    return np.array([s.label for s in test]), rejected


def test_compare_reports_rates_recalls_and_paired_differences(setup: tuple[Path, Path]) -> None:
    data, models = setup
    reg = ModelRegistry(models)
    c = compare_models(reg.get("tiny", "v1"), reg.get("tiny", "v2"), data)
    truth, rej_a = _expected(models, "v1", data)
    _, rej_b = _expected(models, "v2", data)
    defect = truth != "good"
    assert c.n == len(truth) == 15 and c.split == "test"
    assert c.escape["a"]["k"] == int(np.sum(defect & ~rej_a)) and c.escape["a"]["n"] == int(defect.sum())
    assert c.escape["b"]["k"] == int(np.sum(defect & ~rej_b))
    assert c.overkill["b"]["k"] == int(np.sum(~defect & rej_b)) and c.overkill["b"]["n"] == 6
    assert c.escape["b"]["k"] < c.escape["a"]["k"]  # the steering works: B rejects the near-threshold dents
    lo, hi = wilson_interval(c.escape["a"]["k"], c.escape["a"]["n"])
    assert (c.escape["a"]["ci_low"], c.escape["a"]["ci_high"]) == pytest.approx((lo, hi))
    for cls in ("scratch", "dent"):
        m = truth == cls
        assert c.per_class[cls]["a"]["k"] == int(rej_a[m].sum()) and c.per_class[cls]["b"]["k"] == int(rej_b[m].sum())
    assert c.per_class["good"]["a"]["k"] == int((~rej_a[truth == "good"]).sum())
    d = c.escape["diff"]
    assert d["value"] == pytest.approx(c.escape["b"]["rate"] - c.escape["a"]["rate"])
    assert d["ci_low"] <= d["value"] <= d["ci_high"]


def test_paired_difference_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(7)
    n, trials, covered = 40, 1500, 0
    p1, p2 = 0.3, 0.45
    for _ in range(trials):
        u = rng.random(n)
        x = u < p1
        y = u < p2  # strongly correlated pairs, as two models judging the same images are
        d = paired_difference(x, y)
        covered += d["ci_low"] <= p2 - p1 <= d["ci_high"]
    assert covered / trials >= 0.93
    same = np.array([True, False, True, True, False])
    d = paired_difference(same, same)
    assert d["value"] == 0.0 and d["ci_low"] < 0.0 < d["ci_high"]
    swapped = paired_difference(same, ~same)
    back = paired_difference(~same, same)
    assert swapped["value"] == -back["value"]
    assert swapped["ci_low"] == pytest.approx(-back["ci_high"]) and swapped["ci_high"] == pytest.approx(-back["ci_low"])
    with pytest.raises(ValueError):
        paired_difference(same, same[:3])


def test_paired_difference_counted_in_units_covers_the_truth_where_images_are_not_independent() -> None:
    # Four views of each of 30 parts, and a part's views pass or fail together: 120 images hold
    # 30 independent observations. Counted as images the interval is far too narrow.
    rng = np.random.default_rng(11)
    parts, views, trials = 30, 4, 1500
    p1, p2 = 0.3, 0.45
    units = np.repeat(np.arange(parts), views)
    by_image = by_unit = 0
    for _ in range(trials):
        u = np.repeat(rng.random(parts), views)
        x, y = u < p1, u < p2
        d_images, d_units = paired_difference(x, y), paired_difference(x, y, units)
        assert d_units["value"] == d_images["value"] and d_units["units"] == parts and d_units["n"] == parts * views
        by_image += d_images["ci_low"] <= p2 - p1 <= d_images["ci_high"]
        by_unit += d_units["ci_low"] <= p2 - p1 <= d_units["ci_high"]
    assert by_image / trials < 0.85
    assert by_unit / trials >= 0.90
    # One unit per image is the usual interval.
    x, y = rng.random(50) < 0.3, rng.random(50) < 0.5
    assert paired_difference(x, y, np.arange(50)) == pytest.approx(paired_difference(x, y))
    with pytest.raises(ValueError):
        paired_difference(x, y, np.arange(49))


def test_compare_counts_the_units_of_views_and_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Test split: 4 scratched parts seen by 3 cameras each (one source per part), 2 dents, 6 good
    # frames of which two are byte copies of another: 14 defective images of 6 units, 6 good of 4.
    items = []
    for part in range(4):
        for view in range(3):
            items.append((Sample(f"images/scratch/p{part}v{view}.png", "scratch", "test", source=f"part{part}"),
                          _png(20 + 5 * view, 100 * part + view)))
    for i, level in enumerate((120, 180)):
        items.append((Sample(f"images/dent/{i}.png", "dent", "test"), _png(level, 500 + i)))
    good = [_png(level, 600 + i) for i, level in enumerate(LEVELS["good"][:4])]
    for i, data in enumerate([*good, good[0], good[0]]):
        items.append((Sample(f"images/good/{i}.png", "good", "test"), data))
    data = tmp_path / "views"
    write_dataset(data, name="views", classes=["good", "scratch", "dent"], good_class="good", items=items)
    models = tmp_path / "models"
    make_model_version(models, version="v1", threshold=0.5)
    make_model_version(models, version="v3", threshold=0.995)
    reg = ModelRegistry(models)
    c = compare_models(reg.get("tiny", "v1"), reg.get("tiny", "v3"), data)
    assert (c.n, c.units) == (20, 10)
    assert c.escape["a"]["units"] == 6 and c.overkill["a"]["units"] == 4 and c.per_class["scratch"]["a"]["units"] == 4
    for figure, units in ((c.escape, 6), (c.overkill, 4), (c.per_class["scratch"], 4)):
        for side in ("a", "b"):
            r = figure[side]
            assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(r["k"] / r["n"] * units, units))
        assert figure["diff"]["units"] == units
    # Counting units widens the interval over counting images (here: v3 passes the scratches v1 rejects).
    by_images = wilson_interval(c.escape["b"]["k"], c.escape["b"]["n"])
    assert c.escape["b"]["ci_high"] - c.escape["b"]["ci_low"] > by_images[1] - by_images[0]
    assert cli(["models", "compare", "tiny/v1", "tiny/v3", "--data", str(data), "--models-dir", str(models)]) == 0
    text = capsys.readouterr().out
    assert "20 images of 10 units" in text and "of 6 units" in text


def test_cli_compare_and_the_promotion_gate(setup: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data, models = setup
    d = ["--models-dir", str(models)]
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    assert cli(["models", "compare", "tiny/v1", "tiny/v2", "--data", str(data), "--json", *d]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_class"]) == {"good", "scratch", "dent"}
    assert cli(["models", "compare", "tiny/v1", "tiny/v2", "--data", str(data), *d]) == 0
    text = capsys.readouterr().out
    assert "escape rate" in text and "overkill rate" in text and "pts (95% CI" in text

    assert cli(["models", "promote", "tiny/v1", "--station", "s1", "--log-url", log_url, *d]) == 0
    assert "gate skipped" in capsys.readouterr().err  # nothing active yet
    # v3 passes more defects than the active v1: refused, both rates in the message.
    assert cli(["models", "promote", "tiny/v3", "--station", "s1", "--data", str(data), "--log-url", log_url, *d]) == 2
    err = capsys.readouterr().err
    c = compare_models(ModelRegistry(models).get("tiny", "v1"), ModelRegistry(models).get("tiny", "v3"), data)
    assert c.escape["b"]["rate"] > c.escape["a"]["rate"]
    assert f"escape rate of tiny/v3 is {c.escape['b']['rate']:.2%}" in err
    assert f"of the active tiny/v1 {c.escape['a']['rate']:.2%}" in err
    assert ModelRegistry(models).active("s1").model_id == "tiny/v1"  # type: ignore[union-attr]
    # --force needs a reason; with one, the override and its reason are recorded.
    assert cli(["models", "promote", "tiny/v3", "--station", "s1", "--data", str(data), "--force", *d]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert cli(["models", "promote", "tiny/v3", "--station", "s1", "--data", str(data), "--force",
                "--reason", "line trial approved by QA", "--actor", "eve", "--log-url", log_url, *d]) == 0
    assert "gate overridden" in capsys.readouterr().err
    # v2 escapes less than the active v3: passes the gate.
    assert cli(["models", "promote", "tiny/v2", "--station", "s1", "--data", str(data), "--log-url", log_url, *d]) == 0
    assert "gate passed" in capsys.readouterr().out
    assert cli(["models", "rollback", "--station", "s1", "--reason", "rollback drill", "--log-url", log_url, *d]) == 0
    assert "rolled back to tiny/v3" in capsys.readouterr().out

    with open_log(log_url) as log:
        recs = query_records(log, RecordFilter(station="s1"), order="asc").records
        assert [(r.entry.kind, r.entry.model_version) for r in recs] == [
            ("promotion", "v1"), ("promotion", "v3"), ("promotion", "v2"), ("rollback", "v3")]
        forced = recs[1].entry
        assert forced.actor == "eve" and forced.data["forced"] is True  # type: ignore[index]
        assert forced.data["reason"] == "line trial approved by QA"  # type: ignore[index]
        assert forced.data["gate"]["status"] == "overridden"  # type: ignore[index]
        assert recs[2].entry.data["gate"]["status"] == "passed"  # type: ignore[index]
        assert recs[3].entry.data["previous"] == "tiny/v2"  # type: ignore[index]
        assert log.verify().ok


def test_compare_refuses_a_dataset_without_a_test_split(setup: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, models = setup
    items = [(Sample(f"images/{c}/{i}.png", c), _png(lv, i)) for c, lvs in LEVELS.items() for i, lv in enumerate(lvs)]
    write_dataset(
        tmp_path / "nosplit", name="nosplit", classes=["good", "scratch", "dent"], good_class="good", items=items
    )
    args = ["models", "compare", "tiny/v1", "tiny/v2", "--data", str(tmp_path / "nosplit"), "--models-dir", str(models)]
    assert cli(args) == 2
    assert "no images with split 'test'" in capsys.readouterr().err
    assert cli([*args, "--split", "all"]) == 0


def test_promote_reads_data_even_where_no_model_is_active(setup: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, models = setup
    missing = tmp_path / "nonexist"
    assert cli(["models", "promote", "tiny/v1", "--station", "s1", "--data", str(missing),
                "--models-dir", str(models)]) == 2
    assert f"error: dataset folder {missing} does not exist" in capsys.readouterr().err
    assert ModelRegistry(models).active("s1") is None
