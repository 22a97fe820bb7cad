"""The loop: an interrupted run resumed from its checkpoint ends with the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.errors import TrainingError
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
