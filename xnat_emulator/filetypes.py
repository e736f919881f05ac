"""Which generator makes a synthetic file's bytes, chosen by its name as a client would.

``.dcm`` files are DICOM images, ``.nii`` NIfTI volumes, ``.nii.gz`` gzipped NIfTI, other
``.gz`` gzip of random data, ``.txt``, ``.json`` and ``.pdf`` text, JSON and a one-page PDF;
anything else stays random bytes. Every generator is deterministic in (seed, size, place in
the archive) and makes the bytes of a range on demand (docs/xnat-api.md §12).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from functools import lru_cache

from xnat_emulator.archive import Resource, Scan
from xnat_emulator.content import Content, SyntheticContent
from xnat_emulator.documents import json_content, pdf_content, text_content
from xnat_emulator.imaging import NIFTI_HEADER_SIZE, SeriesInfo, dicom_header, nifti_header
from xnat_emulator.storedgzip import StoredGzipContent


def synthetic_content(resource: Resource, relpath: str, seed: int, size: int, mtime: float,
                      spec_seed: int) -> Content:
    """The content of ``relpath`` in ``resource``; ``spec_seed`` keeps archives apart."""
    name = posixpath.basename(relpath).lower()
    if name.endswith(".dcm"):
        return LazyHeaderContent(seed, size, mtime, lambda: dicom_header(
            size, series_info(resource, relpath, spec_seed),
            f"{spec_seed}/{resource.id}/{relpath}"))
    if name.endswith(".nii"):
        return LazyHeaderContent(seed, size, mtime,
                                 lambda: nifti_header(size - NIFTI_HEADER_SIZE))
    if name.endswith(".nii.gz"):
        return StoredGzipContent(seed, size, mtime, nifti_header, NIFTI_HEADER_SIZE)
    if name.endswith(".gz"):
        return StoredGzipContent(seed, size, mtime, lambda _: b"", 0)
    if name.endswith(".txt"):
        return text_content(relpath, seed, size, mtime)
    if name.endswith(".json"):
        return json_content(relpath, seed, size, mtime, _sidecar(resource))
    if name.endswith(".pdf"):
        return pdf_content(relpath, seed, size, mtime)
    return SyntheticContent(seed, size, mtime)


class LazyHeaderContent(SyntheticContent):
    """Synthetic bytes under a header made when the file is first read, not when the archive
    is built: a session of 100,000 DICOM files costs neither a second nor 100 MB up front.
    Recently used headers are kept; the others are simply made again (deterministically)."""

    def __init__(self, seed: int, size: int, mtime: float,
                 make_header: Callable[[], bytes]) -> None:
        self.seed = seed
        self.size = size
        self.mtime = mtime
        self.make_header = make_header

    @property  # type: ignore[override]
    def header(self) -> bytes:
        return _header(self)


@lru_cache(maxsize=4096)
def _header(content: LazyHeaderContent) -> bytes:
    return content.make_header()[: content.size]


def series_info(resource: Resource, relpath: str, spec_seed: int) -> SeriesInfo:
    """Study = session, series = scan (or resource elsewhere), slice = the file's number."""
    owner = resource.owner
    session, subject = owner.session, owner.subject
    study = f"{spec_seed}/{session.id}" if session else f"{spec_seed}/{owner.project.id}"
    scan = owner if isinstance(owner, Scan) else None
    number = int(scan.id) if scan and scan.id.isdigit() else 1
    digits = re.findall(r"\d+", posixpath.basename(relpath))
    return SeriesInfo(
        study_key=study,
        series_key=f"{study}/{scan.id if scan else f'resource {resource.id}'}",
        patient=subject.label if subject else owner.project.id,
        study_id=session.label if session else owner.project.id,
        series_number=min(number, 99999),
        series_description=(scan.series_description or scan.type) if scan else resource.label,
        date=session.date if session else "",
        instance=max(1, int(digits[-1]) % 100000) if digits else 1,
    )


def _sidecar(resource: Resource) -> dict[str, object]:
    owner = resource.owner
    fields: dict[str, object] = {"Modality": "MR", "MagneticFieldStrength": 3,
                                 "RepetitionTime": 2.0, "EchoTime": 0.03}
    if owner.session is not None:
        fields["SessionLabel"] = owner.session.label
    return fields
