"""The error vocabulary shared by every layer.

Each error carries one human line (its ``str``) that the command line prints as is, an exit
code for the command line, an errno for the FUSE layer, and whether it is ``transient``: worth
the same request again after a pause (a reset, a 5xx, a body cut short) rather than final (a
refused login, a missing object, bytes that arrived whole but wrong). Every layer that retries
asks ``transient``; none keeps its own list. Lower layers raise these; front ends translate
them, so no front end needs to know about requests or HTTP status codes.
"""

from __future__ import annotations

import errno


class XnatfsError(Exception):
    """Base class: a failure that can be told to the user in one line."""

    exit_code = 1
    errno = errno.EIO
    transient = False


class UsageError(XnatfsError):
    """The command line or its arguments are wrong."""

    exit_code = 2
    errno = errno.EINVAL


class ConnectError(XnatfsError):
    """The server cannot be reached at all: DNS, refused connection, no route, TLS failure.
    Unlike one failed request, this is worth failing fast for (see ``TransferError``)."""

    errno = errno.EIO
    transient = True


class TransferError(XnatfsError):
    """One request failed on the way (a reset, a timeout, a body cut short by the network):
    the server is there, and the same request may well succeed."""

    errno = errno.EIO
    transient = True


class ServerTimeout(TransferError):
    """The server accepted the request but sent nothing for the whole timeout."""


class TLSError(ConnectError):
    """The server's TLS is not what we can trust or speak: a certificate that fails its check,
    or a port that answers plain HTTP. Asking again brings the same answer."""

    transient = False


class AuthError(XnatfsError):
    """The server refused our credentials (after exactly one re-login)."""

    exit_code = 3
    errno = errno.EACCES


class NotFound(XnatfsError):
    """The object does not exist, or is not visible to this user (XNAT's 403/404)."""

    exit_code = 4
    errno = errno.ENOENT


class Forbidden(NotFound):
    """XNAT knows the object but will not show it to this user (403)."""

    errno = errno.EACCES


class ServerError(XnatfsError):
    """The server answered, but not with what XNAT should answer (5xx, bad JSON, HTML)."""

    errno = errno.EIO
    transient = True


class IntegrityError(XnatfsError):
    """Bytes from the server failed a check: short body, wrong Content-Range, MD5 mismatch."""

    errno = errno.EIO
    transient = True


class DigestMismatch(IntegrityError):
    """The bytes arrived whole but are not the ones the listing's MD5 describes."""

    transient = False  # the same request would bring the same bytes


class Changed(XnatfsError):
    """The file is no longer the revision a reader opened (its Last-Modified moved, or the
    server refused our If-Unmodified-Since with 412): its bytes must not be mixed into what
    was already served, and asking again brings the new revision, never the old one."""

    errno = errno.EIO
    transient = False


class LocalError(XnatfsError):
    """Writing one file to a local output folder failed; the run goes on with the others."""


class OutputFailed(XnatfsError):
    """The output folder cannot take any more data (full, over quota, read-only, failing):
    no other file could be written either, so the run stops and keeps what it has."""


# Local errors after which no other file can be written either.
_OUTPUT_FATAL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def write_error(exc: OSError, what: str) -> LocalError | OutputFailed:
    """An OSError while writing ``what``, as a one-line error: for this file, or for all."""
    import os

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in _OUTPUT_FATAL:
        return OutputFailed(f"cannot write {what}: {reason}")
    return LocalError(f"cannot write {what}: {reason}")
