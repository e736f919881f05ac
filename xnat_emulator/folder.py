"""Load an archive from a folder laid out the way the xnatfs mount and ``materialize`` write it.

So a materialized tree can be served back and compared with its source::

    {project}/resources/{label}/files/{rel path}
    {project}/{subject}/resources/{label}/files/...
    {project}/{subject}/{session}/scans/{scanID}-{type}/resources/{label}/files/...
    {project}/{subject}/{session}/resources/{label}/files/...
    {project}/{subject}/{session}/assessors/{label}/resources/{label}/files/...

Directory names become labels (and project IDs); accession IDs and resource numbers are
assigned in sorted order, so the same tree always gets the same IDs. Files are served from
disk; their MD5 is computed on first listing.
"""

from __future__ import annotations

import os
from pathlib import Path

from xnat_emulator.archive import Archive, Owner
from xnat_emulator.content import DiskContent
from xnat_emulator.values import BadValue

RESOURCES = "resources"


def load_folder(root: str | os.PathLike[str]) -> Archive:
    """Read the tree under ``root`` (file contents stay on disk)."""
    top = Path(root)
    if not top.is_dir():
        raise BadValue(f"{top}: not a directory")
    archive = Archive()
    for project_dir in _dirs(top):
        project = archive.add_project(project_dir.name)
        _resources(archive, project, project_dir / RESOURCES)
        for subject_dir in _dirs(project_dir, skip=RESOURCES):
            subject = archive.add_subject(project, subject_dir.name)
            _resources(archive, subject, subject_dir / RESOURCES)
            for session_dir in _dirs(subject_dir, skip=RESOURCES):
                session = archive.add_experiment(subject, session_dir.name)
                for scan_dir in _dirs(session_dir / "scans"):
                    scan_id, _, scan_type = scan_dir.name.partition("-")
                    scan = archive.add_scan(session, scan_id, scan_type)
                    _resources(archive, scan, scan_dir / RESOURCES)
                _resources(archive, session, session_dir / RESOURCES)
                for assessor_dir in _dirs(session_dir / "assessors"):
                    assessor = archive.add_assessor(session, assessor_dir.name)
                    _resources(archive, assessor, assessor_dir / RESOURCES)
    return archive


def _dirs(folder: Path, skip: str = "") -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != skip)


def _resources(archive: Archive, owner: Owner, folder: Path) -> None:
    for resource_dir in _dirs(folder):
        resource = archive.add_resource(owner, resource_dir.name)
        files = resource_dir / "files"
        for dirpath, dirnames, filenames in os.walk(files):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if path.is_file():
                    resource.add_file(path.relative_to(files).as_posix(), DiskContent(path))
