"""Zip downloads (``?format=zip``): XNAT's entry names, streamed without a Content-Length.

Entry names follow ``FileList.buildZipRepresentation`` (docs/xnat-api.md §7), including its plain
string replacement: a folder inside a resource named like the scan ID gets the type suffix
too, as on the real server. Entries are STORED, as XNAT's default; Zip64 kicks in by itself.
"""

from __future__ import annotations

import re
import time
import zipfile
from collections.abc import Callable
from typing import Protocol

from xnat_emulator.archive import File, Project, Scan, Subject

_WINDOWS_UNSAFE = re.compile(r'[/\\:*?"<>|]')


class Sink(Protocol):
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


def entry_name(f: File, structure: str, project: Project | None) -> str:
    """The name of ``f`` inside a zip; labels are those in ``project`` when given."""
    resource, owner = f.resource, f.resource.owner
    label = resource.label or str(resource.id)
    if structure == "improved":
        folder = owner.CATEGORY
        if owner.cat_id:
            desc = _WINDOWS_UNSAFE.sub("_", owner.cat_desc).strip()
            folder += f"/{owner.cat_id}_{desc}" if desc else f"/{owner.cat_id}"
        return f"{folder}/{label}/{f.relpath}"
    uri = f"{resource.base_uri('/data')}/files/{f.relpath}"
    if owner.session is not None:
        session = owner.session
        root = (session.label_in(project) if project else None) or session.label
        uri = root + uri[uri.index(f"/{session.id}/") + len(session.id) + 1:]
    elif isinstance(owner, Subject):
        root = (owner.label_in(project) if project else None) or owner.label
        uri = root + uri[uri.index("/resources/"):]
    else:
        uri = owner.project.id + uri[uri.index("/resources/"):]
    uri = uri.replace(f"/{resource.id}/files/", f"/{label}/files/", 1)
    if isinstance(owner, Scan) and structure != "simplified":
        suffix = re.sub(r"\W", "_", owner.type, flags=re.ASCII)
        uri = uri.replace(f"/{owner.id}/", f"/{owner.id}-{suffix}/")
    if structure == "simplified":
        uri = uri.replace("/resources", "").replace("/files", "")
    return uri


def write_zip(sink: Sink, entries: list[tuple[str, File]],
              garble: Callable[[], bool] | None = None) -> None:
    """Stream the entries into ``sink`` (which need not be seekable). ``garble``, asked once
    per entry, says when to flip its first byte before zipping it (the CRC then fits the
    wrong bytes, as a server that read a changed file would give)."""
    seen: set[str] = set()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, f in entries:
            if name in seen:
                continue
            seen.add(name)
            info = zipfile.ZipInfo(name, time.localtime(f.content.mtime)[:6])
            info.file_size = f.size
            flip = f.size > 0 and garble is not None and garble()
            with archive.open(info, "w") as out:
                for piece in f.content.chunks(0, f.size):
                    if flip:
                        piece, flip = bytes([piece[0] ^ 0xFF]) + piece[1:], False
                    out.write(piece)
