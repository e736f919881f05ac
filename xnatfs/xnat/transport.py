"""File bytes over HTTP: the hot path of every read, and the one place where answers to file
requests become our errors.

Listings, logins and services go through ``requests`` (``client.py``); file bodies come here,
straight through a urllib3 pool that shares the client's session, TLS settings and retry
policy. requests' per-request machinery (hooks, cookie-jar merging, environment, adapters) was
half of the mount's Python time for small files (issue 8's profile); a file GET needs none of
it: one cookie, one optional Range, no redirects, no content decoding (``identity``: the bytes
are the file's, and nothing is spent inflating).

What every answer is checked for: a lost session (401, or a login page with 200, which is
never data: one shared re-login, then the request again), 5xx and resets (retried within the
timeout, as every request is), a 206 whose Content-Range is not the range asked for, and a
body shorter than it said.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import certifi
import urllib3
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from xnatfs.errors import (
    ConnectError,
    IntegrityError,
    ServerError,
    ServerTimeout,
    TransferError,
)

if TYPE_CHECKING:
    from xnatfs.xnat.client import XnatClient

PIECE = 1 << 20  # bytes taken off the socket at a time, unless a caller asks for more
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HTML_FILE = (".html", ".htm", ".xhtml")
LOGIN_MARKS = (b"xnat-templates/screens/Login.vm", b'id="login_form"')


@dataclass
class SessionLosses:
    """The lost sessions one request has met (``XnatClient.session_lost``, shared by both
    request paths): in all, and those in a row that had served no request while no other
    session did either (``served``: the newest session known to work when counting began)."""

    total: int = 0
    unused: int = 0
    served: int = 0


class Body:
    """A file body being received. ``start`` is where it begins in the file; ``ranged`` is
    False when the server ignored Range and sent the whole file."""

    def __init__(self, response: urllib3.BaseHTTPResponse, start: int, length: int | None,
                 total: int | None, ranged: bool, uri: str, head: bytes = b"") -> None:
        self.response = response
        self._head = head  # bytes already taken off the socket (an HTML file, looked at)
        self.start = start
        self.length = length
        self.total = total
        self.ranged = ranged
        self.uri = uri
        self.got = 0

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at the declared end); IntegrityError or
        TransferError when the body ends or breaks early."""
        if self.length is not None:
            size = min(size, self.length - self.got)
        if size <= 0:
            return b""
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            self.got += len(data)
            return data
        try:
            data = self.response.read(size)
        except ReadTimeoutError:
            raise ServerTimeout(f"the server stopped sending {self.uri} after {self.got} "
                                "bytes") from None
        except (ProtocolError, HTTPError, OSError) as exc:
            raise TransferError(f"download of {self.uri} interrupted after {self.got} bytes: "
                                f"{_reason(exc)}") from None
        self.got += len(data)
        if len(data) < size and self.length is not None:
            raise IntegrityError(f"truncated body: {self.got} of {self.length} bytes")
        return data

    def chunks(self, size: int = PIECE) -> Iterator[bytes]:
        """The rest of the body in pieces of ``size`` bytes (the last may be shorter)."""
        while True:
            data = self.read(size)
            if not data:
                return
            yield data
            if self.length is None and len(data) < size:
                return

    def close(self) -> None:
        """Done with it: a body read to its end goes back to the pool, any other is dropped
        (its connection could not be reused before the rest of the body was drained)."""
        if self.length is not None and self.got >= self.length:
            self.response.release_conn()
        else:
            self.response.close()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport:
    """Ranged GETs of files for one client; thread-safe."""

    def __init__(self, client: XnatClient, *, pool_size: int = 64) -> None:
        self.client = client
        session = client.session
        verify = session.verify
        options: dict[str, object] = {
            "maxsize": pool_size, "block": False, "retries": False,
            "cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        }
        if verify:  # the same CA bundle as requests uses for listings: certifi's, or the user's
            options["ca_certs"] = verify if isinstance(verify, str) else certifi.where()
        proxy = session.proxies.get(client.base_url.split(":", 1)[0])
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options))
        self._headers = {"User-Agent": str(session.headers.get("User-Agent", "xnatfs")),
                         "Accept": "*/*", "Accept-Encoding": "identity"}

    def open(self, uri: str, start: int = 0, end: int | None = None) -> Body:
        """Receive bytes [start, end) of the file at listing ``uri`` (unencoded). A 206 must
        carry the Content-Range asked for; a 200 means the server ignored Range and the body is
        the whole file from byte 0."""
        from xnatfs.xnat.client import encode_path

        path = encode_path(uri)
        client = self.client
        headers = dict(self._headers)
        if start > 0 or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        connect, read = client.timeout
        losses = SessionLosses()
        head = b""  # an HTML file's body, read to tell it from a login page

        def attempt(left: float) -> urllib3.BaseHTTPResponse:
            nonlocal head
            while True:
                generation = client.generation
                cookie = client.session.cookies.get("JSESSIONID")
                if cookie:
                    headers["Cookie"] = f"JSESSIONID={cookie}"
                try:
                    resp = self._pool.urlopen(
                        "GET", client.url(path), headers=headers, redirect=False,
                        preload_content=False, decode_content=False,
                        timeout=urllib3.Timeout(connect=connect, read=max(left, 0.05)))
                except NewConnectionError as exc:
                    raise ConnectError(f"cannot reach {client.base_url}: {_reason(exc)}") \
                        from None
                except SSLError as exc:
                    raise client.tls_error(_reason(exc)) from None
                except ReadTimeoutError:
                    raise ServerTimeout(f"{client.base_url} sent nothing for {left:.3g} s "
                                        f"({uri})") from None
                except (ProtocolError, HTTPError, OSError) as exc:
                    raise TransferError(f"request to {client.base_url} failed: "
                                        f"{_reason(exc)}") from None
                page = login_page(resp, uri)
                if resp.status == 401 or page is True:
                    resp.close()
                    client.session_lost(generation, path, losses)
                    continue
                try:
                    client.check_status(resp.status, path)
                except BaseException:
                    resp.close()
                    raise
                client.served(generation)
                head = page or b""
                return resp

        resp = client.retrying(attempt, read, f"GET {uri}")
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
            return Body(resp, start, int(m[2]) - int(m[1]) + 1, total, True, uri)
        if resp.status != 200:
            resp.close()
            raise ServerError(f"HTTP {resp.status} from the server for {uri}")
        return Body(resp, 0, length, length, False, uri, head)

    def close(self) -> None:
        self._pool.clear()


def login_page(resp: urllib3.BaseHTTPResponse, uri: str) -> bool | bytes:
    """True for a login or SSO page in place of a file: any file served as HTML that is not
    itself an HTML file, or an HTML file whose body is XNAT's login page. For an HTML file that
    is not one, its body (read to look at it), else False."""
    if resp.status != 200 or "html" not in resp.headers.get("Content-Type", "").lower():
        return False
    if not uri.lower().endswith(_HTML_FILE):
        return True
    length = _int(resp.headers.get("Content-Length"))
    if length is None or length > 1 << 20:
        return False
    body = resp.read(length)
    return True if any(mark in body for mark in LOGIN_MARKS) else body


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).split(": ", 1)[-1].strip()
    return (text or type(exc).__name__).splitlines()[0][:200]
