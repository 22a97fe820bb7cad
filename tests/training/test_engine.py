"""The loop: an interrupted run resumed from its checkpoint ends with the same weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.errors import TrainingError
from inspection.metrics import auroc_standard_error
from training import data as D
from training import engine as E
from training.config import AugmentConfig
from training.models import Classifier, get_model


def _fit(tmp_path: Path, *, interrupt_after: int | None = None, resume: dict | None = None) -> Classifier:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 1, 16, 16), dtype=np.uint8)
    labels = np.array([0] * 12 + [1] * 8 + [2] * 4)
    images[labels == 1, :, 4:8, :] = 0  # learnable signal
    E.seed_everything(5)
    model = Classifier(get_model("tinyres", num_classes=3), mean=[0.5], std=[0.25])
    augment = D.LineAugment(AugmentConfig(hflip=True, noise_p=0.5), seed=5)
    dataset = D.ArrayDataset(images, labels, augment)

    def loader(epoch: int) -> torch.utils.data.DataLoader:
        augment.reseed(E.epoch_seed(5, epoch))
        return E.make_loader(dataset, labels, batch_size=8, balance="sampler", n_classes=3, seed=E.epoch_seed(5, epoch))

    def on_epoch(row: dict) -> None:
        if interrupt_after is not None and row["epoch"] == interrupt_after:
            raise KeyboardInterrupt  # the operator's Ctrl-C, before this epoch's checkpoint is written

    E.fit(
        model,
        make_epoch_loader=loader,
        val_images=images,
        val_labels=labels,
        n_classes=3,
        good_index=0,
        epochs=4,
        lr=1e-2,
        weight_decay=0.0,
        loss_fn=torch.nn.CrossEntropyLoss(),
        stopper=E.EarlyStopping(patience=10),
        checkpoint=tmp_path / "checkpoint.pt",
        checkpoint_extra={},
        resume=resume,
        progress=False,
        on_epoch=on_epoch,
    )
    return model


def test_resumed_run_matches_the_uninterrupted_one(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", interrupt_after=3)
    ckpt = E.load_checkpoint(tmp_path / "b")
    assert ckpt["epoch"] == 1  # epoch 3 (index 2) was interrupted before its checkpoint was written
    resumed = _fit(tmp_path / "b", resume=ckpt)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_or_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        E.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot be read"):
        E.load_checkpoint(tmp_path)


def test_early_stopping_waits_for_min_epochs_and_patience() -> None:
    s = E.EarlyStopping(patience=2, min_epochs=4)
    assert s.step(0, score=0.5, loss=1.0)
    assert not s.step(1, score=0.5, loss=1.1)
    assert not s.step(2, score=0.4, loss=1.0)
    assert not s.should_stop(2)  # patience reached, but min_epochs not yet
    assert s.should_stop(3)
    assert s.step(4, score=0.5, loss=0.9)  # same score, lower loss: better


def test_budget_epochs_keeps_the_plan_when_it_fits_and_cuts_it_when_not() -> None:
    budget = E.TimeBudget(deadline=100.0, after_evals=4.0)
    # 10 s used, 5 done; 60 s left after 4 evals of 5 s would allow 6 more epochs of 10 s.
    assert E.budget_epochs(budget, now=20.0, done=5, planned=8, epoch_s=10.0, eval_s=5.0) == 8
    assert E.budget_epochs(budget, now=20.0, done=5, planned=30, epoch_s=10.0, eval_s=5.0) == 11
    assert E.budget_epochs(budget, now=95.0, done=5, planned=30, epoch_s=10.0, eval_s=5.0) == 5  # past it: stop


class _Clock:
    """A simulated ``time.monotonic`` for a run's time budget: it moves only when the data says an
    item took time, so the re-plans a test checks do not depend on how busy the machine is (with
    real sleeps, a suite beside the test once pushed an annealed rate past its bound)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Slow(torch.utils.data.Dataset):
    """A dataset whose epochs take a known time on ``clock``: the machine slower than the recipe planned for."""

    def __init__(self, base: torch.utils.data.Dataset, delay: float, clock: _Clock) -> None:
        self.base, self.delay, self.clock = base, delay, clock

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        self.clock.now += self.delay
        return self.base[i]


class _SlowStart(_Slow):
    """Slow for the first epoch's items, then fast: a machine busy at the start that frees up."""

    def __init__(self, base: torch.utils.data.Dataset, delay: float, clock: _Clock, fast_after: int) -> None:
        super().__init__(base, delay, clock)
        self.left = fast_after

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        self.left -= 1
        if self.left < 0:
            self.delay = 0.0
        return super().__getitem__(i)


class _SlowSpell(_Slow):
    """Fast, but slow for the items ``slow`` (a range of item reads): another job ran for a while."""

    def __init__(self, base: torch.utils.data.Dataset, delay: float, clock: _Clock, slow: range) -> None:
        super().__init__(base, 0.0, clock)
        self.slow_delay, self.slow, self.reads = delay, slow, 0

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        self.delay = self.slow_delay if self.reads in self.slow else 0.002
        self.reads += 1
        return super().__getitem__(i)


def _budget(seconds: float, **kwargs: object) -> E.TimeBudget:
    """A time budget of ``seconds`` on a fresh simulated clock (``_budget_fit``'s data advances it)."""
    return E.TimeBudget(deadline=seconds, clock=_Clock(), **kwargs)  # type: ignore[arg-type]


def _budget_fit(
    tmp_path: Path, *, epochs: int, budget: E.TimeBudget | None, resume: dict | None = None, stop_at: int = 0,
    patience: int = 100, min_epochs: int = 1, delay: float = 0.01, fast_after: int | None = None,
    slow: range | None = None,
) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    labels = np.array([0] * 8 + [1] * 8)
    E.seed_everything(5)
    model = Classifier(get_model("tinyres", num_classes=2), mean=[0.5], std=[0.25])
    base = D.ArrayDataset(images, labels, None)
    # Without a budget nothing times the epochs: the items' time goes on a clock nobody reads.
    clock = budget.clock if budget is not None and isinstance(budget.clock, _Clock) else _Clock()
    dataset = (
        _SlowSpell(base, delay=delay, clock=clock, slow=slow) if slow is not None
        else _Slow(base, delay=delay, clock=clock) if fast_after is None
        else _SlowStart(base, delay=delay, clock=clock, fast_after=fast_after)
    )  # 16 * delay s an epoch (while slow)

    def loader(epoch: int) -> torch.utils.data.DataLoader:
        return E.make_loader(dataset, labels, batch_size=4, balance="none", n_classes=2, seed=E.epoch_seed(5, epoch))

    def on_epoch(row: dict) -> None:
        if row["epoch"] == stop_at:
            raise KeyboardInterrupt  # the operator's Ctrl-C, before this epoch's checkpoint

    return E.fit(
        model, make_epoch_loader=loader, val_images=images, val_labels=labels, n_classes=2, good_index=0,
        epochs=epochs, lr=1e-2, weight_decay=0.0, loss_fn=torch.nn.CrossEntropyLoss(),
        stopper=E.EarlyStopping(patience=patience, min_epochs=min_epochs), checkpoint=tmp_path / "checkpoint.pt",
        checkpoint_extra={},
        resume=resume, progress=False, budget=budget, on_epoch=on_epoch,
    )


def test_a_run_slower_than_planned_shortens_its_schedule_and_still_anneals(tmp_path: Path) -> None:
    # 40 planned epochs of 0.16 s cannot end within 3 s: the schedule is re-planned after the
    # first, to the epochs the 2.84 s left afford with the slack (1 + floor(2.84 / 0.176) = 17).
    fit = _budget_fit(tmp_path, epochs=40, budget=_budget(3.0, after_evals=0.0))
    ran = len(fit["history"])
    assert ran == 1 + math.floor((3.0 - 0.16) / (E.BUDGET_SLACK * 0.16)) == fit["epochs"]
    assert fit["budget"]["planned_epochs"] == 40 and fit["budget"]["epochs"] == ran
    assert "overrun the time budget" in fit["budget"]["reason"]
    # The re-planned one-cycle ends where the run ends: the last epoch's rate is at the end of its
    # decay (the 40-epoch plan would still be near its 1e-2 peak there).
    assert fit["history"][-1]["lr"] < 1e-2 / 1000
    # Without a budget (an engineer's own epochs) the plan is kept.
    kept = _budget_fit(tmp_path / "kept", epochs=3, budget=None)
    assert len(kept["history"]) == 3 and kept["budget"] is None


def test_a_run_faster_than_planned_lengthens_its_schedule_once_and_still_anneals(tmp_path: Path) -> None:
    # 4 planned epochs of ~0.2 s leave most of a 6 s budget unspent: after the third epoch the plan
    # grows to what the budget affords, at most max_epochs.
    fit = _budget_fit(tmp_path, epochs=4, patience=100, min_epochs=2,
                      budget=_budget(6.0, after_evals=0.0, max_epochs=10,
                                          scale_with_epochs=("patience", "min_epochs")))
    ran = len(fit["history"])
    assert 4 < ran <= 10 and fit["epochs"] == ran == fit["budget"]["epochs"]
    assert fit["budget"]["planned_epochs"] == 4 and "affords" in fit["budget"]["reason"]
    # The early-stopping settings were shares of the 4-epoch plan: scaled with it (a stop meant
    # for the old plan's end would otherwise cut the new one off mid-schedule).
    assert fit["budget"]["min_epochs"] == round(2 * ran / 4) and fit["budget"]["patience"] == round(100 * ran / 4)
    # The one-cycle was re-planned to the new end: the last epoch's rate is annealed, and the rate
    # still rose after the re-plan (it happened during the warm-up, not in the decay).
    assert fit["history"][-1]["lr"] < 1e-2 / 50
    assert max(row["lr"] for row in fit["history"][3:]) > fit["history"][2]["lr"]
    # Without max_epochs (or without a budget) the plan is never lengthened.
    kept = _budget_fit(tmp_path / "kept", epochs=4,
                       budget=_budget(6.0, after_evals=0.0))
    assert len(kept["history"]) == 4 and kept["budget"] is None


def test_a_cut_then_lengthened_plan_records_both_re_plans_in_order(tmp_path: Path) -> None:
    # Epoch 1 takes >= 1.6 s: 12 epochs cannot fit 10 s and the plan is cut (to about 5). Then epochs take
    # milliseconds: after epoch 3 the budget affords far more, and the plan is lengthened.
    fit = _budget_fit(tmp_path, epochs=12, delay=0.1, fast_after=16,
                      budget=_budget(10.0, after_evals=0.0, max_epochs=30))
    note = fit["budget"]
    cut, longer = note["replans"][0], note["replans"][1]
    assert cut["after_epoch"] == 1 and cut["from_epochs"] == 12 and cut["to_epochs"] < 12
    assert longer["after_epoch"] == 3 and longer["from_epochs"] == cut["to_epochs"] < longer["to_epochs"]
    assert note["planned_epochs"] == 12 and note["epochs"] == note["replans"][-1]["to_epochs"] == fit["epochs"]
    # The lengthening's reason names the cut plan as a re-plan, not as the recipe's plan.
    if len(note["replans"]) == 2:
        assert f"not only the {cut['to_epochs']} epochs of the plan as last re-planned (the recipe planned 12)" in (
            note["reason"])


def test_a_cut_made_during_a_passing_slowdown_is_undone_when_the_machine_is_fast_again(tmp_path: Path) -> None:
    # Fast epochs (16 reads of ~2 ms), except the 4th (16 reads of 0.2 s: another job ran).
    # After epoch 3 the plan grows to 30; the slow epoch makes 30 overrun 30 s and cuts it;
    # once epochs are fast again, the cut is undone (the run is still in its plan's first half).
    fit = _budget_fit(tmp_path, epochs=6, patience=100, min_epochs=3, delay=0.2, slow=range(48, 64),
                      budget=_budget(30.0, after_evals=0.0, max_epochs=30,
                                          scale_with_epochs=("patience", "min_epochs")))
    steps = [(r["after_epoch"], r["from_epochs"], r["to_epochs"]) for r in fit["budget"]["replans"]]
    assert steps[0] == (3, 6, 30)
    assert steps[1][:2] == (4, 30) and steps[1][2] < 30  # cut after the slow epoch
    after, cut_plan, longer = steps[-1]
    assert after > 4 and cut_plan == steps[-2][2] < longer and after <= cut_plan // 2  # undone
    assert fit["epochs"] == longer == len(fit["history"])
    # Patience and the no-stop first half stay the recipe's shares (100 / 3 of its 6 epochs) of
    # the longest plan, scaled from the recipe's values, not from values a re-plan had scaled.
    most = max(30, longer)
    assert fit["budget"]["patience"] == round(100 * most / 6) and fit["budget"]["min_epochs"] == round(3 * most / 6)


#: Seconds per epoch of a real run (ELPV in anomaly mode, 2 threads, an idle machine): they wander
#: by +-10% with nothing else running.
_WANDERING_EPOCHS = [
    18.0, 17.8, 19.4, 18.1, 19.1, 18.2, 19.3, 20.0, 21.1, 22.5, 19.7, 20.4, 17.1, 17.8, 19.7, 20.9, 20.5, 18.8,
    17.9, 17.9, 18.5, 20.4, 19.7, 20.1, 20.1, 17.5, 17.7, 17.1, 17.2, 17.7, 20.2, 20.4, 20.5, 20.0, 20.4, 19.9,
]


def _plans_on_a_clock(
    times: list[float], *, epochs: int, deadline: float, max_epochs: int
) -> list[tuple[int, int, int]]:
    """The re-plans ``replan_epochs`` makes for epochs of the given durations on a simulated clock,
    as (after epoch, from, to): the loop's own bookkeeping of the plan and its record."""
    budget = E.TimeBudget(deadline=deadline, after_evals=0.0, max_epochs=max_epochs)
    now, seen, note, done, steps = 0.0, [], None, 0, []
    while done < epochs:
        seconds = times[done] if done < len(times) else float(np.mean(times))
        now, done = now + seconds, done + 1
        seen.append(seconds)
        if done == epochs:
            break
        replan = E.replan_epochs(budget, now=now, done=done, epochs=epochs, epoch_times=seen, note=note, eval_s=0.0)
        if replan is not None:
            note = {"replans": E._replans(note, after=done, plan=epochs, new=replan[0], epoch_s=replan[1])}
            steps.append((done, epochs, replan[0]))
            epochs = replan[0]
    return steps


def test_epoch_times_that_wander_by_ten_percent_do_not_make_the_plan_flap() -> None:
    # The run these times come from was re-planned six times in 24 epochs (57, 52, 60, 54, 60, 56
    # epochs) when a cut read the last three epochs' mean and its undo their median; each re-plan
    # rebuilds the learning rate's schedule.
    for deadline in (1160.0, 1170.0, 1180.0):
        steps = _plans_on_a_clock(_WANDERING_EPOCHS, epochs=25, deadline=deadline, max_epochs=150)
        assert steps[0][:2] == (3, 25) and steps[0][2] > 50  # lengthened after the third epoch
        cuts = [s for s in steps if s[2] < s[1]]
        assert len(cuts) <= 1 and len(steps) <= 3, steps
        # The run ends within its deadline (the simulated clock: the plan's epochs at these times).
        assert sum((_WANDERING_EPOCHS + [float(np.mean(_WANDERING_EPOCHS))] * 100)[: steps[-1][2]]) <= deadline


def test_a_slowdown_that_lasts_cuts_the_plan_and_a_machine_fast_again_undoes_the_cut() -> None:
    # 10 s epochs, then 30 s from the 6th to the 8th (another job), then 10 s again.
    times = [10.0] * 5 + [30.0] * 3 + [10.0] * 100
    steps = _plans_on_a_clock(times, epochs=20, deadline=800.0, max_epochs=150)
    assert steps[0] == (3, 20, steps[0][2]) and steps[0][2] > 60  # the budget affords ~70 epochs
    cuts = [s for s in steps if s[2] < s[1]]
    assert cuts and all(6 <= c[0] <= 8 for c in cuts)  # while the slow epochs count
    undo = steps[-1]
    # Undone as the slow epochs leave the last three (by epoch 11), back to nearly the plan the
    # budget afforded before them, and the run still ends within its deadline.
    assert undo[2] > cuts[-1][2] and undo[0] <= 11 and undo[2] >= 0.9 * steps[0][2]
    assert sum(times[: undo[2]]) <= 800.0


def test_a_resumed_run_keeps_the_shortened_plan(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _budget_fit(tmp_path, epochs=40, budget=_budget(3.0, after_evals=0.0),
                    stop_at=2)
    ckpt = E.load_checkpoint(tmp_path)  # written after epoch 1, where the plan was first cut
    assert ckpt["epoch"] == 0 and not ckpt["done"]
    shortened = ckpt["epochs"]
    assert shortened < 40 and ckpt["budget"]["epochs"] == shortened
    # Resumed without a budget, it runs to the shortened plan's end (not the original 40).
    resumed = _budget_fit(tmp_path, epochs=40, budget=None, resume=ckpt)
    assert resumed["epochs"] == shortened == len(resumed["history"]) and resumed["budget"] == ckpt["budget"]


def test_a_bf16_fit_hands_back_a_float32_contiguous_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 16, 16), dtype=np.uint8)
    labels = np.array([0] * 8 + [1] * 8)
    model = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25])
    dataset = D.ArrayDataset(images, labels, None)
    fit = E.fit(
        model,
        make_epoch_loader=lambda e: E.make_loader(dataset, labels, batch_size=8, balance="none", n_classes=2, seed=e),
        val_images=images, val_labels=labels, n_classes=2, good_index=0, epochs=2, lr=1e-2, weight_decay=0.0,
        loss_fn=torch.nn.CrossEntropyLoss(), stopper=E.EarlyStopping(patience=10),
        checkpoint=tmp_path / "checkpoint.pt", checkpoint_extra={}, progress=False, precision="bf16",
    )
    assert len(fit["history"]) == 2 and np.isfinite(fit["history"][-1]["train_loss"])
    for name, p in model.state_dict().items():
        if p.is_floating_point():
            assert p.dtype == torch.float32 and p.is_contiguous(), name


# A small line's validation curve (8 defective and 52 good frames: tall frames of three stacked
# ELPV cells, 244 good and 36 defective ones to train on), epochs 1-60 of the default run; 200
# test frames scored the same epochs' weights.
_SMALL_VAL_AUROC = [
    0.305, 0.351, 0.392, 0.452, 0.483, 0.577, 0.632, 0.69, 0.772, 0.839, 0.894, 0.909, 0.892, 0.894, 0.897, 0.894,
    0.892, 0.892, 0.894, 0.885, 0.885, 0.88, 0.868, 0.856, 0.841, 0.841, 0.839, 0.839, 0.837, 0.822, 0.829, 0.834,
    0.837, 0.839, 0.832, 0.827, 0.829, 0.822, 0.815, 0.815, 0.81, 0.812, 0.808, 0.8, 0.798, 0.798, 0.8, 0.8, 0.796,
    0.796, 0.793, 0.788, 0.793, 0.786, 0.776, 0.781, 0.776, 0.776, 0.776, 0.774,
]
_SMALL_VAL_LOSS = [
    0.711, 0.749, 0.799, 0.868, 0.949, 1.032, 1.123, 1.21, 1.295, 1.371, 1.443, 1.508, 1.558, 1.605, 1.651, 1.694,
    1.732, 1.723, 1.708, 1.696, 1.638, 1.595, 1.536, 1.455, 1.377, 1.315, 1.258, 1.156, 1.092, 1.029, 0.962, 0.883,
    0.836, 0.779, 0.721, 0.676, 0.633, 0.604, 0.573, 0.589, 0.537, 0.495, 0.481, 0.47, 0.445, 0.422, 0.382, 0.369,
    0.361, 0.352, 0.355, 0.354, 0.35, 0.355, 0.352, 0.346, 0.347, 0.347, 0.349, 0.349,
]
_SMALL_TEST_AUROC = [
    0.328, 0.363, 0.396, 0.435, 0.479, 0.517, 0.543, 0.571, 0.599, 0.619, 0.64, 0.66, 0.677, 0.684, 0.702, 0.715,
    0.719, 0.721, 0.729, 0.733, 0.739, 0.742, 0.744, 0.745, 0.747, 0.748, 0.747, 0.75, 0.75, 0.752, 0.75, 0.753,
    0.756, 0.755, 0.754, 0.749, 0.755, 0.76, 0.759, 0.759, 0.76, 0.761, 0.762, 0.762, 0.762, 0.76, 0.76, 0.76,
    0.759, 0.76, 0.762, 0.763, 0.766, 0.766, 0.765, 0.766, 0.765, 0.764, 0.764, 0.766,
]


def _kept(resolution: float | None) -> E.EarlyStopping:
    s = E.EarlyStopping(patience=1000, band_se=1.0)
    for epoch, (score, loss) in enumerate(zip(_SMALL_VAL_AUROC, _SMALL_VAL_LOSS, strict=True)):
        se = auroc_standard_error(score, 8, 52) if resolution is None else resolution
        s.step(epoch, score=score, loss=loss, resolution=se)
    return s


def test_a_validation_split_too_small_to_resolve_epochs_does_not_pick_its_noise_peak() -> None:
    exact = _kept(resolution=0.0)  # every difference taken at face value: the old rule
    assert exact.best_epoch + 1 == 12 and _SMALL_TEST_AUROC[exact.best_epoch] == 0.66
    banded = _kept(resolution=None)
    assert banded.top_epoch + 1 == 12
    assert banded.best_epoch + 1 >= 30, "an epoch inside the warm-up's noise peak was kept"
    assert _SMALL_TEST_AUROC[banded.best_epoch] >= 0.75
    note = E.selection_note(banded, n_val=60)
    assert note["epoch"] == banded.best_epoch + 1 and note["top_epoch"] == 12
    assert "within 1 standard error(s)" in note["reason"] and "60 validation images" in note["reason"]


# A second default run on the same small line (epochs 1-74, early stop): its warm-up peak again,
# and a plateau after it that stays just below that peak's band.
_SECOND_VAL_AUROC = [
    0.305, 0.356, 0.401, 0.447, 0.488, 0.582, 0.635, 0.675, 0.776, 0.849, 0.897, 0.906, 0.889, 0.889, 0.865, 0.87,
    0.889, 0.885, 0.875, 0.863, 0.861, 0.853, 0.832, 0.829, 0.822, 0.822, 0.822, 0.822, 0.822, 0.82, 0.817, 0.827,
    0.825, 0.822, 0.827, 0.825, 0.825, 0.822, 0.82, 0.825, 0.822, 0.82, 0.822, 0.817, 0.815, 0.81, 0.81, 0.81, 0.808,
    0.81, 0.81, 0.805, 0.808, 0.812, 0.805, 0.808, 0.808, 0.812, 0.808, 0.81, 0.808, 0.808, 0.808, 0.805, 0.808,
    0.81, 0.81, 0.81, 0.81, 0.812, 0.81, 0.805, 0.803, 0.8,
]
_SECOND_VAL_LOSS = [
    0.711, 0.749, 0.799, 0.868, 0.948, 1.032, 1.125, 1.217, 1.309, 1.394, 1.477, 1.554, 1.62, 1.683, 1.724, 1.738,
    1.756, 1.738, 1.715, 1.732, 1.698, 1.676, 1.627, 1.553, 1.44, 1.381, 1.313, 1.233, 1.184, 1.099, 1.01, 0.892,
    0.828, 0.77, 0.698, 0.634, 0.579, 0.547, 0.514, 0.48, 0.45, 0.432, 0.421, 0.402, 0.377, 0.366, 0.355, 0.349,
    0.345, 0.349, 0.352, 0.35, 0.347, 0.353, 0.355, 0.355, 0.352, 0.35, 0.351, 0.349, 0.355, 0.355, 0.358, 0.363,
    0.367, 0.371, 0.376, 0.38, 0.382, 0.388, 0.392, 0.393, 0.4, 0.407,
]


def _replay(aurocs: list[float], losses: list[float], reference: float, band_se: float = 0.0) -> E.EarlyStopping:
    s = E.EarlyStopping(patience=1000, reference_loss=reference, band_se=band_se)
    for epoch, (score, loss) in enumerate(zip(aurocs, losses, strict=True)):
        s.step(epoch, score=score, loss=loss, resolution=auroc_standard_error(score, 8, 52))
    return s


def test_epochs_that_know_less_than_a_constant_answer_are_not_kept() -> None:
    # Trained on balanced draws of two classes: a constant answer is (0.5, 0.5), loss ln 2.
    reference = E.constant_answer_loss(np.array([0] * 244 + [1] * 36), np.array([0] * 52 + [1] * 8), 2,
                                       balance="sampler")
    assert reference == pytest.approx(math.log(2))
    band_only = _replay(_SECOND_VAL_AUROC, _SECOND_VAL_LOSS, math.inf, band_se=1.0)
    assert band_only.best_epoch + 1 == 11, "the band alone keeps the warm-up's peak on this curve"
    assert _replay(_SECOND_VAL_AUROC, _SECOND_VAL_LOSS, math.inf).best_epoch + 1 == 12  # so does the top score
    kept = _replay(_SECOND_VAL_AUROC, _SECOND_VAL_LOSS, reference)
    assert kept.best_epoch + 1 >= 36 and _SECOND_VAL_LOSS[kept.best_epoch] <= reference
    assert kept.top_epoch + 1 == 36 and kept.uninformative == 35  # epochs 1-35 are above ln 2
    note = E.selection_note(kept, n_val=60)
    assert note["reference_loss"] == pytest.approx(reference, abs=1e-6) and note["uninformative_epochs"] == 35
    assert "the 35 epoch(s) before the first with a validation loss at or below 0.6931" in note["reason"]
    # The first run's curve: the test frames' AUROC of the epoch kept holds with the reference too.
    first = _replay(_SMALL_VAL_AUROC, _SMALL_VAL_LOSS, reference)
    assert first.best_epoch + 1 >= 36 and _SMALL_TEST_AUROC[first.best_epoch] >= 0.75


def test_a_run_that_never_beats_a_constant_answer_still_keeps_an_epoch() -> None:
    s = E.EarlyStopping(patience=2, reference_loss=0.5)
    assert s.step(0, score=0.6, loss=0.9)
    assert s.step(1, score=0.8, loss=0.8)
    assert not s.step(2, score=0.7, loss=0.7)
    assert s.best_epoch == 1 and not s.informed
    assert "every epoch was eligible" in E.selection_note(s, n_val=10)["reason"]
    # The first epoch at or below it sets the others aside, however high they scored.
    assert s.step(3, score=0.55, loss=0.45)
    assert s.best_epoch == 3 and s.top == (0.55, 0.0) and s.bad_epochs == 0 and s.uninformative == 3
    # From then on a loss above it is overconfidence, not ignorance: the epoch counts.
    assert s.step(4, score=0.99, loss=0.6)
    assert not s.step(5, score=0.9, loss=float("nan"))
    assert s.best_epoch == 4 and s.uninformative == 3
    assert "the 3 epoch(s) before the first with a validation loss at or below 0.5000" in (
        E.selection_note(s, n_val=10)["reason"])
    again = E.EarlyStopping(patience=2, reference_loss=0.5)
    again.load(s.state())
    assert (again.informed, again.uninformative, again.best_epoch, again.reference_loss) == (True, 3, 4, 0.5)
    old = {k: v for k, v in s.state().items() if k not in ("reference_loss", "informed", "uninformative")}
    again = E.EarlyStopping(patience=2, reference_loss=0.7)  # a checkpoint from before the reference
    again.load(old)
    assert (again.reference_loss, again.informed, again.best_epoch) == (0.7, True, 4)
    assert not again.step(6, score=0.5, loss=0.1)  # what it kept stays: nothing of it is set aside


def test_patience_counts_from_the_last_rise_of_the_score_too() -> None:
    # A score still rising while its loss climbs: the kept epoch (a tie with a lower loss) stays,
    # and the run goes on as long as the score rises.
    s = E.EarlyStopping(patience=2, band_se=1.0)
    s.step(0, score=0.80, loss=0.50, resolution=0.05)
    for epoch, score in enumerate((0.81, 0.82, 0.83, 0.84), start=1):
        assert not s.step(epoch, score=score, loss=0.5 + 0.05 * epoch, resolution=0.05)
        assert s.bad_epochs == 0 and not s.should_stop(epoch)
    assert s.best_epoch == 0 and s.top_epoch == 4
    assert not s.step(5, score=0.83, loss=0.9, resolution=0.05) and not s.should_stop(5)
    assert not s.step(6, score=0.83, loss=0.9, resolution=0.05) and s.should_stop(6)


def test_by_default_only_exact_ties_go_to_the_lower_loss() -> None:
    s = E.EarlyStopping(patience=5)
    assert s.step(0, score=0.80, loss=0.5, resolution=0.05)
    assert not s.step(1, score=0.79, loss=0.1, resolution=0.05)  # within a standard error, but lower
    assert s.step(2, score=0.80, loss=0.4, resolution=0.05)  # the same score, a lower loss
    note = E.selection_note(s, n_val=100)
    assert (note["epoch"], note["top_epoch"], note["resolution"]) == (3, 1, 0.05)
    assert note["reason"] == "epoch 3: the highest validation score (0.8000), tied with epoch 1's, with a lower " \
        "validation loss (0.4000)"


def test_constant_answer_loss_follows_the_draws() -> None:
    train, val = np.array([0] * 90 + [1] * 10), np.array([0] * 8 + [1] * 2)
    natural = E.constant_answer_loss(train, val, 2, balance="none")
    assert natural == pytest.approx(-(8 * math.log(0.9) + 2 * math.log(0.1)) / 10)
    assert E.constant_answer_loss(train, val, 3, balance="sampler") == pytest.approx(math.log(2))  # class 2 absent
    # Inverse-frequency weights fit the even answer too, whatever the draws.
    assert E.constant_answer_loss(train, val, 2, balance="weights") == pytest.approx(math.log(2))
    assert E.constant_answer_loss(train, np.array([], dtype=int), 2, balance="none") == math.inf


def test_a_far_better_epoch_moves_the_band_and_is_kept() -> None:
    s = E.EarlyStopping(patience=3, band_se=1.0)
    assert s.step(0, score=0.70, loss=1.0, resolution=0.05)
    assert s.step(1, score=0.68, loss=0.9, resolution=0.05)  # a tie: within the band
    assert not s.step(2, score=0.60, loss=0.5, resolution=0.05)  # resolved as worse, whatever its loss
    assert s.step(3, score=0.90, loss=0.8, resolution=0.02)  # resolved as better: the band moves up
    assert not s.step(4, score=0.86, loss=0.1, resolution=0.02)
    assert s.best_epoch == 3 and s.top == (0.9, 0.02)
    state = s.state()
    again = E.EarlyStopping(patience=3)
    again.load(state)
    assert (again.top, again.top_epoch, again.best_epoch) == (s.top, s.top_epoch, s.best_epoch)
    old = {k: v for k, v in state.items() if k not in ("top", "top_epoch")}  # a checkpoint from before the band
    again.load(old)
    assert again.top == (0.9, 0.0) and again.top_epoch == again.best_epoch == 3
