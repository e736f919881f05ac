"""JSON listings exactly as XNAT writes them (docs/xnat-api.md §3).

Every value is a string (``null`` becomes ``""``), ``totalRecords`` is a string counting the
rows returned and is absent from file listings and paged answers, key order is a hash order
(like the ``HashMap`` behind ``org.json.JSONObject``), and each listing has its own columns.
Rows are built with every known column alias, then narrowed by ``columns=``.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from typing import Any

from xnat_emulator.archive import (
    Assessor,
    Experiment,
    File,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    timestamp,
)

Row = dict[str, str]
_NOT_FILTERS = {"format", "columns", "limit", "offset", "sortby", "sortorder", "all"}

PROJECT_COLUMNS = ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname"]
SUBJECT_COLUMNS = ["ID", "project", "label", "insert_date", "insert_user"]
EXPERIMENT_COLUMNS = ["ID", "project", "date", "xsiType", "label", "insert_date"]
SCAN_COLUMNS = ["xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                "series_description"]
ASSESSOR_COLUMNS = ["ID", "project", "label", "date", "xsiType", "insert_date", "session_ID",
                    "session_label"]
RECON_COLUMNS = ["xnat_reconstructedimagedata_id", "ID", "type", "baseScanType"]
RESOURCE_COLUMNS = ["xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                    "cat_desc", "file_count", "file_size", "tags", "content", "format"]
SUBJECT_ASSESSOR_KEY = "xnat:subjectassessordata/id"


def project_row(project: Project) -> Row:
    return {"ID": project.id, "secondary_ID": project.secondary_id, "name": project.name,
            "description": project.description, "pi_firstname": project.pi_firstname,
            "pi_lastname": project.pi_lastname, "keywords": "", "alias": ",".join(project.aliases),
            "note": "", "URI": f"/data/projects/{project.id}"}


def subject_row(subject: Subject, project: Project | None) -> Row:
    inserted = timestamp(subject.inserted)
    label = subject.label_in(project) if project is not None else subject.label
    return {"ID": subject.id, "project": subject.owner.id, "label": label or subject.label,
            "insert_date": inserted, "insert_user": "admin", "last_modified": inserted,
            "group": "", "src": "", "gender": "", "handedness": "", "dob": "", "yob": "",
            "age": "", "URI": f"/data/subjects/{subject.id}"}


def experiment_row(experiment: Experiment, project: Project | None) -> Row:
    """A subject assessor as listed in ``project`` (labels in it) or globally (primary)."""
    inserted = timestamp(experiment.inserted)
    where = project or experiment.owner
    subject = experiment.parent
    return {"ID": experiment.id, "project": where.id, "date": experiment.date,
            "xsiType": experiment.xsi_type,
            "label": experiment.label_in(where) or experiment.label, "insert_date": inserted,
            "insert_user": "admin", "last_modified": inserted,
            "subject_ID": subject.id, "subject_label": subject.label_in(where) or subject.label,
            "subject_project": subject.owner.id, "time": "", "note": "", "visit_id": "",
            "session_type": "", "modality": _modality(experiment.xsi_type), "UID": "",
            "scanner": "", "operator": "", "URI": f"/data/experiments/{experiment.id}"}


def assessor_row(assessor: Assessor) -> Row:
    inserted = timestamp(assessor.inserted)
    return {"ID": assessor.id, "project": assessor.project.id, "label": assessor.label,
            "date": assessor.date, "xsiType": assessor.xsi_type, "insert_date": inserted,
            "insert_user": "admin", "last_modified": inserted, "session_ID": assessor.parent.id,
            "session_label": assessor.parent.label, "URI": f"/data/experiments/{assessor.id}"}


def scan_row(scan: Scan) -> Row:
    return {"xnat_imagescandata_id": str(scan.pk), "ID": scan.id, "type": scan.type,
            "quality": scan.quality, "xsiType": scan.xsi_type, "note": scan.note,
            "series_description": scan.series_description, "UID": "", "frames": "",
            "modality": _modality(scan.xsi_type), "scanner": "", "condition": "",
            "documentation": "", "scanTime": "", "insert_date": "", "insert_user": "",
            "last_modified": "", "URI": f"/data/experiments/{scan.parent.id}/scans/{scan.id}"}


def recon_row(recon: Reconstruction) -> Row:
    return {"xnat_reconstructedimagedata_id": str(recon.pk), "ID": recon.id, "type": recon.type,
            "baseScanType": recon.base_scan_type,
            "URI": f"/data/experiments/{recon.parent.id}/reconstructions/{recon.id}"}


def resource_row(resource: Resource) -> Row:
    """``CatalogUtils.populateTable``: no URI and no ID; cat_desc is " " above scans."""
    owner = resource.owner
    stats = resource.stats_listed
    return {"xnat_abstractresource_id": str(resource.id), "label": resource.label,
            "element_name": "xnat:resourceCatalog", "category": owner.CATEGORY,
            "cat_id": owner.cat_id, "cat_desc": owner.cat_desc,
            "file_count": str(len(resource.files)) if stats else "",
            "file_size": str(resource.file_size) if stats else "", "tags": resource.tags,
            "content": resource.content, "format": resource.format}


def file_row(f: File, base: str, *, blank: bool = False) -> Row:
    """``blank``: no Size and no digest, as before XNAT's catalog refresh."""
    listed = not blank
    return {"Name": f.name, "Size": str(f.size) if f.size_listed and listed else "",
            "URI": f"{base}/files/{f.relpath}", "collection": f.resource.label,
            "file_tags": f.tags, "file_format": f.file_format, "file_content": f.file_content,
            "cat_ID": str(f.resource.id), "digest": f.md5 if f.digest_listed and listed else ""}


def _modality(xsi_type: str) -> str:
    match = re.match(r"xnat:([a-z]+?)(?:Session|Scan)Data$", xsi_type)
    return match[1].upper() if match else ""


def experiment_defaults(query: dict[str, str]) -> list[str]:
    """``/data/experiments`` adds subject or session columns when ``xsiType`` narrows the root."""
    xsi_type = query.get("xsiType", "")
    if xsi_type.endswith("SessionData") or xsi_type == "xnat:subjectVariablesData":
        return [*EXPERIMENT_COLUMNS, "subject_ID", "subject_label"]
    if xsi_type.endswith("AssessorData") or xsi_type == "xnat:qcAssessmentData":
        return [*EXPERIMENT_COLUMNS, "session_ID", "session_label"]
    return EXPERIMENT_COLUMNS


def table(rows: list[Row], query: dict[str, str], defaults: list[str], *,
          always: tuple[str, ...] = ("URI",), pageable: bool = False,
          rng: random.Random | None = None, title: str | None = None) -> dict[str, Any]:
    """Filter, sort, page and narrow ``rows`` as ``query`` asks, inside the envelope."""
    rows = [r for r in rows if _passes(r, query)]
    if rng is not None:
        rng.shuffle(rows)
    sort_by = [c.strip() for c in query.get("sortBy", "").split(",") if c.strip()]
    if sort_by:
        rows.sort(key=lambda r: [_lookup(r, c) for c in sort_by],
                  reverse=query.get("sortOrder", "").upper() == "DESC")
    paged = pageable and ("limit" in query or "offset" in query)
    if paged:
        offset = int(query.get("offset") or 0)
        limit = query.get("limit", "100")
        rows = rows[offset:] if limit == "*" else rows[offset:offset + int(limit)]
    columns = _columns(query, defaults, set().union(*rows), always)
    result: dict[str, Any] = {"Result": [_hash_order({c: r.get(c, "") for c in columns})
                                         for r in rows]}
    if not paged:
        result["totalRecords"] = str(len(rows))
    if title:
        result["title"] = title
    return {"ResultSet": result}


def file_table(rows: list[Row], server_root: str) -> dict[str, Any]:
    """File listings: ``Columns`` with serverRoot, ``title``, and no ``totalRecords``."""
    return {"ResultSet": {"Columns": [{"key": "URI", "serverRoot": server_root}],
                          "Result": [_hash_order(r) for r in rows], "title": "Files"}}


def encode(document: object) -> bytes:
    """JSON as the server's UTF-8 JVM writes it (file names from disk may hold odd bytes)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogateescape")


def item(xsi_type: str, inserted: float, fields: dict[str, object]) -> dict[str, Any]:
    """The ``{"items": [...]}`` form a single object gives with ``format=json``."""
    meta = {"create_event_id": 1, "xsi:type": xsi_type, "isHistory": False,
            "start_date": timestamp(inserted)}
    return {"items": [{"children": [], "meta": meta,
                       "data_fields": {k: v for k, v in fields.items() if v not in ("", None)}}]}


def _hash_order(row: Row) -> Row:
    return dict(sorted(row.items(), key=lambda kv: zlib.crc32(kv[0].encode())))


def _lookup(row: Row, column: str) -> str:
    lowered = column.lower()
    return next((v for k, v in row.items() if k.lower() == lowered), "")


def _columns(query: dict[str, str], defaults: list[str], present: set[str],
             always: tuple[str, ...]) -> list[str]:
    """Columns asked for that exist (unknown aliases are ignored, as XNAT does)."""
    asked = query.get("columns", "")
    if not asked or asked == "DEFAULT":
        columns = list(defaults)
    else:
        known = {k.lower(): k for k in present | set(defaults)}
        columns = [known[c.strip().lower()] for c in asked.split(",")
                   if c.strip().lower() in known]
    return columns + [c for c in always if c not in columns]


def _passes(row: Row, query: dict[str, str]) -> bool:
    """Any column alias in the query filters rows: comma means OR, ``*`` and ``%`` wildcards."""
    lowered = {k.lower(): v for k, v in row.items()}
    for key, wanted in query.items():
        key = key.lower()
        if key in _NOT_FILTERS or key not in lowered:
            continue
        patterns = [re.escape(w).replace(r"\*", ".*").replace("%", ".*")
                    for w in wanted.split(",")]
        if not re.fullmatch("|".join(patterns), lowered[key], re.IGNORECASE | re.DOTALL):
            return False
    return True
