"""The emulator's HTTP server: a threaded HTTP/1.1 keep-alive server speaking XNAT's REST API.

Each request goes: log record -> context path and ``/REST``, ``/data/archive`` aliases ->
security gate -> routing -> view -> latency and injected faults -> body writer. The
``Emulator`` object owns the archive, the users and the knobs, and can be stopped and
started again on the same port (a server that was killed and came back).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import struct
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl

from xnat_emulator import pages, zipper
from xnat_emulator.archive import Archive
from xnat_emulator.auth import Auth
from xnat_emulator.gate import Gate, Visitor
from xnat_emulator.knobs import Cores, EmulatorConfig, TokenBucket
from xnat_emulator.log import Record, RequestLog
from xnat_emulator.routes import HttpError, Router
from xnat_emulator.transfer import Abort, BodyWriter, Plan, Response
from xnat_emulator.views import View

logger = logging.getLogger(__name__)
DATA_KINDS = frozenset({"listing", "item", "file", "zip"})
CATALOG_KINDS = frozenset({"files", "file", "catalog"})
AUTH_KINDS = {"jsession", "services_auth", "auth", "token_issue", "token_validate",
              "token_invalidate"}


class Emulator:
    """An XNAT server on loopback, serving ``archive`` to ``users`` (name -> password)."""

    def __init__(self, archive: Archive, config: EmulatorConfig | None = None,
                 users: dict[str, str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.archive = archive
        self._config = config or EmulatorConfig()
        self.auth = Auth(users or {}, self._config)
        self.gate = Gate(self.auth, self._config)
        self.log = RequestLog(self._config.log_limit)
        self.host = host
        self.port = port
        self._bandwidth = TokenBucket(lambda: self.config.bandwidth)
        self.cores = Cores(lambda: self.config.server_cores)
        self._stopping = threading.Event()
        self._rng = random.Random(self.config.seed)
        self._zip_rng = random.Random(self.config.seed)  # zip faults: their own sequence
        self._rng_lock = threading.Lock()
        self._streaks: dict[tuple[str, ...], int] = {}  # faults in a row per request
        self._thawed = threading.Event()
        self._thawed.set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The live knobs: change fields (or assign a whole new config) while serving."""
        return self._config

    @config.setter
    def config(self, config: EmulatorConfig) -> None:
        self._config = self.auth.config = self.gate.config = config
        with self._rng_lock:
            self._rng.seed(config.seed)
            self._zip_rng.seed(config.seed)

    @property
    def url(self) -> str:
        """Base URL, context path included."""
        return f"http://{self.host}:{self.port}{self.config.path_prefix}"

    def start(self, port: int | None = None) -> str:
        """Listen (on ``port``, else the port of the previous run, else a free one)."""
        if self._server is not None:
            return self.url
        self._stopping = threading.Event()
        server = _Server((self.host, self.port if port is None else port), self)
        self.port = server.server_address[1]
        self._server = server
        # stop() waits for the serving loop to see the shutdown, up to one poll interval: a
        # test suite stops hundreds of emulators.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"xnat-emulator:{self.port}", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening and cut every open connection (stalled ones included)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if self._thread is not None:
            self._thread.join()

    def issue_token(self, user: str) -> tuple[str, str]:
        """An alias token for ``user``: (alias, secret), usable as Basic credentials."""
        token = self.auth.issue_token(user)
        return token.alias, token.secret

    def freeze(self) -> None:
        """Accept connections but answer nothing, like a server stopped with SIGSTOP."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()
    def expire_tokens(self) -> None:
        """Let every alias token run out now, as the server's clock would at its expiry."""
        self.auth.expire_tokens()

    def expire_sessions(self) -> None:
        """Expire every JSESSIONID now, without waiting for ``session_timeout``."""
        self.auth.expire_sessions()

    def _draw(self) -> tuple[float, float, float]:
        """Three seeded draws per request: error, body fault, fault position."""
        with self._rng_lock:
            return self._rng.random(), self._rng.random(), self._rng.random()

    def _zip_chance(self) -> float:
        """Draws for zip faults, apart from the others: the k-th zip of a run gets the same
        draws however other requests interleave with it."""
        with self._rng_lock:
            return self._zip_rng.random()

    def _chance(self) -> float:
        with self._rng_lock:
            return self._rng.random()

    def _may_fault(self, key: tuple[str, ...]) -> bool:
        """Whether this request may be faulted (``fault_streak`` not yet reached for it)."""
        limit = self.config.fault_streak
        with self._rng_lock:
            return limit is None or self._streaks.get(key, 0) < limit

    def _faulted(self, key: tuple[str, ...], fault: bool) -> None:
        with self._rng_lock:
            if fault:
                self._streaks[key] = self._streaks.get(key, 0) + 1
            else:
                self._streaks.pop(key, None)

    def _shuffler(self) -> random.Random:
        """A generator for one listing's row order, seeded from the main one."""
        with self._rng_lock:
            return random.Random(self._rng.random())

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections.add(sock)
        return sock, address

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """Dropped connections are routine here (clients go away, faults reset them on
        purpose); anything else is a bug in the emulator and is shown."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ValueError):
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        emulator = self.server.emulator
        self.conn_bucket = TokenBucket(lambda: emulator.config.conn_bandwidth)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the request log is the record."""

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # -- one exchange ---------------------------------------------------------------------

    def _serve(self) -> None:
        emulator = self.server.emulator
        while not emulator._thawed.wait(0.1):
            if emulator._stopping.is_set():
                self.close_connection = True
                return
        config = emulator.config
        target, _, query_string = self.path.partition("?")
        ctx = config.path_prefix
        inside = target == ctx or target.startswith(ctx + "/")
        path = target[len(ctx):] if inside else target
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = emulator.log.add(Record(self.command, path, query_string, headers.get("range"),
                                         time.time()))
        body = self._request_body(headers)
        visitor = Visitor()
        try:
            if not inside:
                raise HttpError(404, "Not Found")
            response, visitor = self._answer(_canonical(path), query_string, headers, body,
                                             record)
        except HttpError as error:
            response = _error_response(error)
        except Exception:
            logger.exception("emulator failed on %s %s", self.command, self.path)
            response = _error_response(HttpError(500, "Internal Server Error"))
        record.user = visitor.user
        record.login = visitor.session.login if visitor.session else None
        key = (self.command, path, query_string, headers.get("range", ""))
        may_fault = emulator._may_fault(key)
        draws = emulator._draw() if may_fault else (1.0, 1.0, 0.0)
        if may_fault:
            self._lie(response, record, visitor)
        self._delay_and_fail(response, record, draws)
        plan = self._plan(response, record, draws)
        emulator._faulted(key, record.fault is not None)
        try:
            self._send(response, record, plan, emulator.gate.cookies(visitor))
        except Abort as abort:
            self._end(abort.reset)
        except OSError:
            self.close_connection = True
        finally:
            emulator.log.finish(record)

    def _answer(self, path: str, query_string: str, headers: dict[str, str],
                body: bytes, record: Record) -> tuple[Response, Visitor]:
        emulator = self.server.emulator
        admitted = emulator.gate.admit(path, headers)
        if isinstance(admitted, Response):
            return admitted, Visitor()
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        target = Router(emulator.archive, admitted.user, query).route(path)
        if target.kind in AUTH_KINDS:
            return emulator.gate.endpoint(target, self.command, admitted, body), admitted
        if self.command not in ("GET", "HEAD"):
            raise HttpError(405, "Method Not Allowed")
        if target.kind in CATALOG_KINDS and target.scope is not None:
            self._charge(record, sum(len(r.files) for r in target.scope.resources))
        shuffle = emulator._shuffler() if emulator.config.shuffle_rows else None
        view = View(emulator.archive, emulator.config, admitted.user, query, headers, shuffle)
        response = view.render(target)
        if response.chunked and headers.get("range") and _open_range(headers["range"]):
            raise HttpError(500, "The end index cannot be computed")  # Restlet on streams
        return response, admitted

    def _charge(self, record: Record, entries: int) -> None:
        """The catalog parse every file request, file listing and zip makes on the real
        server (``EmulatorConfig.catalog_cost``), on one of its cores."""
        emulator = self.server.emulator
        record.catalog_entries = entries
        cost = emulator.config.catalog_cost * entries
        if cost > 0:
            emulator.cores.work(cost, emulator._stopping)

    def _request_body(self, headers: dict[str, str]) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit():
            return self.rfile.read(int(length))
        if headers.get("transfer-encoding"):
            self.close_connection = True  # not worth decoding; do not reuse the stream
        return b""

    # -- faults ---------------------------------------------------------------------------

    def _lie(self, response: Response, record: Record, visitor: Visitor) -> None:
        """The faults that keep a success status: a login page for a dropped session, and
        a range whose bytes are one off under correct headers."""
        emulator = self.server.emulator
        config = emulator.config
        if config.login_page_rate and response.kind in DATA_KINDS and response.status == 200 \
                and emulator._chance() < config.login_page_rate:
            if visitor.session is not None:
                emulator.auth.close_session(visitor.session.id)
            visitor.new_session = False
            page = pages.login_page(config.path_prefix)
            _become(response, 200, page)
            response.headers = [("Content-Type", "text/html;charset=UTF-8")]
            response.kind = "auth"
            record.fault = "login"
        elif config.shift_rate and response.status == 206 and response.content is not None \
                and emulator._chance() < config.shift_rate:
            size = response.content.size
            response.start += 1 if response.start + response.length < size else -1
            record.fault = "shift"

    def _delay_and_fail(self, response: Response, record: Record,
                        draws: tuple[float, float, float]) -> None:
        emulator = self.server.emulator
        config = emulator.config
        delay = config.latency + (config.listing_delay if response.kind == "listing" else 0.0)
        error_draw, _, position = draws
        if config.proxy_timeout is not None and delay > config.proxy_timeout:
            emulator._stopping.wait(config.proxy_timeout)
            _become(response, 504, pages.proxy_error(504))
            record.fault = "timeout"
        elif delay > 0:
            emulator._stopping.wait(delay)
        hit = config.fault_kinds is None or response.kind in config.fault_kinds
        if record.fault is None and error_draw < config.error_rate and hit:
            status = 503 if config.retry_after is not None \
                else (500, 502, 503, 504)[int(position * 4) % 4]
            body = (pages.restlet_status(500, "Internal Server Error") if status == 500
                    else pages.proxy_error(status))
            _become(response, status, body)
            if config.retry_after is not None:
                response.headers.append(("Retry-After", str(math.ceil(config.retry_after))))
            record.fault = "error"

    def _plan(self, response: Response, record: Record, draws: tuple[float, float, float]) -> Plan:
        config = self.server.emulator.config
        _, draw, position = draws
        size = response.body_size
        if record.fault or self.command == "HEAD" or not _faultable(response, config) or size < 1:
            return Plan()
        at = int(position * size)
        if response.kind == "zip" and config.zip_truncate_rate and \
                self.server.emulator._zip_chance() < config.zip_truncate_rate:
            record.fault = "truncate"
            return Plan(cut_at=int(self.server.emulator._zip_chance() * size))
        if draw < config.truncate_rate:
            record.fault = "truncate"
            return Plan(cut_at=at)
        if draw < config.truncate_rate + config.reset_rate:
            record.fault = "reset"
            return Plan(cut_at=at, reset=True)
        if draw < config.truncate_rate + config.reset_rate + config.stall_rate:
            record.fault = "stall"
            return Plan(stall_at=at, stall_seconds=config.stall_seconds)
        return Plan()

    # -- writing --------------------------------------------------------------------------

    def _send(self, response: Response, record: Record, plan: Plan, cookies: list[str]) -> None:
        head = self.command == "HEAD"
        streaming = response.chunked or response.zip_entries is not None
        chunked = streaming and self.request_version == "HTTP/1.1"
        lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}",
                 f"Date: {formatdate(usegmt=True)}", "Accept-Ranges: bytes"]
        lines += [f"Set-Cookie: {c}" for c in cookies]
        lines += [f"{k}: {v}" for k, v in response.headers]
        if response.content is not None:
            lines.append(f"Content-Length: {response.length}")
        elif chunked:
            lines.append("Transfer-Encoding: chunked")
        elif streaming:
            self.close_connection = True
        elif response.status != 304 and not any(k == "Content-Length" for k, _ in response.headers):
            lines.append(f"Content-Length: {len(response.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        record.status, record.kind = response.status, response.kind
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        if head or response.status == 304:
            return
        paced = self.server.emulator.config.bandwidth_kinds
        buckets = [self.server.emulator._bandwidth, self.conn_bucket] \
            if paced is None or response.kind in paced else []
        writer = BodyWriter(self.connection, record, plan, buckets, self.server.emulator._stopping,
                            chunked)
        if response.content is not None:
            writer.send_file(response.content, response.start, response.length)
            if writer.sent < response.length:
                self.close_connection = True  # XNAT's unchecked range: a short body
        elif response.zip_entries is not None:
            emulator = self.server.emulator
            rate = emulator.config.zip_garble_rate
            zipper.write_zip(writer, response.zip_entries,
                             garble=(lambda: emulator._zip_chance() < rate) if rate else None)
        else:
            writer.write(response.body)
        writer.finish()

    def _end(self, reset: bool) -> None:
        """Close now; with a reset, make the kernel send RST instead of FIN."""
        self.close_connection = True
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Close the descriptor itself: the handler's file objects would otherwise keep it
            # open, and the later orderly shutdown would send FIN before the RST.
            os.close(self.connection.detach())


def _canonical(path: str) -> str:
    """``/REST/...`` and ``/data/archive/...`` are the same resources as ``/data/...``."""
    if path == "/REST" or path.startswith("/REST/"):
        path = "/data" + path[5:]
    if path == "/data/archive" or path.startswith("/data/archive/"):
        path = "/data" + path[13:]
    return path


def _open_range(header: str) -> bool:
    spec = header.partition("=")[2].strip()
    return spec.startswith("-") or spec.endswith("-")


def _error_response(error: HttpError) -> Response:
    if error.empty:
        return Response(error.status, [("Content-Type", "text/plain;charset=ISO-8859-1")],
                        kind="error")
    return Response(error.status, [("Content-Type", "text/html;charset=ISO-8859-1")],
                    pages.restlet_status(error.status, error.message), kind="error")


def _become(response: Response, status: int, body: bytes) -> None:
    """Turn ``response`` into an error page in place."""
    response.status, response.body, response.kind = status, body, "error"
    response.headers = [("Content-Type", "text/html")]
    response.content, response.zip_entries, response.chunked, response.length = None, None, False, 0


def _faultable(response: Response, config: EmulatorConfig) -> bool:
    """May this body be truncated, reset or stalled?"""
    return response.kind in (config.fault_kinds or DATA_KINDS)


def _reason(status: int) -> str:
    return BaseHTTPRequestHandler.responses.get(status, ("Unknown",))[0]
