"""Typed rows built from XNAT's ``{"ResultSet": {"Result": [...]}}`` listings.

XNAT writes every value as a string and ``null`` as ``""``; sizes may be empty and digests
missing. These builders turn that into Python types once, so no other layer parses strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from xnatfs.errors import ServerError

Row = dict[str, str]

_MD5 = re.compile(r"[0-9a-f]{32}")
# The owner part never contains "/resources/{id}/files/", the relative path may: match leftmost.
_FILE_URI = re.compile(r"^(?P<owner>.*?)/resources/(?P<rid>[^/]+)/files/(?P<rel>.+)$", re.S)


def split_file_uri(uri: str) -> tuple[str, str] | None:
    """A file URI as (its resource, up to ``/resources/{id}``; the path below ``/files/``),
    None if it names no resource file. The first ``/resources/{id}/files/`` is the resource's:
    IDs hold no slash, and the path below may itself hold ``/files/``."""
    m = _FILE_URI.match(uri)
    return (f"{m['owner']}/resources/{m['rid']}", m["rel"]) if m else None


def result_rows(doc: Any, what: str) -> list[Row]:
    """The rows of a ResultSet envelope, every value a ``str``; anything else is a ServerError."""
    try:
        rows = doc["ResultSet"]["Result"]
    except (KeyError, TypeError):
        raise ServerError(f"malformed listing for {what}: no ResultSet.Result") from None
    if not isinstance(rows, list):
        raise ServerError(f"malformed listing for {what}: Result is not a list")
    out: list[Row] = []
    for row in rows:
        if not isinstance(row, dict):
            raise ServerError(f"malformed listing for {what}: a row is not an object")
        out.append({str(k): _text(v) for k, v in row.items()})
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return ""


def to_int(text: str) -> int | None:
    """A non-negative integer, or None for ``""`` and garbage (sizes are hints)."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def to_md5(text: str) -> str | None:
    text = text.strip().lower()
    return text if _MD5.fullmatch(text) else None


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    secondary_id: str

    @classmethod
    def from_row(cls, r: Row) -> Project:
        return cls(r.get("ID", ""), r.get("name", ""), r.get("secondary_ID", ""))


@dataclass(frozen=True, slots=True)
class Subject:
    id: str
    label: str
    project: str
    insert_date: str

    @classmethod
    def from_row(cls, r: Row) -> Subject:
        return cls(r.get("ID", ""), r.get("label", ""), r.get("project", ""),
                   r.get("insert_date", ""))


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    label: str
    project: str
    xsi_type: str
    date: str
    subject_id: str
    subject_label: str
    insert_date: str
    last_modified: str

    @property
    def is_image_session(self) -> bool:
        """Only image sessions have scans; asking a non-imaging one for scans gives a 500."""
        return self.xsi_type.endswith("SessionData")

    @classmethod
    def from_row(cls, r: Row) -> Experiment:
        return cls(r.get("ID", ""), r.get("label", ""), r.get("project", ""),
                   r.get("xsiType", ""), r.get("date", ""), r.get("subject_ID", ""),
                   r.get("subject_label", ""), r.get("insert_date", ""),
                   r.get("last_modified", ""))


@dataclass(frozen=True, slots=True)
class Scan:
    id: str
    type: str
    series_description: str
    xsi_type: str
    quality: str

    @classmethod
    def from_row(cls, r: Row) -> Scan:
        return cls(r.get("ID", ""), r.get("type", ""), r.get("series_description", ""),
                   r.get("xsiType", ""), r.get("quality", ""))


@dataclass(frozen=True, slots=True)
class Assessor:
    id: str
    label: str
    xsi_type: str

    @classmethod
    def from_row(cls, r: Row) -> Assessor:
        return cls(r.get("ID", ""), r.get("label", ""), r.get("xsiType", ""))


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    label: str
    format: str
    file_count: int | None
    file_size: int | None

    @classmethod
    def from_row(cls, r: Row) -> Resource:
        return cls(r.get("xnat_abstractresource_id", ""), r.get("label", ""),
                   r.get("format", ""), to_int(r.get("file_count", "")),
                   to_int(r.get("file_size", "")))


@dataclass(frozen=True, slots=True)
class FileRow:
    """One catalogue entry. ``uri`` is the server path as listed (not percent-encoded)."""

    uri: str
    owner: str
    resource_id: str
    relpath: str
    resource_label: str
    size: int | None
    digest: str | None
    format: str
    content: str

    @classmethod
    def from_row(cls, r: Row) -> FileRow | None:
        """None for a row whose URI does not name a resource file (nothing to fetch)."""
        uri = r.get("URI", "")
        m = _FILE_URI.match(uri)
        if not m:
            return None
        return cls(uri, m["owner"], r.get("cat_ID") or m["rid"], m["rel"],
                   r.get("collection", ""), to_int(r.get("Size", "")),
                   to_md5(r.get("digest", "")), r.get("file_format", ""),
                   r.get("file_content", ""))
