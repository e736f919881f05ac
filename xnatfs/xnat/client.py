"""The one place that speaks HTTP to XNAT.

One ``requests.Session`` is shared by every thread, so all workers ride on one JSESSIONID (XNAT
caps live sessions per user). Basic credentials go only with the login: were they on every
request, each request in flight when the session expires would open a session of its own.
Instead a 401, or an HTML page where data was expected, triggers exactly one silent re-login
for the whole process, which every waiting thread then shares; a second refusal is final,
because XNAT locks accounts after 20 failed logins. Every request has a connect and a read
timeout.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from xnatfs import __version__
from xnatfs.errors import (
    AuthError,
    ConnectError,
    Forbidden,
    IntegrityError,
    NotFound,
    ServerError,
    TLSError,
    UsageError,
)
from xnatfs.xnat.credentials import Credentials
from xnatfs.xnat.rows import Row, result_rows

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HTML_START = (b"<!doctype", b"<html")
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


@dataclass
class Body:
    """A streamed file body. ``start`` is where it begins in the file; ranged is False when the
    server ignored Range and sent the whole file."""

    response: requests.Response
    start: int
    length: int | None
    total: int | None
    ranged: bool

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body in pieces; raises IntegrityError if it ends short of Content-Length."""
        got = 0
        try:
            for piece in self.response.iter_content(size):
                got += len(piece)
                yield piece
        except requests.RequestException as exc:
            reason = _reason(exc)
            raise IntegrityError(f"download interrupted after {got} bytes: {reason}") from None
        if self.length is not None and got != self.length:
            raise IntegrityError(f"truncated body: {got} of {self.length} bytes")

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        retries: int = 3,
        pool_size: int = 32,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.credentials = credentials or Credentials()
        self.timeout = (connect_timeout, read_timeout)
        self.listing_timeout = (connect_timeout, listing_timeout)
        self._login_lock = threading.Lock()
        self._generation = 0
        self._auth_failure: AuthError | None = None
        self.session = requests.Session()
        retry = Retry(
            total=retries, connect=retries, read=retries, status=retries,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD", "POST"}),  # POST: only the login
            backoff_factor=0.2, backoff_max=5.0, raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
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
        resp = self._send("POST", "/data/JSESSION", timeout=self.timeout,
                          auth=(creds.user or "", creds.password or ""))
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
            log.info("the session at %s had ended: logged in again", self.base_url)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    def _send(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(method, self.url(path), **kw)
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(_reason(exc)) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ConnectError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise ConnectError(f"request to {self.base_url} failed: {_reason(exc)}") from None

    def _tls_error(self, reason: str) -> TLSError:
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
        """Send one request, re-logging in once on 401 or an HTML login page, and map
        failures to the shared error vocabulary. ``path`` is already percent-encoded."""
        if self._auth_failure:
            raise self._auth_failure
        for attempt in (0, 1):
            generation = self._generation
            resp = self._send(method, path, params=params, headers=headers, stream=stream,
                              timeout=timeout or self.timeout)
            lost = resp.status_code == 401 or (
                resp.status_code == 200 and expect_json and _is_html(resp)
            )
            if not lost:
                break
            resp.close()
            if attempt:
                self._auth_failure = AuthError(
                    f"{self.base_url} refused our credentials after a fresh login"
                )
                raise self._auth_failure
            self._relogin(generation)
        if resp.status_code == 403:
            resp.close()
            raise Forbidden(f"access denied by the server: {unquote(path)}")
        if resp.status_code == 404:
            resp.close()
            raise NotFound(f"not found on the server: {unquote(path)}")
        if resp.status_code >= 400:
            resp.close()
            raise ServerError(f"HTTP {resp.status_code} from the server for {path}")
        return resp

    def listing(self, path: str, **params: str) -> list[Row]:
        """The rows of a JSON listing at ``path`` (an encoded ``/data/...`` path)."""
        for attempt in (0, 1):  # a body cut short by a proxy is malformed: ask once more
            resp = self.request("GET", path, params={**params, "format": "json"},
                                expect_json=True, timeout=self.listing_timeout)
            try:
                return result_rows(resp.json(), path)
            except ValueError:
                if attempt:
                    raise ServerError(f"the server sent malformed JSON for {path}") from None
                log.info("malformed JSON for %s; asking again", path)
        raise AssertionError("unreachable")

    # -- files ---------------------------------------------------------------------------

    def open_file(self, uri: str, start: int = 0, end: int | None = None) -> Body:
        """Stream a file from a listing ``uri`` (unencoded), bytes [start, end).

        A 206 must carry a Content-Range that matches what was asked; a 200 means the server
        ignored Range and the body is the whole file from byte 0 (``Body.ranged`` is False).
        """
        headers = {}
        if start > 0 or end is not None:
            last = "" if end is None else str(end - 1)
            headers["Range"] = f"bytes={start}-{last}"
        resp = self.request("GET", encode_path(uri), headers=headers, stream=True)
        length = _int_header(resp, "Content-Length")
        if resp.status_code == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            want_last = None if end is None else end - 1
            if not m or int(m[1]) != start or (want_last is not None and int(m[2]) != want_last):
                resp.close()
                raise IntegrityError(
                    f"server answered range {start}-{want_last} with "
                    f"{resp.headers.get('Content-Range')!r} for {uri}"
                )
            if length is not None and length != int(m[2]) - int(m[1]) + 1:
                resp.close()
                raise IntegrityError(f"Content-Length disagrees with Content-Range for {uri}")
            total = None if m[3] == "*" else int(m[3])
            return Body(resp, start, int(m[2]) - int(m[1]) + 1, total, True)
        if resp.status_code != 200:
            resp.close()
            raise ServerError(f"HTTP {resp.status_code} from the server for {uri}")
        return Body(resp, 0, length, length, False)

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
        """Content-Length from a HEAD: the truth when a listing's Size is empty."""
        resp = self.request("HEAD", encode_path(uri))
        resp.close()
        size = _int_header(resp, "Content-Length")
        if size is None:
            raise ServerError(f"no Content-Length for {uri}")
        return size


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name, "")
    return int(value) if value.isdigit() else None


def _looks_html(head: bytes) -> bool:
    return head.lstrip()[:9].lower().startswith(_HTML_START)


def _is_html(resp: requests.Response) -> bool:
    """A login or SSO page where JSON was expected (XNAT answers these with 200)."""
    if "html" in resp.headers.get("Content-Type", "").lower():
        return True
    return _looks_html(resp.content[:64])


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, in a few words, without URLs or secrets."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc).split(": ", 1)[-1].strip()
    if not text or text in ("b''", "''", "None"):
        text = type(exc).__name__
    return text.splitlines()[0][:200]
