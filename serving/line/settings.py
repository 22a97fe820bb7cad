"""Settings of a station's line integrations (the ``line:`` section of a station).

Example (inside ``stations.<name>`` of the serving settings)::

    line:
      plc: {result_kind: part, buffer_depth: 8, ack_deadline_s: 2.0, class_codes: {scratch: 1, dent: 2}}
      modbus: {enabled: true, host: 0.0.0.0, port: 5020}
      opcua: {enabled: true, port: 4840, username: line, password: "<secret>"}
      mqtt: {enabled: true, host: 127.0.0.1, port: 1883}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from inspection.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlcSettings(_Section):
    """The result handshake shared by the Modbus and OPC UA servers of a station."""

    #: Which decisions the PLC gets: "part" (the station's decision across its cameras; what a
    #: reject actuator needs) or "inspection" (every camera frame on its own).
    result_kind: Literal["part", "inspection"] = "part"
    #: Results held for a slow PLC; one more decision while full is a fail-safe reject.
    buffer_depth: int = Field(default=8, ge=1, le=1000)
    #: A result not acknowledged this long after it reached the station is flagged in the log.
    ack_deadline_s: float = Field(default=2.0, gt=0, le=60)
    #: How often the heartbeat register/node counts up.
    heartbeat_s: float = Field(default=1.0, gt=0, le=60)
    #: Defect class -> the number the PLC sees in DEFECT_CLASS (1..65534); others read 65535.
    class_codes: dict[str, int] = Field(default_factory=dict)

    @field_validator("class_codes")
    @classmethod
    def _codes(cls, codes: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in codes.items() if not 1 <= v <= 0xFFFE}
        if bad:
            raise ValueError(f"class codes {bad} are out of range: allowed 1..65534 (0 = OK, 65535 = unmapped)")
        if len(set(codes.values())) != len(codes):
            raise ValueError(f"class codes must be distinct, got {codes}")
        return codes


class ModbusSettings(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    #: 502 is the Modbus standard but needs root on Linux; 5020 is the usual unprivileged choice.
    port: int = Field(default=5020, ge=1, le=65535)


class OpcUaSettings(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=4840, ge=1, le=65535)
    #: Anonymous clients are refused unless this is set, and it may be set only in demo mode.
    allow_anonymous: bool = False
    username: str | None = Field(default=None, min_length=1, max_length=64)
    password: SecretStr | None = None
    #: Server certificate (DER or PEM) and private key (PEM). With both, clients must connect with
    #: Basic256Sha256 Sign&Encrypt (and a client certificate); without, only security policy None.
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> OpcUaSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("opcua certificate and private_key go together: set both or neither")
        return self


class MqttSettings(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    #: Topics are ``<topic_prefix>/<station>/decisions`` and ``<topic_prefix>/<station>/status``.
    topic_prefix: str = Field(default="inspection", min_length=1, max_length=128)
    #: Decisions waiting while the broker is unreachable; beyond this the oldest are dropped (counted).
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Decisions handed to the MQTT client before their PUBACK arrives.
    inflight: int = Field(default=32, ge=1, le=1000)
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    keepalive_s: int = Field(default=30, ge=5, le=3600)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"topic_prefix {value!r} is invalid: no '#', '+', NUL or leading/trailing '/'")
        return value


class LineSettings(_Section):
    plc: PlcSettings = Field(default_factory=PlcSettings)
    modbus: ModbusSettings = Field(default_factory=ModbusSettings)
    opcua: OpcUaSettings = Field(default_factory=OpcUaSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)

    @property
    def any_enabled(self) -> bool:
        return self.modbus.enabled or self.opcua.enabled or self.mqtt.enabled


def check_line_settings(stations: dict[str, LineSettings], *, demo: bool) -> None:
    """Refuse unsafe or conflicting line settings before anything starts.

    Raises:
        ConfigError: anonymous OPC UA outside demo mode, OPC UA without credentials,
            or two servers configured on the same host:port.
    """
    seen: dict[tuple[str, int], str] = {}
    for name, line in stations.items():
        ua = line.opcua
        if ua.enabled:
            if ua.allow_anonymous and not demo:
                raise ConfigError(f"station {name!r}: opcua.allow_anonymous is allowed only with demo: true")
            if not ua.allow_anonymous and (ua.username is None or ua.password is None):
                raise ConfigError(f"station {name!r}: opcua needs username and password "
                                  "(or allow_anonymous: true in demo mode)")
            if ua.password is not None and ua.password.get_secret_value() in ("", "changethis", "password", "admin") \
                    and not demo:
                raise ConfigError(f"station {name!r}: opcua.password is a well-known default; choose another")
        for proto, section in (("modbus", line.modbus), ("opcua", line.opcua)):
            if section.enabled:
                key = (section.host, section.port)
                where = f"{name}.{proto}"
                if key in seen:
                    raise ConfigError(
                        f"{where} and {seen[key]} both listen on {key[0]}:{key[1]}; give each its own port"
                    )
                seen[key] = where
