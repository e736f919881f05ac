"""The BIDS demo project (``SyntheticSpec(bids=True)``): MR sessions the way sites hold them
before, during and after a conversion to BIDS.

Project ``BIDS01`` holds three subjects:

* ``B001``: two sessions of ReproIn-named series (``anat-T1w``, ``func-bold_task-rest_run-01``)
  plus a localizer; in ``B001_MR2`` the dcm2bids-session container has run, leaving per scan a
  ``NIFTI`` resource (the volume) and a ``BIDS`` resource (dcm2niix's sidecar), named
  ``sub-<subject>_ses-<session>_<bidsname>`` with ``_`` and ``-`` taken out of the labels;
* ``B002``: scanner-named series (``AAHScout``, two ``MPRAGE``, ``ep2d_bold_motor``) that only
  the project's BIDS map (config ``bids/bidsmap``) names;
* ``B003``: ReproIn series and a curated BIDS tree in a session resource ``BIDS``, whose
  sidecars carry TaskName.

Every DICOM series is one that dcm2niix converts (``mrseries``); the NIfTI files are what it
makes of them. All bytes are made on first use and are the same for the same spec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from xnat_emulator.archive import EPOCH, Archive, Experiment, Resource
from xnat_emulator.content import MadeContent
from xnat_emulator.mrseries import Series, Study, dicom_file, nifti_gz, sidecar

PROJECT_ID = "BIDS01"
BIDSMAP = ('[{"series_description": "MPRAGE", "bidsname": "T1w"}, '
           '{"pattern": "^ep2d_bold_motor", "bidsname": "task-motor_bold"}]')
"""The project's BIDS map, stored verbatim as XNAT's config service keeps what was PUT."""


def localizer(number: int, description: str = "localizer") -> Series:
    return Series(number, description, 3, pixel_mm=4.0, slice_mm=8.0, tr_ms=8.6, te_ms=4.0,
                  flip=20)


def t1w(number: int, description: str) -> Series:
    return Series(number, description, 24, tr_ms=2300, te_ms=2.98, flip=9, acquisition="3D")


def bold(number: int, description: str, volumes: int = 10) -> Series:
    return Series(number, description, 12, volumes, pixel_mm=3.75, slice_mm=4.0, tr_ms=2000,
                  te_ms=30, flip=90, sequence="EP")


@dataclass(frozen=True)
class Converted:
    """A scan the dcm2bids-session container converted, and the BIDS name it gave it."""

    scan: int
    bidsname: str


@dataclass(frozen=True)
class Curated:
    """A file of a curated session-level BIDS tree: where, and from which series."""

    relpath: str
    series: int


@dataclass(frozen=True)
class SessionPlan:
    subject: str
    label: str
    date: str
    series: tuple[Series, ...]
    converted: tuple[Converted, ...] = ()
    curated: tuple[Curated, ...] = ()


SESSIONS = (
    SessionPlan("B001", "B001_MR1", "2023-03-01", (
        localizer(1), t1w(2, "anat-T1w"), bold(3, "func-bold_task-rest_run-01"))),
    SessionPlan("B001", "B001_MR2", "2023-04-01", (
        localizer(1), t1w(2, "anat-T1w"), bold(3, "func-bold_task-rest_run-01")),
        converted=(Converted(2, "T1w"), Converted(3, "task-rest_run-01_bold"))),
    SessionPlan("B002", "B002_MR1", "2023-03-02", (
        localizer(1, "AAHScout"), t1w(2, "MPRAGE"), t1w(3, "MPRAGE"),
        bold(4, "ep2d_bold_motor", volumes=8))),
    SessionPlan("B003", "B003_MR1", "2023-03-03", (
        t1w(1, "anat-T1w"), bold(2, "func-bold_task-rest")),
        curated=(Curated("anat/sub-B003_ses-MR1_T1w", 1),
                 Curated("func/sub-B003_ses-MR1_task-rest_bold", 2))),
)


def add_bids_project(archive: Archive, seed: int) -> None:
    """Add project ``BIDS01`` and its config ``bids/bidsmap`` to ``archive``."""
    project = archive.add_project(PROJECT_ID, "BIDS demo study", secondary_id="BIDS",
                                  description="MR sessions before and after BIDS conversion",
                                  pi_firstname="Ada", pi_lastname="Lovelace")
    archive.add_config(project, "bids", "bidsmap", BIDSMAP)
    subjects = {}
    for plan in SESSIONS:
        if plan.subject not in subjects:
            subjects[plan.subject] = archive.add_subject(project, plan.subject)
        session = archive.add_experiment(subjects[plan.subject], plan.label, date=plan.date)
        _fill(archive, session, plan, Study(f"{seed}/{PROJECT_ID}/{plan.label}",
                                            plan.subject, plan.label, plan.date))


def _fill(archive: Archive, session: Experiment, plan: SessionPlan, study: Study) -> None:
    by_number = {series.number: series for series in plan.series}
    for series in plan.series:
        scan = archive.add_scan(session, str(series.number), series.description,
                                series_description=series.description)
        dicom = archive.add_resource(scan, "DICOM", format="DICOM", content="RAW")
        for index in range(series.files):
            _add(dicom, f"{index + 1:04d}.dcm",
                 lambda s=series, i=index: dicom_file(study, s, i), file_format="DICOM")
    stem = f"sub-{_bare(plan.subject)}_ses-{_bare(plan.label)}"
    for done in plan.converted:
        series = by_number[done.scan]
        scan = next(s for s in session.scans if s.id == str(done.scan))
        name = f"{stem}_{done.bidsname}"
        nifti = archive.add_resource(scan, "NIFTI", format="NIFTI")
        _add(nifti, f"{name}.nii.gz", lambda s=series: nifti_gz(s))
        bids = archive.add_resource(scan, "BIDS", format="BIDS")
        _add(bids, f"{name}.json", lambda s=series: _json(sidecar(s)))
    if plan.curated:
        tree = archive.add_resource(session, "BIDS", format="BIDS")
        for item in plan.curated:
            series = by_number[item.series]
            extra = {"TaskName": _task(item.relpath)} if series.volumes > 1 else {}
            _add(tree, f"{item.relpath}.nii.gz", lambda s=series: nifti_gz(s))
            _add(tree, f"{item.relpath}.json", lambda s=series, e=extra: _json(sidecar(s, **e)))


def _add(resource: Resource, relpath: str, make: Callable[[], bytes], **fields: str) -> None:
    resource.add_file(relpath, MadeContent(make, EPOCH + resource.id), **fields)


def _bare(label: str) -> str:
    """A label as the container puts it in a BIDS name: without ``_`` and ``-``."""
    return label.replace("_", "").replace("-", "")


def _task(relpath: str) -> str:
    return relpath.split("_task-", 1)[1].split("_", 1)[0]


def _json(fields: dict[str, object]) -> bytes:
    """Indented with tabs, as dcm2niix writes its sidecars."""
    return (json.dumps(fields, indent="\t") + "\n").encode()

