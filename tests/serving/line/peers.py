"""Real MQTT peers for tests: a private mosquitto and a QoS 1 subscriber."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A private mosquitto on its own port, with persistence so a subscriber's session survives a restart."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.conf = tmp / "mosquitto.conf"
        (tmp / "db").mkdir()
        self.conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp / 'db'}/\nlog_dest none\n"
            # As root, mosquitto drops to user "mosquitto", which cannot write our temp dir.
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # a clean stop writes the persistence file
            self.proc.wait(timeout=10)
            self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber collecting payloads by topic."""

    def __init__(self, port: int, client_id: str = "test-sub", clean: bool = False) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                        protocol=paho.MQTTv311)
        c.reconnect_delay_set(min_delay=1, max_delay=1)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("inspection/#", qos=1)
        c.on_subscribe = lambda cl, u, mid, rc, p: self._ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not self._ready.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def decisions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m, _ in self.messages if t.endswith("/decisions")]

    def first_seen_ids(self) -> list[str]:
        """Inspection ids in order of first arrival (QoS 1 may repeat a message after a reconnect)."""
        seen: dict[str, None] = {}
        for m in self.decisions():
            seen.setdefault(m["inspection_id"], None)
        return list(seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
