"""The training loop: ``train_one_epoch``, ``predict``, early stopping and checkpoints.

Determinism: one seed fixes the weights' initialisation, the sampler's draws and the
augmentation stream; both are re-seeded at every epoch from (seed, epoch), so a run resumed
from a checkpoint at epoch k repeats epochs k+1.. exactly as the uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler

from inspection.errors import TrainingError
from inspection.metrics import (
    auroc_standard_error,
    confusion_matrix,
    macro_recall,
    macro_recall_standard_error,
    roc_auc,
)
from training import distributed
from training.distributed import Ranks, Shard
from training.models import frames_per_batch, scoring_frames

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU) and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def make_loader(
    dataset: torch.utils.data.Dataset,
    labels: np.ndarray,
    *,
    batch_size: int,
    balance: str,
    n_classes: int,
    seed: int,
    ranks: Ranks | None = None,
) -> DataLoader:
    """A loader drawing classes evenly (``balance="sampler"``) or shuffling plainly.

    With several ranks each takes its ``Shard`` of the same draw (every rank seeds the
    generator alike), so one epoch of N ranks covers what one epoch of one process covers.
    """
    generator = torch.Generator().manual_seed(seed)
    drop_last = len(labels) > batch_size
    base: Sampler[int]
    if balance == "sampler":
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
        weights = per_class[labels].tolist()
        base = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
    elif ranks is not None and ranks.distributed:
        base = RandomSampler(range(len(labels)), generator=generator)  # as shuffle=True draws
    else:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0, drop_last=drop_last
        )
    sampler = Shard(base, ranks) if ranks is not None and ranks.distributed else base
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=drop_last)


#: Training precisions: the dtype the forward pass computes in (weights, optimiser and EMA stay
#: float32 either way). ``bf16`` on CPUs that compute it natively, ``fp16`` (with a gradient
#: scaler) on CUDA.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's mixed-precision context for ``precision`` (off for ``fp32``)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    scaler: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the loss and the logits. Images go in channels-last, the
    layout ``fit`` gives the model (oneDNN's convolutions run ~1.5-2x faster in it on CPU)."""
    images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    labels = labels.to(device, non_blocking=True)
    with autocast(device, precision):
        logits = model(images)
        loss = loss_fn(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, logits


def step_seconds(
    model: nn.Module,
    shape: tuple[int, int, int],
    *,
    precision: str,
    batch: int = 8,
    steps: int = 3,
    device: torch.device | None = None,
) -> float:
    """Seconds per image of ``training_step`` on random frames of ``shape`` (C, H, W), after two
    warm-up steps, on a copy of ``model`` (its weights are left alone)."""
    import copy

    device = device or torch.device("cpu")
    probe = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    began = time.perf_counter()
    for i in range(2 + steps):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        training_step(probe, images, labels, optimizer=optimizer, loss_fn=loss_fn, device=device, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / (steps * batch)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scheduler: Any | None = None,
    progress: Any | None = None,
    ema: Any | None = None,
    device: torch.device | None = None,
    scaler: Any | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy on the (augmented) batches.

    The forward pass computes in ``precision`` (``scaler``: fp16's gradient scaler); ``ema``
    (an ``AveragedModel``) is updated after every step.
    """
    model.train()
    device = device or torch.device("cpu")
    total, correct, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        loss, logits = training_step(
            model, images, labels, optimizer=optimizer, loss_fn=loss_fn, device=device, precision=precision,
            scaler=scaler,
        )
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            # DDP keeps every rank's parameters equal: the average follows the wrapped module.
            ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        n = labels.numel()
        total += n
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1).cpu() == labels).sum())
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}", refresh=False)
    if total == 0:
        raise TrainingError("the training split is empty; add images or lower val/test fractions")
    return {"loss": loss_sum / total, "acc": correct / total}


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, *, batch_size: int = 128, device: torch.device | None = None
) -> np.ndarray:
    """Softmax probabilities ``float32[N, K]`` for cached ``uint8[N, C, H, W]`` inputs (eval mode);
    about ``batch_size`` images go through the network at once (``frames_per_batch``)."""
    model.eval()
    device = device or next(model.parameters()).device
    batch_size = frames_per_batch(model, scoring_frames(batch_size, images.shape))
    out: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, n_classes: int, *, good_index: int | None = None
) -> dict[str, Any]:
    """Loss, accuracy, macro recall and (with a good class) the AUROC of P(defect) on cached
    arrays, plus the probabilities and ``resolution``: one standard error of ``selection_score``
    on images this many (what the split can tell apart)."""
    probs = predict(model, images)
    if len(labels) == 0:
        return {"loss": float("nan"), "acc": float("nan"), "macro_recall": float("nan"), "auroc": None, "probs": probs,
                "resolution": math.inf}
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    cm = confusion_matrix(labels, probs.argmax(1), n_classes)
    auroc, resolution = None, macro_recall_standard_error(cm)
    if good_index is not None:
        is_defect = labels != good_index
        if is_defect.any() and (~is_defect).any():
            auroc = roc_auc(is_defect, 1.0 - probs[:, good_index].astype(np.float64))
            resolution = auroc_standard_error(auroc, int(is_defect.sum()), int((~is_defect).sum()))
    return {
        "loss": float(-np.log(p_true).mean()),
        "acc": float(np.trace(cm) / cm.sum()),
        "macro_recall": macro_recall(cm),
        "auroc": auroc,
        "probs": probs,
        "resolution": resolution,
    }


def selection_score(val: dict[str, Any]) -> float:
    """What model selection maximises: the AUROC of P(defect) where there is a good class (the
    reject threshold is calibrated afterwards, so the ranking of good vs defect is what
    matters at any operating point), else macro recall (defect-type classifiers)."""
    return float(val["auroc"]) if val.get("auroc") is not None else float(val["macro_recall"])


@dataclass
class EarlyStopping:
    """Select the epoch to keep, and stop when the selection has not moved for ``patience`` epochs.

    The score is ``selection_score`` (validation AUROC of P(defect), or macro recall without a
    good class); the highest is kept, and a tie goes to the lower validation loss. With
    ``band_se`` > 0, epochs whose score lies within that many standard errors of the highest
    (``evaluate``'s ``resolution``: what the validation split resolves) are ties too. The default
    is 0: one standard error (the twenty-fourth session's rule, for a small line whose highest
    validation AUROC came in the warm-up) kept, on magnetic tile, the lowest-loss epoch of a
    band that opened early on a rising curve (epochs 26 and 31, test AUROC 0.925 and 0.951,
    against 0.966-0.986 for the top epoch in earlier runs); the warm-up's peak is what the
    reference below sets aside.

    The epochs before the first whose validation loss reaches ``reference_loss`` (the loss of a
    constant answer: the class frequencies training fits, ``constant_answer_loss``) are set aside
    once it comes: the network had not yet learnt anything its probabilities show, so whatever
    ranking their score credits it with is the split's luck. Why: on the same small line a
    second run's highest validation AUROC, 0.91, again came in the warm-up (epoch 12, loss 1.55
    against the constant answer's 0.69), and its later epochs (0.81-0.82, loss 0.35) stayed just
    below that peak's band: the band alone kept epoch 11 (test 0.62). Only the start: a loss
    that climbs above the reference late in a run is overconfidence on a few frames, after the
    network has learnt to rank (magnetic tile: validation AUROC still rising at 0.85 with a
    loss of 0.77). Until an epoch reaches the reference every epoch is eligible, so a run
    always keeps one.

    ``best_score`` is the kept epoch's (score, -loss); ``top`` the highest score seen and its
    standard error (among eligible epochs).
    """

    patience: int
    min_epochs: int = 1
    reference_loss: float = math.inf
    #: Standard errors of the top score within which epochs tie (0: exact ties only).
    band_se: float = 0.0
    best_score: tuple[float, float] = (-np.inf, -np.inf)
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    top: tuple[float, float] = (-np.inf, 0.0)
    top_epoch: int = -1
    #: Whether an epoch at or below ``reference_loss`` has been seen (the ones before it are set aside).
    informed: bool = False
    #: Epochs before the first at or below ``reference_loss``.
    uninformative: int = 0

    def step(self, epoch: int, *, score: float, loss: float, resolution: float = 0.0) -> bool:
        """Record an epoch; True when it becomes the kept one."""
        score = round(score, 6)
        if not self.informed:
            if loss <= self.reference_loss:
                # The first epoch better than a constant answer: what was kept before it is set aside.
                self.informed = True
                self.top, self.top_epoch, self.best_score, self.best_epoch = (-np.inf, 0.0), -1, (-np.inf, -np.inf), -1
            else:  # NaN included
                self.uninformative += 1
        rose = score > self.top[0]
        if rose:
            self.top, self.top_epoch = (score, resolution if math.isfinite(resolution) else 0.0), epoch
        band = self.top[0] - self.band_se * self.top[1]
        kept, kept_loss = self.best_score[0], -self.best_score[1]
        # The kept epoch leaves the band only when a far better one arrives: that one is then kept
        # (the weights of earlier epochs inside the new band are gone; it is the best of them).
        improved = score >= band and (kept < band or loss < kept_loss)
        if improved:
            self.best_score, self.best_epoch = (score, -loss), epoch
        # Patience counts the epochs since the selection last moved: a new kept epoch or a higher
        # score. A score still rising keeps the run going even while the kept epoch, a tie with a
        # lower loss, stays put (magnetic tile: the validation AUROC rose to its 75th epoch while
        # the loss climbed from the 35th; counting from the kept epoch alone stopped it there).
        self.bad_epochs = 0 if improved or rose else self.bad_epochs + 1
        return improved

    def should_stop(self, epoch: int) -> bool:
        return epoch + 1 >= self.min_epochs and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {
            "best_score": list(self.best_score),
            "best_epoch": self.best_epoch,
            "top": list(self.top),
            "top_epoch": self.top_epoch,
            "bad_epochs": self.bad_epochs,
            "reference_loss": self.reference_loss,
            "informed": self.informed,
            "uninformative": self.uninformative,
            "history": self.history,
            "patience": self.patience,  # a lengthened plan may have scaled these (TimeBudget)
            "min_epochs": self.min_epochs,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.best_score = tuple(state["best_score"])  # type: ignore[assignment]
        self.best_epoch = int(state["best_epoch"])
        # A checkpoint from before the band: its kept epoch was the top one.
        self.top = tuple(state.get("top", (self.best_score[0], 0.0)))  # type: ignore[assignment]
        self.top_epoch = int(state.get("top_epoch", self.best_epoch))
        self.bad_epochs = int(state["bad_epochs"])
        # A checkpoint from before the reference: every epoch of it was eligible.
        self.reference_loss = float(state.get("reference_loss", self.reference_loss))
        self.informed = bool(state.get("informed", True))
        self.uninformative = int(state.get("uninformative", 0))
        self.history = list(state["history"])
        self.patience = int(state.get("patience", self.patience))
        self.min_epochs = int(state.get("min_epochs", self.min_epochs))


def constant_answer_loss(train_labels: np.ndarray, val_labels: np.ndarray, n_classes: int, *, balance: str) -> float:
    """The validation loss (mean negative log-likelihood, as ``evaluate`` computes it) of a model
    that answers, for every frame, the class frequencies its training objective sees: even over
    the training's classes where the sampler draws them evenly or the loss weighs them by inverse
    frequency (``balance`` "sampler" or "weights": the constant that objective fits), their
    counts otherwise. An epoch above it has learnt nothing its probabilities show
    (``EarlyStopping``)."""
    if len(val_labels) == 0 or len(train_labels) == 0:
        return math.inf
    counts = np.bincount(train_labels, minlength=n_classes).astype(np.float64)
    q = (counts > 0).astype(np.float64) if balance in ("sampler", "weights") else counts
    q = q / q.sum()
    return float(-np.log(np.clip(q[val_labels], 1e-12, 1.0)).mean())


def selection_note(stopper: EarlyStopping, *, n_val: int) -> dict[str, Any]:
    """What model selection kept and why, for the card: the kept epoch, the top one, the standard
    error of the top score (what the validation split resolves), the reference loss and the
    epochs it set aside (epochs 1-based)."""
    kept, top = stopper.best_epoch + 1, stopper.top_epoch + 1
    score, (top_score, se) = stopper.best_score[0], stopper.top
    note: dict[str, Any] = {"epoch": kept, "score": score, "top_epoch": top, "top_score": top_score,
                            "resolution": round(se, 6)}
    if kept == top:
        note["reason"] = f"epoch {kept}: the highest validation score ({score:.4f})"
    elif stopper.band_se == 0:
        note["reason"] = (f"epoch {kept}: the highest validation score ({score:.4f}), tied with epoch {top}'s, with a "
                          f"lower validation loss ({-stopper.best_score[1]:.4f})")
    else:
        note["reason"] = (
            f"epoch {kept} (validation score {score:.4f}, loss {-stopper.best_score[1]:.4f}): within "
            f"{stopper.band_se:g} standard error(s) ({se:.4f} each, what {n_val} validation images resolve) of the "
            f"highest score, {top_score:.4f} at "
            f"epoch {top}, with a lower validation loss"
        )
    if math.isfinite(stopper.reference_loss):
        ref = stopper.reference_loss
        note["reference_loss"] = round(ref, 6)
        note["uninformative_epochs"] = stopper.uninformative
        if not stopper.informed:
            note["reason"] += (f"; no epoch's validation loss reached {ref:.4f}, a constant answer's, so every epoch "
                               "was eligible")
        elif stopper.uninformative:
            note["reason"] += (f"; the {stopper.uninformative} epoch(s) before the first with a validation loss at or "
                               f"below {ref:.4f} (a constant answer's: the class frequencies training fits) were not "
                               "eligible")
    return note


@dataclass(frozen=True)
class TimeBudget:
    """The wall-clock time a run's epochs may take.

    The recipe sizes the epochs from a training step timed before the run (a few seconds); a
    machine that is busier or slower during the run would overrun its budget. After every epoch
    the loop measures what an epoch really takes and, where the planned epochs would end after
    ``deadline`` (with ``after_evals`` validation passes' worth left for calibration and
    export), shortens the schedule: the learning rate's decay is re-planned to end with the new
    last epoch, so the run still finishes annealed.

    On a faster machine (or where the recipe's cost estimate was cautious) the plan would end
    with budget unspent. With ``max_epochs`` set, the loop measures the first
    ``EXTEND_AFTER_EPOCHS`` epochs and lengthens the schedule to the epochs the budget affords
    (at most ``max_epochs``): a network trained from scratch on a few thousand frames is still
    improving when its steps run out (docs/training.md), so the rest of the budget buys steps.
    Early, while the learning rate is still warming up, so the re-planned schedule barely moves
    the rate; later only to undo a cut that a passing slowdown caused (``_may_lengthen``).
    """

    deadline: float  #: ``clock()`` by which the whole run should be done
    after_evals: float  #: the work after the last epoch, in validation passes
    max_epochs: int | None = None  #: lengthen the plan up to this where the budget affords it (None: never)
    #: The early-stopping settings chosen as shares of the epochs (``"patience"``, ``"min_epochs"``):
    #: a lengthened plan scales them alike, or a stop meant for the old plan's end would cut the
    #: new one off mid-schedule, its learning rate still high.
    scale_with_epochs: tuple[str, ...] = ()
    #: What the loop times epochs with. Runs keep ``time.monotonic``; a test passes a simulated
    #: clock its data advances, so what a re-plan sees does not depend on how busy the machine is.
    clock: Callable[[], float] = time.monotonic


#: Epochs timed before a plan is lengthened: the first is slower (allocation, caches), three
#: give a mean the rest of the run keeps to.
EXTEND_AFTER_EPOCHS = 3
#: Lengthened only where the budget buys at least this many times the planned epochs: a few more
#: are not worth re-planning a schedule for.
EXTEND_MIN_GAIN = 1.1
#: Planned with this much to spare (a machine that slows a little later need not cut the schedule).
BUDGET_SLACK = 1.1


def budget_epochs(
    budget: TimeBudget, *, now: float, done: int, planned: int, epoch_s: float, eval_s: float
) -> int:
    """The epochs the run can afford: ``planned`` when they end before the deadline, else as
    many as do (``done`` when not one more fits)."""
    left = budget.deadline - now - budget.after_evals * eval_s
    return min(planned, done + max(0, math.floor(left / max(epoch_s, 1e-9))))


def _may_lengthen(timed: int, *, done: int, epochs: int, note: dict[str, Any] | None) -> bool:
    """Whether the plan may be lengthened after this epoch: once after the first
    ``EXTEND_AFTER_EPOCHS`` epochs (``timed``), and again, once the plan has been cut, while the
    run is still in the first half of its plan.

    Why the second: a cut follows the last few epochs' speed, and a line PC is shared. A minute
    of other work during epochs 5-7 of a magnetic-tile run (a test suite beside it) doubled their
    time; the plan, lengthened to 114 epochs after epoch 3, was cut to 58, and the run ended at
    11 of its 20 minutes while every later epoch ran at the first epochs' speed. After any cut,
    not only right after one: the speed is the last three epochs' mean (``replan_epochs``), which
    comes back over three epochs, and the undo may take as many steps. Only in the first half:
    later, raising the decaying rate again would undo the annealing the cut re-planned.
    """
    if timed == EXTEND_AFTER_EPOCHS:
        return True
    replans = (note or {}).get("replans") or []
    cut = any(r["to_epochs"] < r["from_epochs"] for r in replans)
    return timed > EXTEND_AFTER_EPOCHS and cut and done <= epochs // 2


def replan_epochs(
    budget: TimeBudget,
    *,
    now: float,
    done: int,
    epochs: int,
    epoch_times: list[float],
    note: dict[str, Any] | None,
    eval_s: float,
) -> tuple[int, float] | None:
    """The plan after ``done`` epochs, with the epoch time it was sized with: fewer epochs where
    ``epochs`` would overrun the deadline, more where the budget affords at least
    ``EXTEND_MIN_GAIN`` times them and a lengthening is due (``_may_lengthen``); None: keep it.

    Both directions read the machine's speed alike, as the mean of the last three epochs. Why
    one estimator: the undo of a cut once took their median (to look past the slow epoch the
    cut followed), and on a run whose epochs alternated between 17.8 and 21 s (ELPV in anomaly
    mode) the mean cut the plan and the median lengthened it again, six re-plans in 24 epochs
    (57, 52, 60, 54, 60, 56), each one re-planning the learning rate. With the mean a passing
    slowdown is looked past as it leaves the last three epochs, still early in the plan.
    Each new plan is sized with ``BUDGET_SLACK`` to spare, so a machine that slows a little
    more later need not cut the schedule again (each cut steps the decaying rate down).
    """
    epoch_s = float(np.mean(epoch_times[-3:]))
    if budget_epochs(budget, now=now, done=done, planned=epochs, epoch_s=epoch_s, eval_s=eval_s) < epochs:
        return budget_epochs(budget, now=now, done=done, planned=epochs, epoch_s=BUDGET_SLACK * epoch_s,
                             eval_s=eval_s), epoch_s
    if budget.max_epochs and budget.max_epochs > epochs and _may_lengthen(
        len(epoch_times), done=done, epochs=epochs, note=note
    ):
        more = budget_epochs(budget, now=now, done=done, planned=budget.max_epochs, epoch_s=BUDGET_SLACK * epoch_s,
                             eval_s=eval_s)
        if more >= math.ceil(EXTEND_MIN_GAIN * epochs):
            return more, epoch_s
    return None


def _plan_words(note: dict[str, Any] | None, epochs: int, planned: int) -> str:
    """The plan a re-plan departs from, named as what it is: the recipe's, or an earlier re-plan's
    (read from the record, not from the count: a cut and a lengthening may land on the recipe's)."""
    if not (note or {}).get("replans"):
        return f"the {epochs} epochs planned"
    return f"the {epochs} epochs of the plan as last re-planned (the recipe planned {planned})"


def _replans(
    note: dict[str, Any] | None, *, after: int, plan: int, new: int, epoch_s: float
) -> list[dict[str, Any]]:
    """Every re-plan so far, in order, this one last: the card shows the path from the recipe's
    plan to the one the run ended with (a cut after epoch 1 and a lengthening after epoch 3 would
    otherwise read as one change from the recipe's plan)."""
    return [
        *((note or {}).get("replans") or []),
        {"after_epoch": after, "from_epochs": plan, "to_epochs": new, "epoch_seconds": round(epoch_s, 2)},
    ]


def _one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int, done_steps: int = 0
) -> torch.optim.lr_scheduler.OneCycleLR:
    # Warm-up over the first 15% of the steps, then cosine decay; built at ``done_steps`` when a
    # run's schedule is re-planned (the optimiser's groups already hold their initial rates).
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15, last_epoch=done_steps - 1
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp + rename), so an interrupt never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises:
        TrainingError: missing or unreadable file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist; pass the checkpoint.pt of an interrupted run")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- a torn or foreign file: name it instead of a pickle traceback
        raise TrainingError(f"checkpoint {path} cannot be read: {exc}") from None


def fit(
    model: nn.Module,
    *,
    make_epoch_loader: Callable[[int], DataLoader],
    val_images: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
    good_index: int | None,
    epochs: int,
    lr: float,
    weight_decay: float,
    loss_fn: nn.Module,
    stopper: EarlyStopping,
    checkpoint: Path,
    checkpoint_extra: dict[str, Any],
    use_ema: bool = True,
    device: torch.device | None = None,
    resume: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    ranks: Ranks | None = None,
    budget: TimeBudget | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train with AdamW + one-cycle LR (warm-up, then cosine decay), an EMA of the weights,
    early stopping on ``selection_score`` and a checkpoint after every epoch.

    The EMA weights are the ones evaluated, selected and exported: on a few hundred images the
    raw weights swing with the last batches; their average does not. Returns the history; the
    model ends holding the best (EMA) weights, on the CPU.

    With several ``ranks`` the model is wrapped in DistributedDataParallel for the steps; rank 0
    alone evaluates, decides (best epoch, early stop: broadcast, so no rank can disagree and
    leave the others waiting) and writes the checkpoint. The result's ``distributed`` entry says
    what each rank trained on in its first epoch.

    With a ``budget`` the schedule is shortened when the epochs, as measured, would overrun it,
    and lengthened early on when they would leave much of it unspent, or to undo a cut a passing
    slowdown made (``TimeBudget``); the result's ``epochs`` is the plan the run ended with and
    ``budget`` says why it changed (``None`` when it did not).
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    # Channels-last for the steps (oneDNN's fast layout); handed back contiguous for export.
    model.to(device).to(memory_format=torch.channels_last)
    steps_per_epoch = max(len(make_epoch_loader(0)), 1)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = _one_cycle(optimizer, lr, total_steps)
    # The average spans ~1/10 of the run (decay from the step count, so a short run is not
    # dominated by its random start), never longer than ~1,000 steps.
    decay = min(0.999, max(0.9, 1.0 - 10.0 / total_steps))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if use_ema else None
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and precision == "fp16" else None
    judged = ema.module if ema is not None else model
    start = 0
    best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
    planned, budget_note = epochs, None
    # The early-stopping settings as the recipe sized them for its plan: a lengthened plan scales
    # these, not values an earlier re-plan already scaled.
    recipe_stops = {name: getattr(stopper, name) for name in (budget.scale_with_epochs if budget else ())}
    if resume is not None:
        # The plan the interrupted run had reached (a time budget may have shortened it).
        epochs = int(resume.get("epochs", epochs))
        budget_note = resume.get("budget")
        model.load_state_dict(resume["model"])
        if ema is not None and resume.get("ema") is not None:
            ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        stopper.load(resume["stopper"])
        best_state = resume["best_model"]
        start = int(resume["epoch"]) + 1
        torch.set_rng_state(resume["torch_rng"])
        log.info("resuming at epoch %d of %d from %s", start + 1, epochs, checkpoint)
    ranks = ranks or Ranks()
    main = ranks.main
    stepped: nn.Module = model
    if ranks.distributed:
        # Wrapped after the resume: DDP starts every rank from rank 0's parameters.
        stepped = DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None
        )
    shards: dict[str, Any] | None = None
    n_train = len(make_epoch_loader(0).dataset)  # type: ignore[arg-type]
    epoch_times: list[float] = []
    epoch = start - 1
    clock = budget.clock if budget is not None else time.monotonic
    while epoch + 1 < epochs:
        epoch += 1
        epoch_began = clock()
        loader = make_epoch_loader(epoch)
        bar = tqdm(
            total=n_train, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not (progress and main), unit="img"
        )
        train = train_one_epoch(
            stepped,
            loader,
            optimizer=optimizer,
            loss_fn=loss_fn,
            scheduler=scheduler,
            progress=bar,
            ema=ema,
            device=device,
            scaler=scaler,
            precision=precision,
        )
        bar.close()
        if shards is None and ranks.distributed and isinstance(loader.sampler, Shard):
            shards = distributed.shard_evidence(loader.sampler.positions, ranks, len(loader.sampler.base))  # type: ignore[arg-type]
        if not main:
            # Rank 0 judges; the others follow its decision (same weights, nothing to judge).
            stop, plan = distributed.broadcast(None, ranks)
            if stop:
                break
            if plan != epochs:
                epochs = plan
                scheduler = _one_cycle(optimizer, lr, epochs * steps_per_epoch, (epoch + 1) * steps_per_epoch)
            continue
        eval_began = clock()
        val = evaluate(judged, val_images, val_labels, n_classes, good_index=good_index)
        eval_s = clock() - eval_began
        score = selection_score(val)
        improved = stopper.step(epoch, score=score, loss=val["loss"], resolution=val["resolution"])
        if improved:
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        row = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_macro_recall": val["macro_recall"],
            "val_auroc": val["auroc"],
            "val_score": score,
            "lr": float(scheduler.get_last_lr()[0]),
        }
        stopper.history.append(row)
        auroc = f" auroc {val['auroc']:.4f}" if val["auroc"] is not None else ""
        line = (
            f"epoch {epoch + 1}/{epochs}  train loss {train['loss']:.4f} acc {train['acc']:.3f}  "
            f"val loss {val['loss']:.4f} acc {val['acc']:.3f} macro-recall {val['macro_recall']:.3f}{auroc}"
            f"{'  *best' if improved else ''}"
        )
        if progress:
            tqdm.write(line)
        log.info(line)
        if on_epoch is not None:
            on_epoch(row)
        stop = stopper.should_stop(epoch)
        epoch_times.append(clock() - epoch_began)
        replan = (
            replan_epochs(budget, now=clock(), done=epoch + 1, epochs=epochs, epoch_times=epoch_times,
                          note=budget_note, eval_s=eval_s)
            if budget is not None and not stop and epoch + 1 < epochs else None
        )
        if replan is not None and budget is not None:
            afford, epoch_s = replan
            cut = afford < epochs
            change = (
                f"{_plan_words(budget_note, epochs, planned)} would overrun the time budget" if cut
                else f"the time budget affords {afford} epochs, not only {_plan_words(budget_note, epochs, planned)} "
                f"(at most {budget.max_epochs})"
            )
            budget_note = {
                # A lengthened plan's scaled patience / min_epochs still hold after a cut.
                **(budget_note or {}),
                "planned_epochs": planned,
                "epochs": afford,
                "epoch_seconds": round(epoch_s, 2),
                "replans": _replans(budget_note, after=epoch + 1, plan=epochs, new=afford, epoch_s=epoch_s),
                "reason": f"an epoch takes {epoch_s:.1f} s here: {change}; the schedule now ends after epoch {afford}",
            }
            if not cut:
                for name, value in recipe_stops.items():
                    value = max(getattr(stopper, name), round(value * afford / planned))
                    setattr(stopper, name, value)
                    budget_note[name] = value
            log.log(logging.WARNING if cut else logging.INFO, "time budget: %s", budget_note["reason"])
            if afford <= epoch + 1:
                stop = True  # a cut to the epochs already run
            else:
                scheduler = _one_cycle(optimizer, lr, afford * steps_per_epoch, (epoch + 1) * steps_per_epoch)
            epochs = afford
        distributed.broadcast((stop, epochs), ranks)
        save_checkpoint(
            checkpoint,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "stopper": stopper.state(),
                "best_model": best_state,
                "epoch": epoch,
                "epochs": epochs,
                "budget": budget_note,
                "done": stop or epoch + 1 == epochs,
                "torch_rng": torch.get_rng_state(),
                **checkpoint_extra,
            },
        )
        if stop:
            if epochs > epoch + 1:  # not the time budget's stop, which has set the plan's end here
                log.info(
                    "early stop after epoch %d: the kept epoch has not changed for %d epochs (kept epoch %d)",
                    epoch + 1,
                    stopper.patience,
                    stopper.best_epoch + 1,
                )
            break
    model.load_state_dict(best_state)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    selection = selection_note(stopper, n_val=len(val_labels))
    if selection["epoch"] != selection["top_epoch"]:
        log.info("model selection: %s", selection["reason"])
    return {
        "history": stopper.history,
        "best_epoch": stopper.best_epoch + 1,
        "selection": selection,
        "distributed": shards,
        "epochs": epochs,
        "budget": budget_note,
    }
