"""HTTP to one server: its connection pools, what a failure or an answer means, and the one
retry loop. Nothing here knows about XNAT sessions or files; everything above builds on it.

Two pools share one cookie jar, one TLS setup and one proxy. Listings, logins and services
go through ``requests``. File bodies go straight through a urllib3 pool: requests'
per-request machinery (hooks, cookie-jar merging, environment, adapters) was half of the
mount's Python time for small files (issue 8's profile), and a file GET needs none of it:
one cookie, one optional Range, no redirects, no content decoding (``identity``: the bytes
are the file's, and nothing is spent inflating).

Whichever library an exchange went through, its failure becomes one of our errors through
one map (``kind_of``): unreachable (``ConnectError``: worth failing fast), TLS (final),
silent (``ServerTimeout``) or broken on the way (``TransferError``). Its answer goes
through one status map (``check_status``) and one login-page check (``login_page``): some
XNATs answer a lost session with 200 and their login page, on file GETs too, and such a page
is never data.

urllib3's and requests' own retries are off: stacked under ours they multiplied every
timeout by four. The one loop (``Http.call``) spends the caller's ``Attempts``, so a request
is tried at most four times in all and never past the caller's deadline: each try's socket
timeouts are cut to what is left of it, and a 503 or 429 that says when to come back
(``Retry-After``) sets the pause before the next try.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import unquote

import certifi
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError

from xnatfs.errors import (
    Changed,
    ConnectError,
    Forbidden,
    NotFound,
    ServerError,
    ServerTimeout,
    TLSError,
    TransferError,
    XnatfsError,
)
from xnatfs.xnat.retry import Attempts

T = TypeVar("T")

GRACE = 1.0  # seconds past a request's timeout that its retries may take, all together
PEEK = 1 << 20  # at most this much of an HTML answer is read to tell a login page from data
LOGIN_MARKS = (b"xnat-templates/screens/Login.vm", b'id="login_form"')
_HTML_START = (b"<!doctype", b"<html")
# What OpenSSL says when the other end answers a TLS hello in plain text.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure",
            "HTTP_REQUEST", "http request", "packet length too long")
# Failures before a connection exists: the server cannot be reached at all.
_UNREACHABLE = (ConnectTimeoutError, requests.ConnectTimeout, ConnectionRefusedError,
                socket.gaierror)  # urllib3's NewConnectionError is a ConnectTimeoutError
_SILENT = (ReadTimeoutError, requests.ReadTimeout, TimeoutError)
_TLS = (ssl.SSLError, ssl.CertificateError, urllib3.exceptions.SSLError,
        requests.exceptions.SSLError)
# TLS that ended rather than failed (a peer closing a kept-alive connection): one broken
# exchange, worth trying again, not a certificate or a port to tell the user about.
_TLS_ENDED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class SessionLost(XnatfsError):
    """The answer says our session had ended (401, or a login page where data was asked
    for). It is the session layer's to handle (one shared login, then the same request
    again) and never reaches a caller."""

    transient = True


def budget(timeout: float) -> Attempts:
    """The budget of a call whose caller gave none: its timeout and ``GRACE`` for retries,
    so a server silent for that long is given up on, not waited for four times over."""
    return Attempts.within(timeout + GRACE)


# -- what an answer means ----------------------------------------------------------------

def check_status(status: int, what: str, headers: Mapping[str, str], attempts: Attempts, *,
                 login: bool = False) -> None:
    """Map an answer's status to our errors. 5xx and 429 are transient (a Retry-After on 503
    or 429 sets the pause before the next try); 401 means a lost session; 412 means the
    precondition we sent (If-Unmodified-Since) failed. For a login, every answer but a 5xx or
    429 is the caller's (a refusal says 401, a web server that is not XNAT 404, 405 or 501)."""
    if status in (429, 503):
        attempts.retry_after = retry_after(headers.get("Retry-After"))
    if status in (429, 500, 502, 503, 504):
        raise ServerError(f"HTTP {status} from the server for {what}")
    if login or status < 400:
        return
    if status == 401:
        raise SessionLost(f"the session ended ({what})")
    if status == 403:
        raise Forbidden(f"access denied by the server: {what}")
    if status == 404:
        raise NotFound(f"not found on the server: {what}")
    if status == 412:
        raise Changed(f"{what} changed on the server since it was opened")
    raise ServerError(f"HTTP {status} from the server for {what}")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(when - time.time(), 0.0)


def login_page(status: int, content_type: str, peek: Callable[[], bytes], *, html_ok: bool,
               sniff: bool = False) -> bool:
    """Whether an answer is a login or SSO page in place of what was asked for.

    Where HTML cannot be the answer (``html_ok`` False: a listing, a session id, a file that
    is not itself HTML), any HTML is such a page; with ``sniff``, so is a body that starts
    like HTML whatever its Content-Type says. Where HTML may be the answer (an HTML file, a
    service), only XNAT's own login page is. ``peek`` gives the body's first bytes (at most
    ``PEEK``; empty when they cannot be looked at)."""
    if status != 200:
        return False
    html = "html" in content_type.lower()
    if not html_ok:
        return html or (sniff and looks_html(peek()[:64]))
    return html and any(mark in peek() for mark in LOGIN_MARKS)


def looks_html(head: bytes) -> bool:
    return head.lstrip()[:9].lower().startswith(_HTML_START)


# -- what a failure means ----------------------------------------------------------------

def kind_of(exc: BaseException) -> type[XnatfsError]:
    """The one map from a requests, urllib3 or socket failure to our errors. The whole chain
    of causes is looked at: requests wraps urllib3's errors, which wrap the socket's."""
    chain = causes(exc)
    if any(isinstance(item, _TLS) for item in chain) and \
            not any(isinstance(item, _TLS_ENDED) for item in chain):
        return TLSError
    if any(isinstance(item, _UNREACHABLE) for item in chain):
        return ConnectError  # before timeouts: a connect timeout is a TimeoutError too
    if any(isinstance(item, _SILENT) for item in chain):
        return ServerTimeout
    return TransferError


def causes(exc: BaseException) -> list[BaseException]:
    """An exception, what it was raised from or during, and the reasons urllib3 and requests
    keep in ``reason`` and ``args``."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        item = todo.pop()
        if any(item is other for other in seen):
            continue
        seen.append(item)
        for inner in (getattr(item, "reason", None), *getattr(item, "args", ()),
                      item.__cause__, item.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)
    return seen


def reason(exc: BaseException) -> str:
    """The innermost cause of a failure, in a few words, without URLs or secrets."""
    while (inner := exc.__cause__ or exc.__context__) is not None and inner is not exc:
        exc = inner
    inner = getattr(exc, "reason", None)  # urllib3 wraps its cause there; ssl keeps a code
    text = str(inner if isinstance(inner, BaseException) else exc).split(": ", 1)[-1].strip()
    if not text or text in ("b''", "''", "None"):
        text = type(exc).__name__
    return text.splitlines()[0][:200]


class Http:
    """The pools of one server (``base_url``, already normalised); thread-safe."""

    def __init__(self, base_url: str, *, insecure: bool = False, pool_size: int = 64,
                 user_agent: str = "xnatfs") -> None:
        self.base_url = base_url
        session = self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0,
                              pool_block=False)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # The environment (proxies, CA bundle) is read once, here. Left to requests, it is
        # scanned on every request (a third of a small file's cost), and ~/.netrc's password
        # goes out as Basic auth on every request, so that each request in flight after an
        # expiry would open an XNAT session of its own.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(base_url)
        verify: bool | str = False if insecure else (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
            or os.environ.get("CURL_CA_BUNDLE") or True)
        session.verify = verify
        session.headers.update({"User-Agent": user_agent, "Accept": "*/*"})
        options: dict[str, object] = {
            "maxsize": pool_size, "block": False, "retries": False,
            "cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        }
        if verify:  # the same CA bundle as requests uses: certifi's, or the user's
            options["ca_certs"] = verify if isinstance(verify, str) else certifi.where()
        proxy = session.proxies.get(base_url.split(":", 1)[0])
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options))
        self.file_headers = {"User-Agent": user_agent, "Accept": "*/*",
                             "Accept-Encoding": "identity"}
        self.quickest = float("inf")  # seconds, the quickest exchange so far (``round_trip``)

    def _timed(self, took: float) -> None:
        """Note an exchange's time to its headers. Two threads may race here and one lose
        its value: a minimum over many exchanges does not miss one."""
        if took < self.quickest:
            self.quickest = took

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- the retry loop ------------------------------------------------------------------

    @staticmethod
    def call(attempt: Callable[[], T], attempts: Attempts, what: str) -> T:
        """``attempt()`` until it succeeds, tried again after transient failures while
        ``attempts`` allows (the one retry policy: ``xnatfs.xnat.retry``)."""
        while True:
            attempts.start(what)
            try:
                return attempt()
            except XnatfsError as exc:
                attempts.again(exc, what)

    # -- one exchange --------------------------------------------------------------------

    def send(self, method: str, path: str, attempts: Attempts, timeout: tuple[float, float],
             *, login: bool = False, html_ok: bool = True, sniff: bool = False,
             **kw: object) -> requests.Response:
        """One exchange through requests (``path`` percent-encoded), its failure or status
        mapped to our errors. A lost session raises ``SessionLost`` unless ``login``."""
        what = unquote(path)
        read = min(timeout[1], attempts.left())
        try:
            resp = self.session.request(method, self.url(path),
                                        timeout=(min(timeout[0], read), read), **kw)  # type: ignore[arg-type]
        except (requests.RequestException, OSError) as exc:
            raise self.failure(exc, what, read) from None
        self._timed(resp.elapsed.total_seconds())  # requests' own: sent to headers parsed
        try:
            check_status(resp.status_code, what, resp.headers, attempts, login=login)
            if not login and login_page(resp.status_code, resp.headers.get("Content-Type", ""),
                                        lambda: resp.content[:PEEK], html_ok=html_ok,
                                        sniff=sniff):
                raise SessionLost(f"a login page in place of {what}")
        except (requests.RequestException, OSError) as exc:  # the body, looked at, broke
            resp.close()
            raise self.failure(exc, what, read) from None
        except BaseException:
            resp.close()
            raise
        return resp

    def open(self, path: str, headers: dict[str, str], attempts: Attempts,
             timeout: tuple[float, float], *, html_ok: bool) -> tuple[urllib3.BaseHTTPResponse,
                                                                      bytes]:
        """One GET of a file body through urllib3, up to its headers, mapped like ``send``.
        The body is left on the socket, except an HTML file's, which is read to tell it from a
        login page and returned with the response."""
        what = unquote(path)
        read = min(timeout[1], attempts.left())
        began = time.perf_counter()
        try:
            resp = self._pool.urlopen(
                "GET", self.url(path), headers=headers, redirect=False, retries=False,
                preload_content=False, decode_content=False, enforce_content_length=False,
                timeout=urllib3.Timeout(connect=min(timeout[0], read), read=read))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.failure(exc, what, read) from None
        self._timed(time.perf_counter() - began)  # the body is left on the socket
        head = b""

        def peek() -> bytes:
            nonlocal head
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) <= PEEK:
                head = resp.read(int(length))
            return head

        try:
            check_status(resp.status, what, resp.headers, attempts)
            if login_page(resp.status, resp.headers.get("Content-Type", ""), peek,
                          html_ok=html_ok):
                raise SessionLost(f"a login page in place of {what}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            resp.close()
            raise self.failure(exc, what, read) from None
        except BaseException:
            resp.close()
            raise
        return resp, head

    # -- failures ------------------------------------------------------------------------

    def failure(self, exc: BaseException, what: str, waited: float) -> XnatfsError:
        """A failed exchange as one of our errors, told in one line (``kind_of``)."""
        kind = kind_of(exc)
        if kind is TLSError:
            return self.tls_error(reason(exc))
        if kind is ConnectError:
            return ConnectError(f"cannot reach {self.base_url}: {reason(exc)}")
        if kind is ServerTimeout:
            return ServerTimeout(f"{self.base_url} sent nothing for {waited:.3g} s ({what})")
        return TransferError(f"request to {self.base_url} failed: {reason(exc)}")

    def tls_error(self, why: str) -> TLSError:
        """Name the real cause: a plain-HTTP port, a certificate, or the handshake itself."""
        why = re.sub(r"\s*\(_ssl\.c:\d+\)", "", why).rsplit("] ", 1)[-1]
        if any(sign in why for sign in _NOT_TLS):
            plain = "http" + self.base_url[len("https"):]
            return TLSError(f"{self.base_url} does not speak TLS: that port answers plain HTTP "
                            f"(use {plain} only if passwords may cross the network unencrypted)")
        if "CERTIFICATE_VERIFY_FAILED" in why or "certificate" in why.lower():
            return TLSError(f"TLS certificate check failed for {self.base_url}: {why} (for an "
                            "institutional CA, set REQUESTS_CA_BUNDLE or SSL_CERT_FILE to its "
                            "certificate file; --insecure skips the check)")
        return TLSError(f"TLS handshake with {self.base_url} failed: {why}")

    def close(self) -> None:
        self.session.close()
        self._pool.clear()
