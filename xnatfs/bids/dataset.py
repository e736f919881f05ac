"""The files a BIDS dataset has besides its images: made here, the same bytes for the same plan.

``dataset_description.json`` (Name from the project, ``DatasetType`` raw, ``GeneratedBy``
xnatfs), ``README``, ``participants.tsv`` with its sidecar, one ``*_scans.tsv`` per session and
a ``scans.json`` describing its columns. For the view, whose sidecars are the server's as they
are, one ``task-<label>_bold.json`` per task gives ``TaskName`` by BIDS' inheritance principle
(the dcm2bids-session container's sidecars have none, and BIDS requires it for func).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from xnatfs import __version__
from xnatfs.bids.plan import DICOM_ONLY, Plan, Series

BIDS_VERSION = "1.10.0"


def to_json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()


def description(name: str) -> bytes:
    return to_json({
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "xnatfs", "Version": __version__,
                         "Description": "BIDS from an XNAT archive"}],
    })


def readme(project: str, plan: Plan, *, view: bool) -> bytes:
    lines = [f"# {project}", "",
             f"A BIDS dataset of the XNAT project {project}, made by xnatfs {__version__}."]
    if view:
        lines += ["",
                  "This is xnatfs' lazy BIDS view: it shows what the server already holds as "
                  "NIfTI images with their JSON sidecars (a session resource laid out as BIDS, "
                  "or scan NIFTI and BIDS resources as XNAT's dcm2bids-session container "
                  "leaves them). Nothing is converted, and nothing is downloaded until read."]
        shown = {s.session_path for s in plan.series}
        dicom_only = sorted({where for s in plan.skipped if s.reason == DICOM_ONLY
                             and (where := s.path.split("/scans/")[0]) not in shown})
        if dicom_only:
            lines += ["", "Sessions held only as DICOM are absent from this view; convert them "
                          "with `xnatfs bids URL PATH -o DIR`:", ""]
            lines += [f"- {path}" for path in dicom_only]
    return ("\n".join(lines) + "\n").encode()


def participants(subjects: dict[str, str]) -> bytes:
    rows = ["participant_id\txnat_label"]
    rows += [f"sub-{label}\t{_cell(xnat)}" for label, xnat in sorted(subjects.items())]
    return ("\n".join(rows) + "\n").encode()


PARTICIPANTS_JSON = to_json({
    "participant_id": {"Description": "The BIDS label of the XNAT subject"},
    "xnat_label": {"Description": "The subject's label in XNAT"},
})
SCANS_JSON = to_json({
    "filename": {"Description": "The image, relative to the session folder"},
    "xnat_scan": {"Description": "The XNAT scan ID it comes from (n/a: a session resource)"},
})


def scan_rows(rows: Iterable[tuple[str, str]]) -> bytes:
    """A session's ``*_scans.tsv`` from (image path below the session folder, XNAT scan ID)."""
    lines = ["filename\txnat_scan"]
    lines += [f"{path}\t{_cell(scan) or 'n/a'}" for path, scan in sorted(rows)]
    return ("\n".join(lines) + "\n").encode()


def task_sidecars(series: Iterable[Series]) -> dict[str, bytes]:
    """``task-<label>_bold.json`` → ``{"TaskName": label}`` for each task of the func series."""
    tasks = sorted({task for s in series if s.name.datatype == "func"
                    and (task := s.name.get("task"))})
    return {f"task-{task}_{suffix}.json": to_json({"TaskName": task})
            for task in tasks for suffix in ("bold",)}


def _cell(text: str) -> str:
    return " ".join(text.split())  # no tab or newline may break a row
