"""Domain errors, in one place.

Every message names the bad value and what is allowed, so a quality engineer reading a
CLI message or an HTTP 4xx body knows what to fix. Errors are mapped to HTTP status codes
only in ``serving/`` (see ``serving.errors``) and to exit codes only in the CLI.

Each class also declares ``failsafe_code``: the reason recorded (and counted) when a frame's
view is fail-safe rejected because of that error. Subclasses inherit it, so a new error
needs no change where serving rejects.
"""

from __future__ import annotations


class InspectionError(Exception):
    """Base class of every error this project raises on purpose."""

    #: A short machine-readable code, used in HTTP bodies and log records.
    code: str = "inspection_error"
    #: The reason recorded when a view is fail-safe rejected because of this error.
    failsafe_code: str = "server_error"


class ConfigError(InspectionError):
    """A setting or config file is invalid (bad value, unsafe default, unknown key)."""

    code = "invalid_config"


class DatasetError(InspectionError):
    """A dataset on disk, or one being imported, is not usable as it is."""

    code = "invalid_dataset"


class ImageError(InspectionError):
    """An image cannot be decoded, is truncated, empty or has the wrong dimensions."""

    code = "invalid_image"
    failsafe_code = "undecodable_frame"


class FrameQualityError(ImageError):
    """A frame whose statistics are far outside the model's reference (black, overexposed, out of
    focus, another camera): fail-safe rejected instead of scored (``inspection.monitoring.gate``)."""

    failsafe_code = "frame_quality"


class ModelCardError(InspectionError):
    """A model card is missing, does not validate, or contradicts its files."""

    code = "invalid_model_card"


class ModelIntegrityError(ModelCardError):
    """A model's files do not match the sha256 recorded in its card, or golden frames disagree."""

    code = "model_integrity"


class RegistryError(InspectionError):
    """A model name, version or station is not in the registry, or a promotion is refused."""

    code = "registry_error"


class PromotionRefused(RegistryError):
    """The promotion gate refused a model (worse escape rate, bad hashes, ...)."""

    code = "promotion_refused"


class NotFoundError(InspectionError):
    """A referenced object (station, camera, part, record, frame) does not exist."""

    code = "not_found"


class MisdirectedError(InspectionError):
    """The request is for a station another serving process answers (``serve --workers``)."""

    code = "misdirected"


class ValidationError(InspectionError):
    """A request or argument is malformed (empty part id, bad label, unknown class, ...)."""

    code = "invalid_request"
    failsafe_code = "invalid_request"


class ConflictError(InspectionError):
    """The request conflicts with the current state (e.g. a concurrent relabel)."""

    code = "conflict"


class OverloadedError(InspectionError):
    """The scoring queue is full; the caller should retry after a short delay."""

    code = "overloaded"
    failsafe_code = "overload"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(InspectionError):
    """The server has not finished starting (or is shutting down); the caller should retry."""

    code = "not_ready"


class ModelError(InspectionError):
    """The model failed to score a frame (runtime error, wrong output shape)."""

    code = "model_error"
    failsafe_code = "model_error"


class ModelUntrustedError(ModelError):
    """The station's active model failed verification (hashes or golden frames) when the server
    started: every frame is fail-safe rejected until a trusted version is active (HTTP 503)."""

    code = "model_untrusted"
    failsafe_code = "model_untrusted"


class LogIntegrityError(InspectionError):
    """The inspection log's hash chain does not verify."""

    code = "log_integrity"


class TrainingError(InspectionError):
    """Training cannot start or cannot honour what was asked (e.g. an unsupportable target)."""

    code = "training_error"


class AuthenticationError(InspectionError):
    """No API key, or a key that is not configured (HTTP 401)."""

    code = "unauthenticated"


class PermissionDeniedError(InspectionError):
    """A valid API key whose role may not use this route (HTTP 403)."""

    code = "forbidden"


class PayloadTooLargeError(ValidationError):
    """A request body is over the configured limit (HTTP 413)."""

    code = "payload_too_large"
    failsafe_code = "payload_too_large"


class FrameTooLargeError(PayloadTooLargeError, ImageError):
    """An encoded image whose header declares more pixels than the limit; it is refused before
    decoding (HTTP 413). Also an ``ImageError``, so dataset import skips or names it like any
    other unusable image."""

    code = "frame_too_large"
    failsafe_code = "frame_too_large"


class UnsupportedMediaError(ValidationError):
    """A frame's content type is not one the server decodes (HTTP 415)."""

    code = "unsupported_media_type"
    failsafe_code = "unsupported_media_type"


class LogUnavailableError(InspectionError):
    """The inspection log cannot commit or be read: database down, locked, or a commit timed out."""

    code = "log_unavailable"
    failsafe_code = "log_unavailable"


class StorageError(LogUnavailableError):
    """The log's files cannot be written: read-only filesystem, permission denied, I/O error."""

    code = "storage_error"
    failsafe_code = "storage_error"


class StorageFullError(StorageError):
    """The disk holding the log or its frames is full (or below the configured free-space floor)."""

    code = "storage_full"
    failsafe_code = "storage_full"
