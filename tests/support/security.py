"""Secrets and TLS for the tests that check them: the user and password whose every trace a
test hunts for, ``Secrets`` (every secret of a run, and greps for them), the ``certificate``
fixture (a self-signed loopback certificate made by ``openssl`` at test time, registered for
the whole suite by ``tests/conftest.py``) and ``tls_proxy`` (HTTPS in front of an emulator).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from xnat_emulator import Emulator

USER, PASSWORD = "carol", "pw-Zq7+s3cr3t/x9"


class Secrets:
    """Every secret of a run: the password, its Basic header, each JSESSIONID the server gave."""

    def __init__(self, emu: Emulator, *extra: str) -> None:
        self.values = {PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
                       *extra}
        issue = emu.auth.open_session

        def spy(user: str, login: str):  # record the IDs as the server hands them out
            session = issue(user, login)
            if session is not None:
                self.values.add(session.id)
            return session

        emu.auth.open_session = spy  # type: ignore[method-assign]

    @classmethod
    def given(cls, *values: str) -> Secrets:
        """Just these values, where no server's sessions need watching."""
        secrets = cls.__new__(cls)
        secrets.values = set(values)
        return secrets

    def assert_absent(self, text: str | bytes, where: str) -> None:
        data = text.encode() if isinstance(text, str) else text
        for secret in self.values:
            assert secret.encode() not in data, f"a secret leaked into {where}"
            assert secret.lower().encode() not in data.lower(), f"a secret leaked into {where}"

    def assert_absent_below(self, root: Path) -> int:
        """Grep every file below ``root``; how many were read."""
        count = 0
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                self.assert_absent(path.read_bytes(), str(path))
                count += 1
        return count


def cmdlines() -> bytes:
    """Every process's argv, from /proc and from ``ps``: where a secret must never be."""
    out = b""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out += Path(f"/proc/{pid}/cmdline").read_bytes() + b"\n"
        except OSError:
            continue
    return out + subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def tls_proxy(target: tuple[str, int], cert: str, key: str) -> tuple[int, Callable[[], None]]:
    """HTTPS on a free loopback port in front of ``target`` (plain HTTP); returns the port and
    a stop function."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(raw: socket.socket) -> None:
        try:
            tls = context.wrap_socket(raw, server_side=True)
        except OSError:  # the client refused our certificate
            raw.close()
            return
        upstream = socket.create_connection(target)
        for s in (tls, upstream):  # pieces go on as they come, as the emulator sends them
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(upstream, tls), daemon=True).start()
        pipe(tls, upstream)

    def accept() -> None:
        while not stopping.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()

    return listener.getsockname()[1], stop
