"""The promotion gate: a candidate may not let more defects through than the active model.

``promote_gated`` first re-scores the candidate's golden frames (``inspection.golden``) and
refuses a version whose outputs differ from its card, then compares the candidate with the
station's active version on a comparison set (the test split of ``data``, scored by
``inspection.compare``) and refuses with ``PromotionRefused`` when the candidate's escape rate
is higher, naming both rates. ``force`` with a non-empty ``reason`` overrides that refusal (never
the golden one); the reason is recorded. Without ``data`` the gate falls back to the escape
rates in the two cards (each measured on its own test split, so the message says so), and when
the cards carry none the promotion goes ahead with the gate marked ``skipped`` (the first
promotion of a station has nothing to compare with either).

``rollback_logged`` runs the same golden check on the version it returns to, before anything
changes. Promotions and rollbacks are appended to the inspection log (kind ``promotion`` /
``rollback``) when a log is given. Serving picks the change up from ``active.json`` on its
next poll; no restart is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspection.compare import Comparison, Split, compare_models
from inspection.dataset.layout import read_dataset
from inspection.errors import ModelIntegrityError, PromotionRefused, ValidationError
from inspection.golden import GoldenResult, check_golden
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.store import SqlInspectionLog
from inspection.registry import DEFAULT_STATION, ModelVersion, Registry


@dataclass
class PromotionResult:
    event: dict[str, Any]
    gate: dict[str, Any]
    comparison: Comparison | None
    record: StoredRecord | None


def _card_escape(mv: ModelVersion) -> float | None:
    try:
        rate = mv.card.metrics["test"]["operating_point"]["escape"]["rate"]
    except (KeyError, TypeError):
        return None
    return float(rate) if isinstance(rate, (int, float)) and not math.isnan(rate) else None


def _gate(active: ModelVersion | None, candidate: ModelVersion, *, data: Path | None, split: Split,
          force: bool) -> tuple[dict[str, Any], Comparison | None]:
    if active is None:
        return {"status": "skipped", "why": "no model is active for the station"}, None
    if active.model_id == candidate.model_id:
        return {"status": "skipped", "why": f"{candidate.model_id} is already active"}, None
    comparison = None
    if data is not None:
        comparison = compare_models(active, candidate, data, split=split)
        ea, eb = comparison.escape["a"], comparison.escape["b"]
        basis = f"the {split} split of {comparison.dataset} ({ea['n']} defective images)"
        if ea["n"] == 0:
            worse, why = True, f"{basis} has no defective images, so escape rates cannot be compared"
        else:
            worse = eb["rate"] > ea["rate"]
            why = (f"escape rate of {candidate.model_id} is {eb['rate']:.2%} ({eb['k']}/{eb['n']}), "
                   f"of the active {active.model_id} {ea['rate']:.2%} ({ea['k']}/{ea['n']}) on {basis}")
        gate = {"basis": "comparison set", "dataset": comparison.dataset, "fingerprint": comparison.dataset_fingerprint,
                "split": split, "active": active.model_id, "active_escape": ea, "candidate_escape": eb,
                "escape_diff": comparison.escape["diff"], "overkill_active": comparison.overkill["a"],
                "overkill_candidate": comparison.overkill["b"]}
    else:
        ra, rb = _card_escape(active), _card_escape(candidate)
        if ra is None or rb is None:
            return {"status": "skipped", "active": active.model_id,
                    "why": "no --data comparison set given and the cards carry no test escape rate"}, None
        worse = rb > ra
        why = (f"escape rate of {candidate.model_id} is {rb:.2%}, of the active {active.model_id} {ra:.2%} "
               "(each on its own test split, from the model cards; pass --data DATASET to compare on the same images)")
        gate = {"basis": "model cards", "active": active.model_id, "active_escape": {"rate": ra},
                "candidate_escape": {"rate": rb}}
    gate["why"] = why
    if worse and not force:
        raise PromotionRefused(f"promotion of {candidate.model_id} refused: {why}; it would let more defects through. "
                               "Pass --force --reason TEXT to promote anyway (the reason is recorded)")
    gate["status"] = "overridden" if worse else "passed"
    return gate, comparison


def _check_golden(candidate: ModelVersion) -> GoldenResult:
    # Hashes only prove the files match the card; a card re-hashed over altered weights would pass
    # them. The golden frames are re-scored before anything changes, so a version the server
    # would refuse at its next start is refused here, by the person promoting it.
    try:
        return check_golden(candidate.card, candidate.path)
    except ModelIntegrityError as exc:
        raise PromotionRefused(f"promotion of {candidate.model_id} refused: golden-frame check failed: {exc}. "
                               "Nothing was changed; re-export the model or restore its files") from None


def promote_gated(registry: Registry, name: str, version: str, *, station: str = DEFAULT_STATION,
                  data: Path | None = None, split: Split = "test", force: bool = False, reason: str = "",
                  actor: str = "cli", log: SqlInspectionLog | None = None) -> PromotionResult:
    """Promote ``name/version`` for ``station`` if it passes the gate; record it in ``log``.

    Raises:
        ValidationError: ``force`` without a reason.
        PromotionRefused: the candidate's golden frames do not re-score as its card says, or its
            escape rate is worse than the active model's.
        RegistryError / ModelIntegrityError: unknown version, files that do not match the card.
        DatasetError / ModelError: the comparison set (read first, even where there is nothing to
            compare with) or a model cannot be used.
    """
    if force and not reason.strip():
        raise ValidationError("--force needs --reason TEXT: why the gate is overridden (it is recorded in the log)")
    if data is not None:
        # Read now: the gate is skipped where no model is active yet, and a comparison set given
        # but never read would go unnoticed however wrong its path.
        read_dataset(data)
    candidate = registry.get(name, version, verify=True)
    golden = _check_golden(candidate)
    gate, comparison = _gate(registry.active(station), candidate, data=data, split=split, force=force)
    event = registry.promote(name, version, station=station, actor=actor, reason=reason)
    record = None
    if log is not None and event["action"] != "already_active":  # nothing changed, nothing to record
        record = log.append(
            LogEntry(
                kind="promotion",
                station=station,
                model_name=name,
                model_version=version,
                model_sha256=candidate.card.files.get(candidate.card.model_file),
                actor=actor,
                data={
                    "previous": event.get("previous"),
                    "reason": reason,
                    "forced": force,
                    "gate": gate,
                    "golden": {"frames": golden.frames, "max_diff": golden.max_diff,
                               "tolerance": golden.tolerance},
                    "at": event["at"],
                },
            )
        )
    return PromotionResult(event, gate, comparison, record)


def rollback_logged(registry: Registry, *, station: str = DEFAULT_STATION, actor: str = "cli", reason: str = "",
                    log: SqlInspectionLog | None = None) -> tuple[dict[str, Any], StoredRecord | None]:
    """Re-activate the previous version (``ModelRegistry.rollback``) if its golden frames
    re-score as its card says, and record it in ``log``.

    Raises:
        RegistryError: nothing to roll back to.
        PromotionRefused: the previous version's golden frames do not re-score as its card says
            (nothing changed).
        ModelIntegrityError: a file of the previous version does not match its card.
    """
    golden: list[GoldenResult] = []

    def check(target: ModelVersion) -> None:
        # The version rolled back to is activated as surely as a promoted one: the same check as
        # promote's, or weights altered since (card re-hashed) would go live by the back door.
        try:
            golden.append(check_golden(target.card, target.path))
        except ModelIntegrityError as exc:
            raise PromotionRefused(f"rollback of station {station!r} to {target.model_id} refused: golden-frame "
                                   f"check failed: {exc}. Nothing was changed; re-export the model or restore its "
                                   "files") from None

    event = registry.rollback(station=station, actor=actor, reason=reason, check=check)
    record = None
    if log is not None:
        name, _, version = event["model"].partition("/")
        record = log.append(
            LogEntry(
                kind="rollback",
                station=station,
                model_name=name,
                model_version=version,
                actor=actor,
                data={"previous": event["previous"], "reason": reason, "at": event["at"],
                      "golden": {"frames": golden[0].frames, "max_diff": golden[0].max_diff,
                                 "tolerance": golden[0].tolerance}},
            )
        )
    return event, record
