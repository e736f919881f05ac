"""Synthetic archives: any shape and size, built in memory, contents generated on demand.

``SyntheticSpec`` says how many of everything; ``synthetic_archive`` builds the same archive
(same IDs, labels and bytes) for the same spec, in any process. ``hostile=True`` adds a set
of awkward cases seen on real servers (docs/xnat-api.md §12): odd labels, duplicate resource
labels, missing files, empty digests, sharing, private and protected projects. ``bids=True``
adds a project of MR sessions for BIDS tools (``bidsdata``). Each file is
real of the kind its name says (DICOM, NIfTI, gzip, text, JSON, PDF; see ``filetypes``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from xnat_emulator.archive import EPOCH, Archive, Experiment, Owner, Resource
from xnat_emulator.bidsdata import add_bids_project
from xnat_emulator.filetypes import synthetic_content
from xnat_emulator.hostile import add_hostile
from xnat_emulator.values import BadValue, parse_size

SCAN_TYPES = ("T1w", "T2w", "BOLD rest", "DWI", "FLAIR", "SWI")


@dataclass(frozen=True)
class SyntheticSpec:
    """Counts and sizes of a synthetic archive. Counts are per parent."""

    projects: int = 1
    subjects: int = 2
    sessions: int = 2
    scans: int = 3
    dicoms: int = 5
    """DICOM images (one series per scan) in each scan's DICOM resource."""
    dicom_size: int = 4096
    niftis: int = 1
    """Gzipped NIfTI volumes in each scan's NIFTI resource."""
    nifti_size: int = 1 << 20
    session_niftis: int = 0
    """Gzipped NIfTI volumes in a session-level NIFTI resource."""
    session_resources: int = 1
    subject_resources: int = 1
    project_resources: int = 1
    resource_files: int = 2
    """Small files (of ``dicom_size``) in each session, subject, project or assessor resource."""
    assessors: int = 1
    reconstructions: int = 0
    hostile: bool = False
    bids: bool = False
    """Add project BIDS01: MR sessions before and after BIDS conversion (``bidsdata``)."""
    seed: int = 0
    members: tuple[str, ...] = ("alice", "demo")
    """Users who belong to the private and protected projects of the hostile set."""

    @classmethod
    def parse(cls, text: str) -> SyntheticSpec:
        """``"projects=1,subjects=3,nifti_size=100M,hostile=1,members=alice+bob"``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise BadValue(f"bad synthetic spec item {item!r}; keys: {', '.join(fields)}")
            values[key] = _convert(key, fields[key].type, value.strip())
        return cls(**values)  # type: ignore[arg-type]


def _convert(key: str, kind: object, value: str) -> object:
    if kind == "bool":
        if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise BadValue(f"{key} must be true or false, not {value!r}")
        return value.lower() in ("1", "true", "yes", "on")
    if kind == "tuple[str, ...]":
        return tuple(filter(None, value.split("+")))
    if key.endswith("_size"):
        return parse_size(value)
    if not value.isdigit():
        raise BadValue(f"{key} must be a whole number, not {value!r}")
    return int(value)


class _Builder:
    """Adds files with seeded contents; the seed depends only on the spec and the path."""

    def __init__(self, archive: Archive, spec: SyntheticSpec) -> None:
        self.archive = archive
        self.spec = spec

    def file(self, resource: Resource, relpath: str, size: int, **fields: str | bool) -> None:
        key = f"{self.spec.seed}/{resource.id}/{relpath}".encode("utf-8", "surrogatepass")
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        content = synthetic_content(resource, relpath, seed, size, EPOCH + resource.id,
                                    self.spec.seed)
        resource.add_file(relpath, content, **fields)

    def small_files(self, owner: Owner, label: str, names: list[str], **kw: str) -> Resource:
        resource = self.archive.add_resource(owner, label, **kw)
        for name in names:
            self.file(resource, name, self.spec.dicom_size)
        return resource


def synthetic_archive(spec: SyntheticSpec) -> Archive:
    """Build the archive ``spec`` describes (plus the hostile set if asked)."""
    archive = Archive()
    build = _Builder(archive, spec)
    for p in range(1, spec.projects + 1):
        project = archive.add_project(
            f"PROJ{p:02d}", f"Project {p:02d}", secondary_id=f"P{p:02d}",
            description=f"Synthetic project {p}", pi_firstname="Ada", pi_lastname="Lovelace")
        for r in range(spec.project_resources):
            build.small_files(project, _nth("PROTOCOL", r),
                              [f"protocol_{i + 1}.txt" for i in range(spec.resource_files)])
        for s in range(1, spec.subjects + 1):
            subject = archive.add_subject(project, f"S{s:03d}")
            for r in range(spec.subject_resources):
                build.small_files(subject, _nth("CONSENT", r),
                                  [f"consent_{i + 1}.pdf" for i in range(spec.resource_files)])
            for e in range(1, spec.sessions + 1):
                session = archive.add_experiment(subject, f"S{s:03d}_MR{e}",
                                                 date=f"2023-02-{e:02d}")
                _fill_session(build, session)
    if spec.hostile:
        add_hostile(build)
    if spec.bids:
        add_bids_project(archive, spec.seed)
    return archive


def _nth(label: str, r: int) -> str:
    return label if r == 0 else f"{label}_{r + 1}"


def _fill_session(build: _Builder, session: Experiment) -> None:
    spec, archive = build.spec, build.archive
    for n in range(1, spec.scans + 1):
        scan_type = SCAN_TYPES[(n - 1) % len(SCAN_TYPES)]
        scan = archive.add_scan(session, str(n), scan_type, series_description=scan_type)
        if spec.dicoms:
            dicom = archive.add_resource(scan, "DICOM", format="DICOM", content="RAW")
            for i in range(spec.dicoms):
                build.file(dicom, f"{i + 1:04d}.dcm", spec.dicom_size, file_format="DICOM")
        if spec.niftis:
            nifti = archive.add_resource(scan, "NIFTI", format="NIFTI")
            stem = re.sub(r"\W", "_", scan_type)
            for i in range(spec.niftis):
                suffix = f"_run-{i + 1}" if i else ""
                build.file(nifti, f"{n}_{stem}{suffix}.nii.gz", spec.nifti_size)
    for r in range(spec.session_resources):
        build.small_files(session, _nth("BIDS", r),
                          [f"anat/sub-{i + 1:02d}_T1w.json" for i in range(spec.resource_files)])
    if spec.session_niftis:
        nifti = archive.add_resource(session, "NIFTI", format="NIFTI")
        for i in range(spec.session_niftis):
            build.file(nifti, f"derived/sub_{i + 1:02d}.nii.gz", spec.nifti_size)
    for a in range(1, spec.assessors + 1):
        assessor = archive.add_assessor(session, f"{session.label}_QC{a}")
        build.small_files(assessor, "QC", [f"stats/qc_{i + 1}.txt"
                                           for i in range(spec.resource_files)])
    for r in range(1, spec.reconstructions + 1):
        recon = archive.add_reconstruction(session, f"RECON{r}", "T1")
        build.small_files(recon, "OUT", [f"recon_{i + 1}.txt" for i in range(spec.resource_files)])

