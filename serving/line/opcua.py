"""A station's OPC UA server: the handshake's state and results as nodes of a vision-system object.

Names follow OPC UA for Machine Vision (OPC 40100-1) where they fit: a ``VisionSystem``
object with ``VisionStateMachine`` (``CurrentState``: Operational or Halted) and
``ResultManagement`` (the presented result with ``ResultId``, ``PartId``, ``CreationTime``,
``ResultState``). We do not implement the companion specification's types, recipe or
configuration management; the node tree is in docs/plc.md.

Acknowledging: call ``ResultManagement.AcknowledgeResult(ResultSeq)`` (returns the error
code, 0 = done) or write the result's ``ResultSeq`` to ``ResultManagement.ResultAck``
(the outcome shows in ``ErrorCode``). Either one removes the result and presents the next;
there is no separate clear step as on Modbus.

Anonymous sessions are refused unless ``allow_anonymous`` (demo mode only); otherwise the
configured username and password are required. With a server certificate and key configured,
the only endpoint is Basic256Sha256 Sign&Encrypt (the password then travels encrypted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from serving.line.handshake import ResultHandshake
from serving.line.registers import Decision, ErrorCode
from serving.line.settings import OpcUaSettings
from serving.tasks import on_this_loop

log = logging.getLogger(__name__)

NAMESPACE = "urn:inspection:line"
_NULL_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's "no time"
_V = ua.VariantType


class _Users(UserManager):
    """asyncua user manager: the configured account, and anonymous only when allowed."""

    def __init__(self, settings: OpcUaSettings) -> None:
        self._s = settings

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        s = self._s
        if username is None and certificate is None:
            return User(role=UserRole.User) if s.allow_anonymous else None
        if (username is not None and s.username is not None and s.password is not None
                and hmac.compare_digest(username.encode(), s.username.encode())
                and hmac.compare_digest((password or "").encode(), s.password.get_secret_value().encode())):
            return User(role=UserRole.User, name=username)
        log.warning("OPC UA login refused for user %r", username)
        return None


class OpcUaStationServer:
    """Start/stop the OPC UA server of one station and keep its nodes in step with the handshake."""

    def __init__(self, handshake: ResultHandshake, settings: OpcUaSettings) -> None:
        self.handshake = handshake
        self.settings = settings
        self.endpoint = f"opc.tcp://{settings.host}:{settings.port}/inspection/{handshake.station}"
        self._server: Server | None = None
        self._vars: dict[str, tuple[Node, ua.VariantType]] = {}
        self._written: dict[str, Any] = {}
        self._ack_node: Node | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Build the address space and listen; raises OSError when the port cannot be bound."""
        s = self.settings
        server = Server(user_manager=_Users(s))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"inspection station {self.handshake.station}")
        await server.set_application_uri(f"urn:inspection:line:{self.handshake.station}")
        if s.certificate is not None and s.private_key is not None:
            await server.load_certificate(str(s.certificate))
            await server.load_private_key(str(s.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        tokens: list[type] = [ua.UserNameIdentityToken]
        if s.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        idx = await server.register_namespace(NAMESPACE)
        await self._build(server, idx)
        await self._sync()
        try:
            await server.start()
        except OSError as exc:
            raise OSError(f"OPC UA server cannot listen on {s.host}:{s.port}: {exc}") from exc
        self._server = server
        # Called from the thread that changed the handshake (a Modbus acknowledgement: its own).
        self.handshake.add_listener(on_this_loop(self._dirty.set))
        self._task = asyncio.create_task(self._sync_loop(), name=f"opcua-sync-{self.handshake.station}")
        log.info("station %s: OPC UA on %s", self.handshake.station, self.endpoint)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # --- address space -------------------------------------------------------------------------
    async def _build(self, server: Server, idx: int) -> None:
        objects = server.nodes.objects
        vs = await objects.add_object(idx, "VisionSystem")
        await vs.add_property(idx, "Station", self.handshake.station)
        sm = await vs.add_object(idx, "VisionStateMachine")
        rm = await vs.add_object(idx, "ResultManagement")
        res = await rm.add_object(idx, "Result")
        counters = await vs.add_object(idx, "Counters")

        async def var(parent: Node, name: str, value: Any, vt: ua.VariantType) -> None:
            node = await parent.add_variable(idx, name, ua.Variant(value, vt))
            self._vars[name] = (node, vt)

        await var(sm, "CurrentState", "Halted", _V.String)
        await var(vs, "Ready", False, _V.Boolean)
        await var(vs, "Busy", False, _V.Boolean)
        await var(vs, "Heartbeat", 0, _V.UInt32)
        await var(vs, "ErrorCode", 0, _V.UInt16)
        await var(rm, "ResultValid", False, _V.Boolean)
        await var(rm, "PendingResults", 0, _V.UInt16)
        await var(res, "ResultId", "", _V.String)
        await var(res, "ResultSeq", 0, _V.UInt32)
        await var(res, "InspectionNo", 0, _V.UInt64)
        await var(res, "PartId", "", _V.String)
        await var(res, "CreationTime", _NULL_TIME, _V.DateTime)
        await var(res, "ResultState", 0, _V.Int32)
        await var(res, "Decision", "", _V.String)
        await var(res, "DefectClass", "", _V.String)
        await var(res, "DefectClassCode", 0, _V.UInt16)
        await var(res, "ResultError", 0, _V.UInt16)
        await var(res, "FailsafeReason", "", _V.String)
        await var(res, "SkippedBefore", 0, _V.UInt16)
        for name in ("Inspected", "Rejected", "FailsafeRejects", "Overflowed", "AckTimeouts", "Acknowledged"):
            await var(counters, name, 0, _V.UInt64)

        ack = await rm.add_variable(idx, "ResultAck", ua.Variant(0, _V.UInt32))
        await ack.set_writable()
        # asyncua calls the setter with (node, attribute, value); its annotation says otherwise.
        server.iserver.aspace.set_attribute_value_setter(ack.nodeid, ua.AttributeIds.Value,
                                                         self._on_ack_write)  # type: ignore[arg-type]
        self._ack_node = ack

        seq_arg = ua.Argument(Name="ResultSeq", DataType=ua.NodeId(ua.ObjectIds.UInt32),  # type: ignore[arg-type]
                              ValueRank=-1,
                              Description=ua.LocalizedText("ResultSeq of the result being acknowledged"))
        err_arg = ua.Argument(Name="ErrorCode", DataType=ua.NodeId(ua.ObjectIds.UInt16),  # type: ignore[arg-type]
                              ValueRank=-1,
                              Description=ua.LocalizedText("0 = acknowledged, 3 = that result is not pending"))
        await rm.add_method(idx, "AcknowledgeResult", self._ack_method, [seq_arg], [err_arg])
        await vs.add_method(idx, "ClearError", self._clear_method, [], [])

    def _snapshot(self) -> dict[str, Any]:
        hs = self.handshake
        r = hs.presented
        c = hs.counters
        snap: dict[str, Any] = {
            "CurrentState": "Operational" if hs.running else "Halted",
            "Ready": hs.running and not hs.full,
            "Busy": hs.full,
            "Heartbeat": hs.heartbeat,
            "ErrorCode": int(hs.error_code),
            "ResultValid": r is not None,
            "PendingResults": min(hs.pending, 0xFFFF),
            "Inspected": c.inspected, "Rejected": c.rejected, "FailsafeRejects": c.failsafe,
            "Overflowed": c.overflowed, "AckTimeouts": c.ack_timeouts, "Acknowledged": c.acknowledged,
        }
        if r is None:
            snap.update(ResultId="", ResultSeq=0, InspectionNo=0, PartId="", CreationTime=_NULL_TIME,
                        ResultState=0, Decision="", DefectClass="", DefectClassCode=0, ResultError=0,
                        FailsafeReason="", SkippedBefore=0)
        else:
            snap.update(ResultId=r.inspection_id, ResultSeq=r.seq & 0xFFFFFFFF, InspectionNo=r.inspection_no,
                        PartId=r.part_id or "", CreationTime=r.time, ResultState=int(r.decision),
                        Decision=r.decision.name if r.decision != Decision.NONE else "",
                        DefectClass=r.defect_class or "", DefectClassCode=r.class_code, ResultError=int(r.error),
                        FailsafeReason=r.failsafe_reason or "", SkippedBefore=min(r.skipped_before, 0xFFFF))
        return snap

    async def _sync(self) -> None:
        server = self._server
        for name, value in self._snapshot().items():
            if self._written.get(name, object()) == value:
                continue
            node, vt = self._vars[name]
            if server is not None:
                await server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, vt)))
            else:
                await node.write_value(ua.Variant(value, vt))
            self._written[name] = value

    async def _sync_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._sync()
            except Exception:
                log.exception("station %s: could not update OPC UA nodes", self.handshake.station)

    # --- acknowledgement -----------------------------------------------------------------------
    def _acknowledge(self, seq: int) -> ErrorCode:
        code = self.handshake.acknowledge(seq, via="opcua", bits=32, latch=False)
        if code != ErrorCode.NONE:
            presented = self.handshake.presented
            log.warning("station %s: OPC UA client acknowledged result %d, pending is %s", self.handshake.station,
                        seq, presented.seq if presented else "none")
        return code

    def _on_ack_write(self, node: Any, attr: Any, value: ua.DataValue) -> None:
        seq = value.Value.Value if value.Value is not None else 0
        if seq:
            self._acknowledge(int(seq))
        # The variable always reads back 0: it is a command, not state.
        node.attributes[attr].value = ua.DataValue(ua.Variant(0, _V.UInt32))

    def _ack_method(self, parent: ua.NodeId, seq: ua.Variant) -> list[ua.Variant]:
        return [ua.Variant(int(self._acknowledge(int(seq.Value))), _V.UInt16)]

    def _clear_method(self, parent: ua.NodeId) -> list[ua.Variant]:
        self.handshake.clear_error()
        return []
