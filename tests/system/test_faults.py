"""The fault matrix (SECURITY.md): every fault, for both materialize and the mount.

Outcomes, not "no crash": materialize ends with a complete, verified tree, or names exactly the
files it could not get and exits non-zero; the mount returns the right bytes or EIO, and once
the fault is gone it returns the right bytes everywhere. Faults the emulator has no knob for
(a wrong Size or digest in a listing, malformed JSON, an HTML page with 200, a 404 for one
listed file) come from ``Tamper``, a small proxy in front of it.
"""

from __future__ import annotations

import errno
import functools
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.mount import QUICK_PAUSES, Mount, needs_fuse, read_outcomes
from tests.support.oracle import Oracle, output_files
from xnat_emulator import Archive, Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnat_emulator.pages import login_page
from xnatfs.cli import main
from xnatfs.materialize import engine, plan
from xnatfs.materialize.output import PART_SUFFIX
from xnatfs.reader.chunkcache import CHUNK_SIZE
from xnatfs.xnat import retry

USERS = {"alice": "secret"}
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=2, scans=2, dicoms=3, dicom_size=5000,
                     niftis=1, nifti_size=CHUNK_SIZE + 5000, assessors=0, session_resources=0,
                     subject_resources=0, project_resources=0, seed=31)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def archive() -> Archive:
    return synthetic_archive(SPEC)


def victim(o: Oracle, big: bool = False) -> str:
    """One file's tree path (a multi-chunk one with ``big``)."""
    return sorted(p for p, f in o.files.items() if (f.size > CHUNK_SIZE) == big)[0]


# -- the tampering proxy ----------------------------------------------------------------------

Rule = Callable[[str, int, bytes], tuple[int, bytes, str] | None]
"""(path, status, body) -> a replacement (status, body, content type), or None."""


@dataclass
class Tamper:
    """HTTP on loopback in front of an emulator; ``rule`` may rewrite any answer."""

    upstream: Emulator
    rule: Rule | None = None
    hits: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Tamper:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY the body waited for
            # the client's delayed ACK of the headers (up to 40 ms), as the emulator's never do.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(proxy.upstream.host, proxy.upstream.port,
                                                  timeout=60)
                try:
                    conn.request(self.command, self.path, body=sent, headers=headers)
                    answer = conn.getresponse()
                    status, body = answer.status, answer.read()
                    kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in
                            ("content-length", "transfer-encoding", "connection")]
                finally:
                    conn.close()
                rule = proxy.rule
                changed = rule(self.path, status, body) if rule else None
                if changed is not None:
                    proxy.hits += 1
                    status, body, kind = changed
                    kept = [(k, v) for k, v in kept if k.lower() not in
                            ("content-type", "content-range")] + [("Content-Type", kind)]
                self.send_response(status)
                for key, value in kept:
                    self.send_header(key, value)
                length = answer.getheader("Content-Length") if self.command == "HEAD" \
                    and changed is None else str(len(body))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # an upstream fault cut this answer: the client sees a dropped connection

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()  # stop() waits up to one poll interval
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _rows(path: str, status: int, body: bytes) -> list[dict] | None:
    if status != 200 or "format=json" not in path:
        return None
    doc = json.loads(body)
    return doc.get("ResultSet", {}).get("Result") if isinstance(doc, dict) else None


def edit_file_rows(uri: str, **fields: str) -> Rule:
    """Listings show ``fields`` (e.g. Size, digest) for the file at ``uri``."""

    def rule(path: str, status: int, body: bytes) -> tuple[int, bytes, str] | None:
        rows = _rows(path, status, body)
        if not rows or not any(r.get("URI") == uri for r in rows):
            return None
        for row in rows:
            if row.get("URI") == uri:
                row.update(fields)
        return 200, json.dumps({"ResultSet": {"Result": rows}}).encode(), "application/json"

    return rule


def every_size_empty(path: str, status: int, body: bytes) -> tuple[int, bytes, str] | None:
    rows = _rows(path, status, body)
    if not rows or "Size" not in rows[0]:
        return None
    for row in rows:
        row["Size"] = ""
    return 200, json.dumps({"ResultSet": {"Result": rows}}).encode(), "application/json"


def file_404(uri: str) -> Rule:
    return lambda path, status, body: ((404, b"not found", "text/plain")
                                       if path.split("?")[0] == uri else None)


def listing_of(prefix: str, reply: tuple[int, bytes, str], times: int | None = None) -> Rule:
    """The JSON listings below ``prefix`` get ``reply`` (the first ``times`` of them)."""
    left = [times]

    def rule(path: str, status: int, body: bytes) -> tuple[int, bytes, str] | None:
        if not (path.startswith(prefix) and "format=json" in path) or left[0] == 0:
            return None
        if left[0] is not None:
            left[0] -= 1
        return reply

    return rule


MALFORMED = (200, b'{"ResultSet": {"Result": [{"ID": "x", ', "application/json")
HTML = (200, login_page(""), "text/html;charset=UTF-8")


# -- the matrix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One cell: emulator knobs, or a tampering rule; and what must go missing, if anything."""

    knobs: dict = field(default_factory=dict)
    rule: Callable[[Oracle], Rule] | None = None
    lost: Callable[[Oracle], set[str]] | None = None
    """Tree paths that cannot be had (None: every file must arrive, perhaps after retries)."""
    timeout: str = "2"


def _files_prefix(o: Oracle) -> str:
    return o.uris()[victim(o)].split("/scans/")[0] + "/files"


FILE_FAULTS = frozenset({"file", "listing"})
CELLS = {
    "5xx 5%": Fault({"error_rate": 0.05, "fault_kinds": FILE_FAULTS}),
    "5xx 30%": Fault({"error_rate": 0.3, "fault_kinds": FILE_FAULTS}),
    "truncated bodies": Fault({"truncate_rate": 0.3, "fault_kinds": FILE_FAULTS}),
    "connection resets": Fault({"reset_rate": 0.3, "fault_kinds": FILE_FAULTS}),
    "stalls past the timeout": Fault({"stall_rate": 0.3, "stall_seconds": 4.0,
                                      "fault_kinds": frozenset({"file"})}, timeout="0.5"),
    "no Range support": Fault({"range_enabled": False}),
    "Size empty": Fault(rule=lambda o: every_size_empty),
    "Size wrong": Fault(rule=lambda o: edit_file_rows(o.uris()[victim(o)], Size="1234"),
                        lost=lambda o: {victim(o)}),
    "Size wrong, big file": Fault(
        rule=lambda o: edit_file_rows(o.uris()[victim(o, True)], Size=str(CHUNK_SIZE + 10)),
        lost=lambda o: {victim(o, True)}),
    "listed file 404s": Fault(rule=lambda o: file_404(o.uris()[victim(o)]),
                              lost=lambda o: {victim(o)}),
    "digest mismatch": Fault(rule=lambda o: edit_file_rows(o.uris()[victim(o, True)],
                                                            digest="0" * 32),
                             lost=lambda o: {victim(o, True)}),
    "malformed JSON once": Fault(rule=lambda o: listing_of(_files_prefix(o), MALFORMED, 1)),
    "malformed JSON always": Fault(
        rule=lambda o: listing_of(_files_prefix(o), MALFORMED),
        lost=lambda o: {p for p, u in o.uris().items() if u.startswith(_files_prefix(o)[:-6])}),
    "HTML login page once": Fault(rule=lambda o: listing_of(_files_prefix(o), HTML, 1)),
}


def logins(emu: Emulator) -> int:
    return emu.log.count(method="POST", path_prefix="/data/JSESSION", status=200)


Rig = tuple[Emulator, str, Oracle, Tamper]


@pytest.fixture
def rig(archive: Archive, monkeypatch) -> Iterator[Callable[[Fault], Rig]]:
    """``rig(fault)``: an emulator with the fault's knobs, the URL to use, the oracle."""
    made: list[tuple[Emulator, Tamper]] = []
    monkeypatch.setenv("XNAT_USER", "alice")
    monkeypatch.setenv("XNAT_PASS", "secret")
    # The pause before retrying failed files (5 s, then 15 s) is for real outages; so are the
    # pauses between the tries of one request (a tenth of them here, as in the mounts).
    monkeypatch.setattr(engine, "Options", functools.partial(engine.Options, retry_pause=0.2))
    monkeypatch.setattr(plan, "LISTING_RETRY_PAUSES", (0.1, 0.2))
    monkeypatch.setattr(retry, "PAUSES", QUICK_PAUSES)

    def make(fault: Fault) -> Rig:
        emu = Emulator(archive, EmulatorConfig(seed=7), users=USERS)
        emu.start()
        oracle = Oracle.of(emu)
        tamper = Tamper(emu, fault.rule(oracle) if fault.rule else None).start()
        made.append((emu, tamper))
        emu.log.clear()
        for knob, value in fault.knobs.items():
            setattr(emu.config, knob, value)
        return emu, tamper.url, oracle, tamper

    yield make
    for emu, tamper in made:
        tamper.stop()
        emu.stop()


def materialize(capsys, url: str, out: Path, *extra: str) -> tuple[int, dict, str]:
    code = main(["materialize", url, "/", "-o", str(out), "--json", "-j", "4", *extra])
    stdout, err = capsys.readouterr()
    return code, json.loads(stdout), err


def assert_materialized(out: Path, oracle: Oracle, code: int, summary: dict,
                        lost: set[str] | None) -> None:
    """A verified tree, or exactly the files it names as failed (and exit 1)."""
    written = {rel: p.read_bytes() for rel, p in output_files(out).items()
               if not p.name.endswith(PART_SUFFIX)}
    failed = {f["path"] for f in summary["failures"]}
    for path, data in written.items():
        assert data == oracle.read(path), f"wrong bytes under a final name: {path}"
    covered = set(written) | {p for p in oracle.files if any(
        p == f or p.startswith(f + "/") for f in failed)}
    assert covered == set(oracle.files)  # each file is there or named as failed
    assert not failed & set(written)
    assert code == (1 if failed else 0) and summary["ok"] == (not failed)
    if lost is not None:
        assert {p for p in oracle.files if p not in written} == lost


@pytest.mark.parametrize("name", list(CELLS))
def test_materialize_under_fault(name: str, rig, capsys, tmp_path: Path) -> None:
    fault = CELLS[name]
    emu, url, oracle, tamper = rig(fault)
    code, summary, err = materialize(capsys, url, tmp_path, "--timeout", fault.timeout)
    assert "Traceback" not in err
    random = any(k.endswith("_rate") for k in fault.knobs)
    if random:
        assert any(r.fault for r in emu.log)
    elif fault.knobs:  # Range ignored: every file came whole, with 200
        assert {r.status for r in emu.log.select(kind="file")} == {200}
    else:
        assert tamper.hits > 0
    # Random faults may beat every retry: then the files must be named, and a rerun finishes.
    assert_materialized(tmp_path, oracle, code, summary,
                        None if random else fault.lost(oracle) if fault.lost else set())
    assert logins(emu) == 1 + ("HTML" in name)  # one re-login for a login page, else none
    emu.config = EmulatorConfig()
    tamper.rule = None
    code, summary, _ = materialize(capsys, url, tmp_path)
    assert_materialized(tmp_path, oracle, code, summary, set())


MOUNT_CELLS = [n for n in CELLS if n not in ("digest mismatch", "Size wrong, big file")]
MOUNT_TTL = 0.5  # seconds the mount keeps a listing: the tampered ones are gone after it


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("name", MOUNT_CELLS)
def test_mount_under_fault(name: str, rig, mount: Callable[..., Mount], tmp_path: Path) -> None:
    fault = CELLS[name]
    emu, url, oracle, tamper = rig(fault)
    # A tampered listing must expire before the check that follows the fault; the other cells
    # never wait for a listing to expire, and keep it for a second.
    ttl = MOUNT_TTL if fault.rule is not None else 1.0
    m = mount(SimpleNamespace(url=url), "--timeout", fault.timeout, "--ttl", str(ttl))
    lost = fault.lost(oracle) if fault.lost else set()
    outcome = read_outcomes(m, oracle)
    allowed = {"ok", "EIO"} | ({"ENOENT"} if "404" in name else set())
    assert set(outcome.values()) <= allowed, outcome
    random = any(k.endswith("_rate") for k in fault.knobs)
    if not random:
        assert {p for p, o in outcome.items() if o != "ok"} == lost
    assert "ok" in outcome.values()
    assert any(r.fault for r in emu.log) or tamper.hits or fault.knobs == {"range_enabled": False}
    # The fault goes away: after the listings' TTL every file reads right.
    emu.config = EmulatorConfig()
    tamper.rule = None
    if fault.rule is not None:
        time.sleep(ttl + 0.2)  # the listings' TTL
    for path in oracle.files:
        assert (m / path).read_bytes() == oracle.read(path), path
    assert "Traceback" not in m.log.read_text()


@needs_fuse
@pytest.mark.fuse
def test_mount_never_serves_a_file_that_fails_its_digest(rig, mount: Callable[..., Mount]):
    _emu, url, oracle, _tamper = rig(CELLS["digest mismatch"])
    m = mount(SimpleNamespace(url=url), "--timeout", "2")
    path = m / victim(oracle, True)
    size = oracle.files[victim(oracle, True)].size
    with open(path, "rb", buffering=0) as f, pytest.raises(OSError) as failure:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(f.fileno(), 4096, size - 4096)  # the last chunk first (a seek, e.g. a header)
        f.read()
    assert failure.value.errno == errno.EIO


def _when_files_flow(emu: Emulator, action: Callable[[], None], after: int = 3) -> threading.Thread:
    """Run ``action`` once ``after`` file requests have arrived."""

    def wait() -> None:
        deadline = time.monotonic() + 20
        while emu.log.count(kind="file") < after and time.monotonic() < deadline:
            time.sleep(0.002)
        action()

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


class SessionCount:
    """Sessions the server opens (a Basic login by POST or on any request)."""

    def __init__(self, emu: Emulator) -> None:
        self.opened = 0
        self.at_expiry: int | None = None
        issue = emu.auth.open_session

        def spy(user: str, login: str):
            self.opened += 1
            return issue(user, login)

        emu.auth.open_session = spy  # type: ignore[method-assign]

        def expire() -> None:
            self.at_expiry = self.opened
            emu.expire_sessions()

        self.expire = expire

    @property
    def after_expiry(self) -> int:
        assert self.at_expiry is not None, "the sessions never expired"
        return self.opened - self.at_expiry


def test_materialize_survives_expiry_with_one_login_and_a_restart(rig, capsys, tmp_path: Path):
    emu, url, oracle, _ = rig(Fault({"bandwidth": 8e6}))
    sessions = SessionCount(emu)
    expiry = _when_files_flow(emu, sessions.expire, after=2)

    def restart() -> None:
        emu.stop()
        time.sleep(0.4)
        emu.start()

    outage = _when_files_flow(emu, restart, after=8)
    code, summary, err = materialize(capsys, url, tmp_path)
    expiry.join()
    outage.join()
    assert "Traceback" not in err
    assert sessions.after_expiry == 1  # one silent re-login, shared by every worker
    assert_materialized(tmp_path, oracle, code, summary, None)
    code, summary, _ = materialize(capsys, url, tmp_path)
    assert_materialized(tmp_path, oracle, code, summary, set())


@needs_fuse
@pytest.mark.fuse
def test_mount_renews_an_expired_session_once(rig, mount: Callable[..., Mount]):
    emu, url, oracle, _ = rig(Fault())
    m = mount(SimpleNamespace(url=url))
    sessions = SessionCount(emu)
    paths = sorted(oracle.files)
    half = len(paths) // 2
    for path in paths[:half]:
        assert (m / path).read_bytes() == oracle.read(path)
    sessions.expire()
    threads = [threading.Thread(target=lambda p=p: (m / p).read_bytes()) for p in paths[half:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for path in paths[half:]:
        assert (m / path).read_bytes() == oracle.read(path)
    assert sessions.after_expiry == 1


def test_materialize_renews_an_expired_session_exactly_once(rig, capsys, tmp_path: Path):
    emu, url, oracle, _ = rig(Fault({"latency": 0.05}))
    sessions = SessionCount(emu)
    expiry = _when_files_flow(emu, sessions.expire, after=2)
    code, summary, _ = materialize(capsys, url, tmp_path, "-j", "8")
    expiry.join()
    assert_materialized(tmp_path, oracle, code, summary, set())
    assert sessions.after_expiry == 1
