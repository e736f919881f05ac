"""File listings, single-file downloads (Range, HEAD, conditional GET) and zip downloads.

Follows ``FileList`` and Restlet 1.1's ``RangeFilter`` (docs/xnat-api.md §5, §6, §7): the path
after ``/files/`` is matched raw, then URL-decoded as a whole if it holds ``%2B`` or ``%20``,
then decoded once more; one range gives 206, several give 501, a range past the end is not
checked (the body comes out short); a missing file is 404 with an empty body on a
single-catalogue URL and the HTML status page elsewhere.
"""

from __future__ import annotations

import re
import zlib
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote_plus

from xnat_emulator import listings, zipper
from xnat_emulator.archive import File, Subject
from xnat_emulator.knobs import EmulatorConfig
from xnat_emulator.routes import HttpError, Scope
from xnat_emulator.transfer import Response

CONTENT_TYPES = {"bmp": "image/bmp", "gif": "image/gif", "html": "text/html",
                 "jpg": "image/jpeg", "jpeg": "image/jpeg", "pdf": "application/pdf",
                 "png": "image/png", "svg": "image/svg+xml", "tiff": "image/tiff",
                 "txt": "text/plain", "xml": "text/xml"}
_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")


def file_listing(scope: Scope, query: dict[str, str], context_path: str, *,
                 blank: bool = False) -> Response:
    rows = [listings.file_row(f, scope.base(r), blank=blank)
            for r in scope.resources for f in r.files]
    for column in ("file_format", "file_content"):
        if column in query:
            wanted = "" if query[column] == "NULL" else query[column]
            rows = [row for row in rows if row[column] == wanted]
    return json_response(listings.file_table(rows, context_path))


def json_response(document: object, kind: str = "listing") -> Response:
    """JSON as Restlet streams it: no charset, no Content-Length."""
    return Response(200, [("Content-Type", "application/json")], listings.encode(document),
                    kind=kind, chunked=True)


def find_file(scope: Scope, raw: str) -> File | None:
    """``FileList`` + ``CatalogUtils.getEntryByURI``: as received, then URL-decoded."""
    path = unquote_plus(raw) if "%2B" in raw or "%20" in raw else raw
    for candidate in dict.fromkeys((path, unquote_plus(path))):
        for resource in scope.resources:
            found = resource.find(candidate)
            if found is not None:
                return found
    return None


def download(scope: Scope, raw_path: str, headers: dict[str, str],
             config: EmulatorConfig) -> Response:
    f = find_file(scope, raw_path)
    if f is None or f.missing:
        raise HttpError(404, "Unable to find file.", empty=scope.single)
    response = Response(200, kind="file", content=f.content, length=f.size)
    response.header("Content-Type", content_type(f.name))
    response.header("Last-Modified", formatdate(f.content.mtime, usegmt=True))
    response.header("Cache-Control", "must-revalidate")
    response.header("Content-Disposition", f'attachment; filename="{f.name}";')
    condition = _precondition(f.content.mtime, headers)
    if condition:
        response.status, response.content, response.length = condition, None, 0
        return response
    ranged = headers.get("range")
    if ranged and config.range_enabled:
        _apply_range(response, ranged, f.size, config.validate_ranges)
    return response


def _precondition(mtime: float, headers: dict[str, str]) -> int:
    """304 or 412 from If-Modified-Since / If-Unmodified-Since, else 0."""
    for name, status, fails in (("if-modified-since", 304, lambda t: int(mtime) <= t),
                                ("if-unmodified-since", 412, lambda t: int(mtime) > t)):
        if name in headers:
            try:
                when = parsedate_to_datetime(headers[name]).timestamp()
            except (TypeError, ValueError):
                continue
            if fails(when):
                return status
    return 0


def _apply_range(response: Response, header: str, size: int, validate: bool) -> None:
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return
    parts = spec.split(",")
    if len(parts) > 1:
        raise HttpError(501, "Multiple ranges are not supported")
    match = _RANGE.fullmatch(parts[0])
    if not match or not (match[1] or match[2]):
        return
    if match[1]:
        start = int(match[1])
        last = int(match[2]) if match[2] else size - 1
    else:
        start, last = max(0, size - int(match[2])), size - 1
    if validate and (start >= size or last < start):
        response.status, response.content, response.length = 416, None, 0
        response.header("Content-Range", f"bytes */{size}")
        return
    response.status = 206
    response.start, response.length = start, max(0, last - start + 1)
    response.header("Content-Range", f"bytes {start}-{last}/{size}")


def zip_download(scope: Scope, query: dict[str, str], broken: str = "") -> Response:
    """``broken`` (``EmulatorConfig.broken_zips``) makes a server whose zips cannot be used
    (``"garbage"``, ``"names"``)."""
    files = [f for r in scope.resources for f in r.files if not f.missing]
    if not files:
        raise HttpError(404, "No matching files found.")
    structure = query.get("structure", "default")
    entries = [(zipper.entry_name(f, structure, scope.project), f) for f in files]
    return _zip_response(scope, entries, broken)


def _zip_response(scope: Scope, entries: list[tuple[str, File]], broken: str) -> Response:
    if broken == "names":
        entries = [(f"elsewhere/{i}.dat", f) for i, (_, f) in enumerate(entries)]
    response = Response(200, [("Content-Type", "application/zip"),
                              ("Content-Disposition",
                               f'attachment; filename="{_archive_name(scope)}.zip";')],
                        kind="zip", chunked=True, zip_entries=entries)
    if broken == "garbage":
        response.zip_entries, response.body = None, b"<html><body>Not a zip</body></html>\n"
    return response


def pattern_zip(scope: Scope, raw: str, query: dict[str, str], broken: str = "") -> Response:
    """``files/{path}?format=zip``: ``FileList.handleMultipleCatalogs`` with a file path
    (docs/xnat-api.md §7). The path names one file; else, ending in ``/``, a folder; else,
    ending in ``*``, a Java regex (its last ``*`` made ``.*``) that an entry's URI must match
    whole. One match is zipped under its base name, several under their paths in the
    resource, in ``HashMap`` order (here: a fixed order unrelated to the listing's). When
    the last file of that order has a ``.zip`` name the server sends no zip at all.
    ``broken="patterns"`` is a server that does not know patterns (404); ``"whole"`` one
    that ignores them and sends the resource."""
    if broken == "whole":
        return zip_download(scope, query)
    path = unquote_plus(raw) if "%2B" in raw or "%20" in raw else raw
    found = find_file(scope, raw)
    matched = [found] if found is not None else []
    if not matched and path.endswith("/"):
        matched = [f for r in scope.resources for f in r.files if f.relpath.startswith(path)]
    if not matched and path.endswith("*") and broken != "patterns":
        at = path.rfind("*")
        try:
            regex = re.compile(path[:at] + ".*" + path[at + 1:])
        except re.error:
            raise HttpError(500, "Bad regular expression") from None
        matched = [f for r in scope.resources for f in r.files if regex.fullmatch(f.relpath)]
    matched = [f for f in matched if not f.missing]
    if not matched:
        raise HttpError(404, "Unable to find file.")
    if len(matched) == 1:
        entries = [(matched[0].name, matched[0])]
    else:
        entries = sorted(((f.relpath, f) for f in matched),
                         key=lambda e: zlib.crc32(e[0].encode("utf-8", "surrogateescape")))
        if entries[-1][0].lower().endswith(".zip"):
            return Response(200, [("Content-Type", "application/zip")], b"", kind="zip")
    return _zip_response(scope, entries, broken)


def _archive_name(scope: Scope) -> str:
    """``getArchiveDirectoryName()``: session label, else subject label, else project ID."""
    owner = scope.resources[0].owner
    project = scope.project
    if owner.session is not None:
        return (owner.session.label_in(project) if project else None) or owner.session.label
    if isinstance(owner, Subject):
        return (owner.label_in(project) if project else None) or owner.label
    return owner.project.id


def catalog(scope: Scope) -> Response:
    """``.../resources/{r}`` itself: the catalogue XML."""
    if not scope.resources:
        raise HttpError(404, "Unable to find the specified resource.")
    entries = "".join(
        f'<cat:entry URI="{_attr(f.relpath)}" name="{_attr(f.name)}" ID="{_attr(f.relpath)}"'
        f' digest="{f.md5 if f.digest_listed else ""}"/>\n'
        for r in scope.resources for f in r.files)
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<cat:Catalog xmlns:cat="http://nrg.wustl.edu/catalog" ID="{scope.resources[0].id}">'
            f"\n<cat:entries>\n{entries}</cat:entries>\n</cat:Catalog>\n")
    return Response(200, [("Content-Type", "text/xml")], body.encode("utf-8", "surrogateescape"),
                    kind="item", chunked=True)


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
            .replace("\x00", ""))
