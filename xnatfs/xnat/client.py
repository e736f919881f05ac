"""The one place that speaks HTTP to XNAT.

One ``requests.Session`` is shared by every thread, so all workers ride on one JSESSIONID (XNAT
caps live sessions per user). Basic credentials go only with the login: were they on every
request, each request in flight when the session expires would open a session of its own.
Instead a 401, or an HTML page where data was expected (a listing, or a file that is not
itself HTML: some XNATs answer a lost session with 200 and the login page, on file GETs too),
triggers one silent re-login for the whole process, which every waiting thread then shares.
Only a refused login (401 on the login itself) is final, because XNAT locks accounts after 20
failed logins; a login page after a login that succeeded is one more lost session, retried.
A session that served requests and then died says nothing about our credentials (a timeout, a
restart, a proxy dropping it): only sessions that die before serving anything count towards
giving up with an ``AuthError``, and only while no other session works either. Many threads
share one session, so on a server that drops sessions often one request meets deaths that the
others' requests caused, and learns only late that the session had served them.

One retry policy for every request: transient failures (a 5xx, a reset, a lost session) are
tried again after a short pause, a bounded number of times and never more than a second past
the request's timeout in all, so ``--timeout`` bounds what a caller waits: a server silent for
that long is given up on for this call, not waited for four times over.
urllib3's own retries are off: stacked under ours they multiplied every timeout by four.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from xnatfs import __version__
from xnatfs.errors import (
    AuthError,
    ConnectError,
    Forbidden,
    IntegrityError,
    NotFound,
    ServerError,
    ServerTimeout,
    TLSError,
    TransferError,
    UsageError,
    XnatfsError,
)
from xnatfs.xnat.credentials import Credentials
from xnatfs.xnat.rows import Row, result_rows
from xnatfs.xnat.transport import LOGIN_MARKS, Body, SessionLosses, Transport

log = logging.getLogger(__name__)

_HTML_START = (b"<!doctype", b"<html")
RETRY_PAUSES = (0.1, 0.3, 0.9)  # pauses between tries of one request: four tries at most
GRACE = 1.0  # seconds past a request's timeout that its retries may take, all together
MAX_LOST = 3  # sessions in a row that die unused, none working meanwhile: logins do not hold
MAX_DROPPED = 10  # sessions lost under one request, however: beyond, each costs one retry
# Where XNAT's web pages and REST API begin below its base URL.
_WEB_PART = re.compile(r"/(?:app|data|REST)/")
# What OpenSSL says when the other end answers a TLS hello in plain text.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure",
            "HTTP_REQUEST", "http request", "packet length too long")


def normalise_base_url(url: str) -> str:
    """``https://host[:port][/context]`` without a trailing slash, or a UsageError.

    No scheme means https: a password never goes out in clear unless the user wrote http://.
    An address copied from a browser (``.../xnat/app/template/Index.vm``) or a REST URL
    (``.../xnat/data/projects/P``) is cut back to the base, where xnatpy's rule cuts it.
    """
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise UsageError(f"not an XNAT server URL: {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an XNAT server URL: {url!r} (expected https://host[/path])")
    if parts.username or parts.password:
        raise UsageError("put credentials in -u, XNAT_USER/XNAT_PASS or ~/.netrc, not in the URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"bad port in URL: {url!r}") from None
    path = _WEB_PART.split(parts.path, maxsplit=1)[0]
    return f"{parts.scheme}://{parts.netloc}{path.rstrip('/')}"


def encode_path(path: str) -> str:
    """Percent-encode a server path as XNAT needs: ``+`` as %2B, space as %20, ``/`` kept."""
    return quote(path, safe="/")


def data_path(*segments: str) -> str:
    """``/data/a/b`` from raw segments, each encoded so none can add a path level."""
    return "/data/" + "/".join(quote(s, safe="") for s in segments)


class XnatClient:
    """A thread-safe client of one XNAT server."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        insecure: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        listing_timeout: float = 300.0,
        retries: int = len(RETRY_PAUSES),
        pool_size: int = 64,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.credentials = credentials or Credentials()
        connect_timeout = min(connect_timeout, read_timeout)
        self.timeout = (connect_timeout, read_timeout)
        self.listing_timeout = (connect_timeout, listing_timeout)
        self._login_lock = threading.Lock()
        self._generation = 0
        self._served = 0  # the newest generation known to have served a request
        self._auth_failure: AuthError | None = None
        self._pauses = RETRY_PAUSES[:retries]
        self.session = requests.Session()
        # No retries down there: ours (``request``) are the only ones (see the docstring).
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0,
                              pool_block=False)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The environment (proxies, CA bundle) is read once, here. Left to requests, it is
        # scanned on every request (a third of a small file's cost), and ~/.netrc's password
        # goes out as Basic auth on every request, so that each request in flight after an
        # expiry would open an XNAT session of its own.
        self.session.trust_env = False
        self.session.proxies = requests.utils.get_environ_proxies(self.base_url)
        self.session.verify = False if insecure else (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
            or os.environ.get("CURL_CA_BUNDLE") or True)
        self.session.headers.update({
            "User-Agent": f"xnatfs/{__version__} python-requests/{requests.__version__}",
            "Accept": "*/*",
        })
        if self.credentials.jsession:
            self.session.cookies.set("JSESSIONID", self.credentials.jsession)
        self.transport = Transport(self, pool_size=pool_size)

    @property
    def generation(self) -> int:
        """How many logins this client has made: a lost session is renewed once per value."""
        return self._generation

    # -- session -------------------------------------------------------------------------

    def login(self) -> None:
        """Open the shared JSESSION (or check that guest / the given JSESSIONID works)."""
        if self.credentials.user is not None:
            self._login()
            return
        try:
            self.request("GET", "/data/projects", params={"format": "json"}, expect_json=True)
        except Forbidden:
            raise
        except NotFound:
            raise self._not_xnat("HTTP 404 for /data/projects") from None

    def _login(self) -> None:
        creds = self.credentials
        resp = self.retrying(lambda left: self._check_status(self._send(
            "POST", "/data/JSESSION", timeout=(self.timeout[0], left),
            auth=(creds.user or "", creds.password or "")), "/data/JSESSION", login=True),
            self.timeout[1], "the login")
        if resp.status_code in (401, 403):
            self._auth_failure = AuthError(
                f"login refused for user {self.credentials.user} at {self.base_url}"
                " (wrong password or token; XNAT locks accounts after repeated failures)"
            )
            raise self._auth_failure
        if resp.status_code in (404, 405, 501):
            raise self._not_xnat(f"HTTP {resp.status_code} for its login, /data/JSESSION")
        if resp.status_code == 200 and _looks_html(resp.content[:64]):
            raise self._not_xnat("its login, /data/JSESSION, answered with a web page; on a "
                                 "single sign-on site, use --jsession")
        if resp.status_code != 200:
            raise ServerError(f"login failed at {self.base_url}: HTTP {resp.status_code}")
        self._generation += 1

    def _not_xnat(self, why: str) -> UsageError:
        """The URL reaches a web server, but not XNAT's REST API: say what the base URL is."""
        parts = urlsplit(self.base_url)
        if parts.path:
            hint = (f"is XNAT's base URL {parts.scheme}://{parts.netloc}, or another part of "
                    f"{parts.path}?")
        else:
            hint = f"if XNAT lives below a path, give it, e.g. {self.base_url}/xnat"
        return UsageError(f"{self.base_url} does not look like an XNAT server ({why}); {hint} "
                          "(the base URL is what a browser shows before /app/ or /data/)")

    def _relogin(self, seen_generation: int) -> None:
        """Log in again once for everybody who saw the session die at ``seen_generation``."""
        with self._login_lock:
            if self._auth_failure:
                raise self._auth_failure
            if self._generation != seen_generation:
                return  # another thread already renewed it
            if self.credentials.user is None:
                what = "JSESSIONID" if self.credentials.jsession else "guest access"
                self._auth_failure = AuthError(
                    f"{self.base_url} refused the {what}; log in again or pass -u USER"
                )
                raise self._auth_failure
            self.session.cookies.clear()
            self._login()
            log.warning("the session at %s had ended: logged in again", self.base_url)

    def close(self) -> None:
        self.session.close()
        self.transport.close()

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One HTTP exchange; a server that cannot be reached is told apart from one request
        that failed on the way (only the first should make a caller stop trying)."""
        try:
            return self.session.request(method, self.url(path), **kw)
        except requests.exceptions.SSLError as exc:
            raise self.tls_error(_reason(exc)) from None
        except requests.ConnectTimeout as exc:
            raise ConnectError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
        except requests.ReadTimeout:
            raise ServerTimeout(f"{self.base_url} sent nothing for {kw['timeout'][1]:g} s "
                                f"({unquote(path)})") from None
        except requests.ConnectionError as exc:
            if _unreachable(exc):
                raise ConnectError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
            raise TransferError(f"request to {self.base_url} failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise TransferError(f"request to {self.base_url} failed: {_reason(exc)}") from None

    def retrying(self, attempt: Any, budget: float, what: str) -> Any:
        """``attempt(seconds_left)``, tried again after transient failures within ``budget``
        seconds plus ``GRACE`` (see the module docstring)."""
        end = time.monotonic() + budget + GRACE
        for pause in (*self._pauses, None):
            try:
                return attempt(min(budget, end - time.monotonic()))
            except XnatfsError as exc:
                if not exc.transient or pause is None or time.monotonic() + pause > end:
                    raise
                log.info("%s failed (%s); trying again", what, exc)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _check_status(self, resp: requests.Response, path: str, *,
                      login: bool = False) -> requests.Response:
        try:
            self.check_status(resp.status_code, path, login=login)
        except XnatfsError:
            resp.close()
            raise
        return resp

    @staticmethod
    def check_status(status: int, path: str, *, login: bool = False) -> None:
        """Map 5xx (transient) and 403/404 to our errors; 401 is the caller's to handle, and so
        is, for a login, any other answer (a web server that is not XNAT says 404, 405, 501)."""
        if status in (500, 502, 503, 504):
            raise ServerError(f"HTTP {status} from the server for {unquote(path)}")
        if login:
            return
        if status == 403:
            raise Forbidden(f"access denied by the server: {unquote(path)}")
        if status == 404:
            raise NotFound(f"not found on the server: {unquote(path)}")
        if status >= 400 and status != 401:
            raise ServerError(f"HTTP {status} from the server for {unquote(path)}")

    def served(self, generation: int) -> None:
        """A request sent on the session of ``generation`` was answered: that session worked."""
        if generation > self._served:
            self._served = generation

    def session_lost(self, generation: int, path: str, losses: SessionLosses) -> None:
        """A request met a lost session (401 or a login page) opened at ``generation``: one
        shared re-login, unless the request has seen too many (see the module docstring)."""
        if generation == self._generation:  # a stale one costs no login, so it is not counted
            losses.total += 1
        if self._served != losses.served:  # some session worked since: start counting again
            losses.served, losses.unused = self._served, 0
        if generation > self._served:
            losses.unused += 1
            if losses.unused > MAX_LOST:
                raise AuthError(f"{self.base_url} keeps answering with its login page "
                                f"after {MAX_LOST} fresh logins ({unquote(path)})")
        if losses.total > MAX_DROPPED:
            raise TransferError(f"{self.base_url} ended the session {losses.total} times "
                                f"during one request ({unquote(path)})")
        self._relogin(generation)

    def tls_error(self, reason: str) -> TLSError:
        """Name the real cause: a plain-HTTP port, a certificate, or the handshake itself."""
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)", "", reason).rsplit("] ", 1)[-1]
        if any(sign in reason for sign in _NOT_TLS):
            plain = "http" + self.base_url[len("https"):]
            return TLSError(f"{self.base_url} does not speak TLS: that port answers plain HTTP "
                            f"(use {plain} only if passwords may cross the network unencrypted)")
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
            return TLSError(f"TLS certificate check failed for {self.base_url}: {reason} (for an "
                            "institutional CA, set REQUESTS_CA_BUNDLE or SSL_CERT_FILE to its "
                            "certificate file; --insecure skips the check)")
        return TLSError(f"TLS handshake with {self.base_url} failed: {reason}")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        expect_json: bool = False,
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send one request and map failures to the shared error vocabulary: a lost session
        (401, or a login page) means one shared re-login and the request again; transient
        failures are retried within the timeout. ``path`` is already percent-encoded."""
        if self._auth_failure:
            raise self._auth_failure
        timeout = timeout or self.timeout
        losses = SessionLosses()

        def attempt(left: float) -> requests.Response:
            while True:
                generation = self._generation
                resp = self._check_status(self._send(
                    method, path, params=params, headers=headers, stream=stream,
                    timeout=(timeout[0], max(left, 0.05))), path)
                if not (resp.status_code == 401 or _login_page(resp, expect_json)):
                    self.served(generation)
                    return resp
                resp.close()
                self.session_lost(generation, path, losses)

        return self.retrying(attempt, timeout[1], f"{method} {unquote(path)}")

    def listing(self, path: str, **params: str) -> list[Row]:
        """The rows of a JSON listing at ``path`` (an encoded ``/data/...`` path)."""
        for attempt in (0, 1):  # a body cut short by a proxy is malformed: ask once more
            resp = self.request("GET", path, params={**params, "format": "json"},
                                expect_json=True, timeout=self.listing_timeout)
            try:
                document = resp.json()
            except requests.RequestException as exc:  # cut while reading: one more try
                if attempt:
                    raise TransferError(f"listing {unquote(path)} failed: {_reason(exc)}") \
                        from None
                continue
            except ValueError:
                if attempt:
                    raise ServerError(f"the server sent malformed JSON for {path}") from None
                log.info("malformed JSON for %s; asking again", path)
                continue
            return result_rows(document, path)
        raise AssertionError("unreachable")

    # -- files ---------------------------------------------------------------------------

    def open_file(self, uri: str, start: int = 0, end: int | None = None) -> Body:
        """Receive bytes [start, end) of the file at listing ``uri`` (see ``Transport``)."""
        return self.transport.open(uri, start, end)

    def fetch_range(self, uri: str, start: int, end: int) -> bytes:
        """Exactly bytes [start, end) of a file, via Range or, failing that, a streamed full GET."""
        want = end - start
        buf = bytearray()
        with self.open_file(uri, start, end) as body:
            skip = start - body.start
            for piece in body.chunks():
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                buf += piece[: want - len(buf)]
                if len(buf) >= want:
                    break
        if len(buf) != want:
            raise IntegrityError(f"short read of {uri}: {len(buf)} of {want} bytes")
        return bytes(buf)

    def file_size(self, uri: str) -> int:
        """The size the server gives (the truth when a listing's Size is empty), from a GET of
        the first byte: unlike a HEAD, its answer shows a login page for what it is."""
        with self.open_file(uri, 0, 1) as body:
            size = body.total if body.ranged else body.length
        if size is None:
            raise ServerError(f"no size for {uri} in the server's answer")
        return size


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name, "")
    return int(value) if value.isdigit() else None


def _looks_html(head: bytes) -> bool:
    return head.lstrip()[:9].lower().startswith(_HTML_START)


def _login_page(resp: requests.Response, expect_json: bool) -> bool:
    """A login or SSO page (XNAT answers a lost session with 200 and it, on some setups) where
    JSON was expected, or one that says it is XNAT's login page. File bodies are checked by
    the transport (``transport.login_page``)."""
    if resp.status_code != 200:
        return False
    html = "html" in resp.headers.get("Content-Type", "").lower()
    if expect_json:
        return html or _looks_html(resp.content[:64])
    return html and any(mark in resp.content[:1 << 20] for mark in LOGIN_MARKS)


def _unreachable(exc: requests.ConnectionError) -> bool:
    """Whether a connection error means the server cannot be reached (refused, DNS, no
    route), rather than one request cut on the way (reset, closed early)."""
    seen: BaseException | None = exc
    while seen is not None:
        reason = getattr(seen, "reason", None)
        for item in (seen, reason, *getattr(seen, "args", ())):
            if isinstance(item, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
                return True
        seen = seen.__context__ or seen.__cause__
    return False


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, in a few words, without URLs or secrets."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc).split(": ", 1)[-1].strip()
    if not text or text in ("b''", "''", "None"):
        text = type(exc).__name__
    return text.splitlines()[0][:200]
