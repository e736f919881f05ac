"""The XNAT client: base URLs and paths, listings, and files, on top of the shared session
(``session``) and the HTTP layer (``http``), which alone speak to the server.

Every call has one budget (``retry.Attempts``): given by the caller, or made from the call's
timeout plus ``GRACE``. Everything under the call that may try again spends that budget, so
``--timeout`` bounds what a caller waits: a server silent for that long is given up on for
this call, not waited for four times over. A file is opened by one GET of the bytes asked
for, up to its headers; its body then comes through ``transport.Body`` under the same
budget, and nothing here tries a body again (the reader resumes it, with the same budget).
"""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3

from xnatfs import __version__
from xnatfs.errors import (
    Changed,
    Forbidden,
    IntegrityError,
    NotFound,
    ServerError,
    TransferError,
    UsageError,
    XnatfsError,
)
from xnatfs.xnat.credentials import Credentials
from xnatfs.xnat.http import GRACE, Http, budget, reason
from xnatfs.xnat.retry import MAX_TRIES, Attempts
from xnatfs.xnat.rows import Row, result_rows
from xnatfs.xnat.session import MAX_DROPPED, MAX_LOST, JSession, not_xnat
from xnatfs.xnat.transport import Body

__all__ = ["GRACE", "MAX_DROPPED", "MAX_LOST", "Body", "XnatClient", "data_path",
           "encode_path", "normalise_base_url"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HTML_FILE = (".html", ".htm", ".xhtml")
# Where XNAT's web pages and REST API begin below its base URL.
_WEB_PART = re.compile(r"/(?:app|data|REST)/")


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
        retries: int = MAX_TRIES - 1,
        pool_size: int = 64,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        connect_timeout = min(connect_timeout, read_timeout)
        self.timeout = (connect_timeout, read_timeout)
        self.listing_timeout = (connect_timeout, listing_timeout)
        self._tries = max(1, min(retries + 1, MAX_TRIES))
        self.http = Http(self.base_url, insecure=insecure, pool_size=pool_size,
                         user_agent=f"xnatfs/{__version__} python-requests/"
                                    f"{requests.__version__}")
        self.session = self.http.session  # the cookie jar and TLS setup of every request
        self.jsession = JSession(self.http, credentials or Credentials(), self.timeout)

    @property
    def credentials(self) -> Credentials:
        """Who logs in; a renewed token replaces them, for the next login."""
        return self.jsession.credentials

    @credentials.setter
    def credentials(self, credentials: Credentials) -> None:
        self.jsession.credentials = credentials

    @property
    def generation(self) -> int:
        """How many logins this client has made: a lost session is renewed once per value."""
        return self.jsession.generation

    @property
    def round_trip(self) -> float:
        """Seconds, the quickest exchange with the server so far, up to its headers (inf
        before the first): how near it is, as a stream's pace over a link goes."""
        return self.http.quickest

    def attempts(self, timeout: float) -> Attempts:
        """The budget of a call whose caller gave none (``GRACE`` past its timeout)."""
        attempts = budget(timeout)
        attempts.tries = self._tries
        return attempts

    # -- session -------------------------------------------------------------------------

    def login(self) -> None:
        """Open the shared JSESSION (or check that guest / the given JSESSIONID works)."""
        if self.credentials.user is not None:
            self.jsession.login(self.attempts(self.timeout[1]))
            return
        try:
            self.request("GET", "/data/projects", params={"format": "json"}, expect_json=True)
        except Forbidden:
            raise
        except NotFound:
            raise not_xnat(self.base_url, "HTTP 404 for /data/projects") from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

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
        attempts: Attempts | None = None,
    ) -> requests.Response:
        """Send one request (``path`` already percent-encoded) on the shared session, tried
        again within ``attempts`` (default: the timeout plus ``GRACE``). Where JSON is
        expected, any HTML is a lost session's login page."""
        timeout = timeout or self.timeout
        attempts = attempts or self.attempts(timeout[1])
        return self.jsession.exchange(lambda: self.http.send(
            method, path, attempts, timeout, params=params, headers=headers, stream=stream,
            html_ok=not expect_json, sniff=expect_json), path, attempts,
            f"{method} {unquote(path)}")

    def listing(self, path: str, *, attempts: Attempts | None = None,
                **params: str) -> list[Row]:
        """The rows of a JSON listing at ``path`` (an encoded ``/data/...`` path). A body cut
        short by a proxy is malformed: it is asked for again, within the same budget."""
        attempts = attempts or self.attempts(self.listing_timeout[1])
        what = f"listing {unquote(path)}"
        while True:
            resp = self.request("GET", path, params={**params, "format": "json"},
                                expect_json=True, timeout=self.listing_timeout,
                                attempts=attempts)
            failure: XnatfsError
            try:
                document = resp.json()
            except requests.RequestException as exc:  # cut while reading
                failure = TransferError(f"{what} failed: {reason(exc)}")
            except ValueError:
                failure = ServerError(f"the server sent malformed JSON for {path}")
            else:
                return result_rows(document, path)
            attempts.again(failure, what)  # the request again is one more of its tries

    def config(self, project: str, tool: str, path: str) -> bytes | None:
        """A project's stored configuration (XNAT's config service, ``?contents=true``), or
        None when it has none (404), e.g. ``config("P", "bids", "bidsmap")``."""
        try:
            resp = self.request("GET", data_path("projects", project, "config", tool, path),
                                params={"contents": "true"}, timeout=self.listing_timeout)
        except NotFound:
            return None
        return resp.content

    # -- files ---------------------------------------------------------------------------

    def open_file(self, uri: str, start: int = 0, end: int | None = None, *,
                  attempts: Attempts | None = None, since: str | None = None) -> Body:
        """One GET of bytes [start, end) of the file at listing ``uri`` (unencoded), up to its
        headers; failures before them are tried again within ``attempts`` (default: the read
        timeout plus ``GRACE``), and the body is read within the same budget. A 206 must carry
        the Content-Range asked for; a 200 means the server ignored Range and the body is the
        whole file from byte 0. With ``since`` (a Last-Modified value), a file changed since
        raises ``Changed``: asked with If-Unmodified-Since, and checked in the answer."""
        read_timeout = self.timeout[1]
        attempts = attempts or self.attempts(read_timeout)
        path = encode_path(uri)
        headers = dict(self.http.file_headers)
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if since is not None:
            headers["If-Unmodified-Since"] = since
        resp, head = self._open(path, headers, attempts, f"GET {uri}",
                                html_ok=uri.lower().endswith(_HTML_FILE))
        modified = resp.headers.get("Last-Modified")
        if since is not None and modified is not None and not _same_time(modified, since):
            resp.close()
            raise Changed(f"{uri} changed on the server since it was opened")
        length = _int(resp.headers.get("Content-Length"))
        if resp.status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            want_last = None if end is None else end - 1
            if not m or int(m[1]) != start or (want_last is not None and int(m[2]) != want_last):
                resp.close()
                raise IntegrityError(f"server answered range {start}-{want_last} with "
                                     f"{resp.headers.get('Content-Range')!r} for {uri}")
            if length is not None and length != int(m[2]) - int(m[1]) + 1:
                resp.close()
                raise IntegrityError(f"Content-Length disagrees with Content-Range for {uri}")
            total = None if m[3] == "*" else int(m[3])
            return Body(resp, start, int(m[2]) - int(m[1]) + 1, total, True, uri,
                        attempts=attempts, read_timeout=read_timeout, last_modified=modified)
        if resp.status != 200:
            resp.close()
            raise ServerError(f"HTTP {resp.status} from the server for {uri}")
        return Body(resp, 0, length, length, False, uri, head, attempts=attempts,
                    read_timeout=read_timeout, last_modified=modified)

    def _open(self, path: str, headers: dict[str, str], attempts: Attempts, what: str, *,
              html_ok: bool) -> tuple[urllib3.BaseHTTPResponse, bytes]:
        """A file body's GET up to its headers, in the shared session: each try sends the
        session's cookie as it is then (a re-login between tries changes it)."""

        def send() -> tuple[urllib3.BaseHTTPResponse, bytes]:
            cookie = self.jsession.cookie()
            if cookie:
                headers["Cookie"] = f"JSESSIONID={cookie}"
            return self.http.open(path, headers, attempts, self.timeout, html_ok=html_ok)

        return self.jsession.exchange(send, path, attempts, what)

    def open_zip(self, resource: str, pattern: str | None = None) -> Body:
        """A GET of ``resource`` (its listing URI up to ``/resources/{id}``, unencoded) as
        ``?format=zip``, up to its headers, tried again like ``open_file``. ``pattern``
        (``prefix*``, of characters that need no encoding) asks for the files it matches
        alone (docs/xnat-api.md §7); its ``*`` goes unencoded, as XNAT decodes the path only
        when it holds ``%2B`` or ``%20``. The body has no length (XNAT streams it chunked)
        and cannot be ranged or resumed; whoever reads it across many calls gives it a fresh
        ``attempts`` for each (``Body``)."""
        read_timeout = self.timeout[1]
        attempts = self.attempts(read_timeout)
        files = "/files" if pattern is None else "/files/" + quote(pattern, safe="/*")
        path = encode_path(resource) + files + "?format=zip"
        what = f"GET {resource} as a zip" if pattern is None else \
            f"GET {resource} files {pattern} as a zip"
        resp, head = self._open(path, dict(self.http.file_headers), attempts, what,
                                html_ok=False)
        if resp.status != 200:
            resp.close()
            raise ServerError(f"HTTP {resp.status} from the server for the zip of {resource}")
        return Body(resp, 0, None, None, False, f"{resource} (zip)", head, attempts=attempts,
                    read_timeout=read_timeout)

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


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _same_time(one: str, other: str) -> bool:
    """Whether two HTTP dates name the same second (servers need not spell them alike)."""
    if one.strip() == other.strip():
        return True
    try:
        return parsedate_to_datetime(one) == parsedate_to_datetime(other)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
