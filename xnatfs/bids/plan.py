"""What a BIDS dataset of an XNAT project holds, worked out from the tree's listings alone.

Both the export (``xnatfs bids``) and the lazy view (``mount --bids``) start here, so a name
in one is the name in the other. Per session, in scan order:

* a session resource ``BIDS`` holding ``<datatype>/<name>.nii[.gz]`` files (a site's curated
  layout) is the session: its files are taken as they are and its DICOM is not converted;
* else each scan with the dcm2bids-session container's ``NIFTI`` and ``BIDS`` resources (an
  image and its sidecar, ``sub-*_ses-*_<bidsname>.*``) is taken as it is, under the name the
  container gave it;
* else a scan named by the naming chain (``names.Namer``) is converted from its ``DICOM``
  resource; a scan nothing names is skipped, with the reason, for the summary.

Reused files are ``RemoteFile``s read through the reader like any other; nothing here reads a
file's contents. Labels are BIDS-safe and distinct (``names.unique_labels``), and names that
would collide within a session get ``run-`` entities (``names.assign_runs``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from xnatfs.bids.names import (
    BidsName,
    Namer,
    assign_runs,
    parse_bidsname,
    session_label,
    unique_labels,
)
from xnatfs.tree.model import Node, RemoteFile, Tree, split_path

IMAGE_EXTENSIONS = (".nii.gz", ".nii")
EXTENSIONS = (*IMAGE_EXTENSIONS, ".json", ".bval", ".bvec", ".tsv.gz", ".tsv")
CURATED_RESOURCE = "BIDS"
CONTAINER_RESOURCES = ("NIFTI", "BIDS")
DICOM_RESOURCE = "DICOM"
DICOM_ONLY = "DICOM only: xnatfs bids converts it"
LISTING_THREADS = 8  # sessions listed at once: one scans listing and one files listing each
_CONTAINER_BASE = re.compile(r"^sub-[A-Za-z0-9]+_ses-[A-Za-z0-9]+_")


@dataclass(frozen=True)
class Series:
    """One BIDS acquisition: its name, and where its files come from."""

    subject: str
    """The BIDS subject label."""
    session: str
    session_path: str
    """The session's tree path."""
    scan: str
    """The XNAT scan ID ('' for a session resource's files)."""
    description: str
    name: BidsName
    source: str
    """Which naming source named it, or which server form its files are reused from."""
    reused: tuple[tuple[str, RemoteFile], ...] = ()
    """(extension, file) of files taken as they are; empty: converted from ``dicom``."""
    dicom: tuple[tuple[str, RemoteFile], ...] = ()
    """(tree path, file) of the scan's DICOM resource."""
    dicom_path: str = ""
    xnat_subject: str = ""

    @property
    def stem(self) -> str:
        return self.name.stem(self.subject, self.session)

    @property
    def folder(self) -> str:
        """Below the dataset's root: ``sub-X/ses-Y/<datatype>``."""
        return f"sub-{self.subject}/ses-{self.session}/{self.name.datatype}"

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.stem}"


@dataclass(frozen=True)
class Skipped:
    path: str
    description: str
    reason: str


@dataclass
class Plan:
    project: str
    """The project's tree name."""
    subjects: dict[str, str] = field(default_factory=dict)
    """BIDS label → XNAT subject label, of subjects with at least one series."""
    sessions: dict[tuple[str, str], str] = field(default_factory=dict)
    """(subject, session) BIDS labels → the XNAT session label."""
    series: list[Series] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def plan_project(tree: Tree, project: str, namer: Namer, *,
                 only: Iterable[str] | None = None, reuse_only: bool = False) -> Plan:
    """The plan of a project's sessions (``only``: tree paths of subjects or sessions to keep).
    ``reuse_only`` (the view): series that would need converting are left out and counted as
    skipped. Sessions are listed in parallel; the tree fetches each listing once."""
    plan = Plan(project)
    root = tree.lookup(project)
    subjects = [(name, node) for name, node in sorted(tree.children(root).items())
                if name != "resources" and node.is_dir]
    labels = unique_labels((name, node.context.subject or name) for name, node in subjects)
    wanted = [split_path(p) for p in only] if only is not None else None
    jobs: list[tuple[str, str, str, Node]] = []  # subject label, session label, path, node
    for name, node in subjects:
        sessions = [(sname, snode) for sname, snode in sorted(tree.children(node).items())
                    if sname != "resources" and snode.is_dir]
        session_labels = unique_labels(
            (sname, session_label(snode.context.session or sname, node.context.subject or name))
            for sname, snode in sessions)
        for sname, snode in sessions:
            path = f"{project}/{name}/{sname}"
            if wanted is not None and not any(split_path(path)[:len(w)] == w
                                              for w in (w[:3] for w in wanted)):
                continue
            jobs.append((labels[name], session_labels[sname], path, snode))
    with ThreadPoolExecutor(LISTING_THREADS, thread_name_prefix="xnatfs-bids") as pool:
        listed = list(pool.map(lambda job: tree.children(job[3]), jobs))
    for (subject, session, path, snode), kids in zip(jobs, listed, strict=True):
        found, skipped = _session(kids, subject, session, path, namer, reuse_only)
        plan.skipped += skipped
        if found:
            xnat_subject = snode.context.subject
            plan.series += [replace(s, xnat_subject=xnat_subject) for s in found]
            plan.subjects.setdefault(subject, xnat_subject)
            plan.sessions[(subject, session)] = snode.context.session
    return plan


def _session(kids: dict[str, Node], subject: str, session: str, path: str, namer: Namer,
             reuse_only: bool) -> tuple[list[Series], list[Skipped]]:
    base = dict(subject=subject, session=session, session_path=path)
    curated = _curated(_files(kids, ("resources", CURATED_RESOURCE)), base)
    if curated:
        return _with_runs(curated), []
    found: list[Series] = []
    skipped: list[Skipped] = []
    scans = kids.get("scans")
    for folder, scan in sorted((scans.children or {}).items() if scans else [],
                               key=lambda item: _scan_order(item[1].context.scan_id)):
        ctx = scan.context
        description = ctx.series_description or ctx.scan_type
        where = f"{path}/scans/{folder}"
        resources = _resources(scan)
        reused = _container(resources, description, ctx.scan_id, base)
        if reused:
            found += reused
            continue
        dicom = resources.get(DICOM_RESOURCE)
        if reuse_only:
            skipped.append(Skipped(where, description, DICOM_ONLY if dicom else
                                   "no NIfTI image with a sidecar"))
            continue
        named = namer.name(description)
        if named.name is None:
            skipped.append(Skipped(where, description, named.source))
            continue
        if not dicom:
            skipped.append(Skipped(where, description, "no DICOM resource to convert"))
            continue
        dicom_path = f"{where}/resources/{DICOM_RESOURCE}/files"
        found.append(Series(**base, scan=ctx.scan_id, description=description, name=named.name,
                            source=named.source, dicom_path=dicom_path,
                            dicom=tuple((f"{dicom_path}/{rel}", f) for rel, f in dicom)))
    return _with_runs(found), skipped


def _with_runs(found: list[Series]) -> list[Series]:
    names = assign_runs([s.name for s in found])
    return [s if s.name == n else replace(s, name=n) for s, n in zip(found, names, strict=True)]


def _scan_order(scan_id: str) -> tuple[int, int | str]:
    return (0, int(scan_id)) if scan_id.isdigit() else (1, scan_id)


def _resources(scan: Node) -> dict[str, list[tuple[str, RemoteFile]]]:
    """A scan's resources by label: (path below files/, file) in listing order."""
    out: dict[str, list[tuple[str, RemoteFile]]] = {}
    folder = _child(scan, "resources")
    for label, node in (folder.children or {}).items() if folder else []:
        out[node.context.resource or label] = list(_walk(_child(node, "files")))
    return out


def _files(kids: dict[str, Node], where: tuple[str, str]) -> list[tuple[str, RemoteFile]]:
    node = kids.get(where[0])
    for part in (where[1], "files"):
        node = _child(node, part) if node else None
    return list(_walk(node)) if node else []


def _child(node: Node | None, name: str) -> Node | None:
    if node is None or node.children is None:
        return None
    return node.children.get(name)


def _walk(node: Node | None, prefix: str = "") -> Iterable[tuple[str, RemoteFile]]:
    """A resource's files as (relative path, file): sessions' folders are loaded whole."""
    for name, kid in (node.children or {}).items() if node else []:
        if kid.file is not None:
            yield prefix + name, kid.file
        else:
            yield from _walk(kid, f"{prefix}{name}/")


def split_extension(name: str) -> tuple[str, str]:
    for ext in EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[:-len(ext)], ext
    return name, ""


def _grouped(files: Iterable[tuple[str, RemoteFile]]) -> dict[str, dict[str, RemoteFile]]:
    """Files by stem (folder kept): ``anat/x_T1w`` → {".nii.gz": ..., ".json": ...}."""
    groups: dict[str, dict[str, RemoteFile]] = {}
    for rel, file in files:
        stem, ext = split_extension(rel)
        if ext:
            groups.setdefault(stem, {})[ext] = file
    return groups


def _image_and_sidecar(files: dict[str, RemoteFile]) -> bool:
    return any(ext in files for ext in IMAGE_EXTENSIONS) and ".json" in files


def _curated(files: list[tuple[str, RemoteFile]], base: dict[str, str]) -> list[Series]:
    """A session resource laid out as BIDS: ``<datatype>/<stem>.<ext>``, images with their
    sidecars (anything else there, such as a stray file, is left out)."""
    found = []
    for stem, group in sorted(_grouped(files).items()):
        parts = stem.split("/")
        if len(parts) != 2 or not _image_and_sidecar(group):
            continue
        try:
            name = parse_bidsname(parts[1], datatype=parts[0])
        except ValueError:
            continue
        found.append(Series(**base, scan="", description=stem, name=name,
                            source="the session's BIDS resource",
                            reused=tuple(sorted(group.items()))))
    return found


def _container(resources: dict[str, list[tuple[str, RemoteFile]]], description: str,
               scan_id: str, base: dict[str, str]) -> list[Series]:
    """The dcm2bids-session container's output of one scan: images in ``NIFTI``, sidecars in
    ``BIDS``, each named ``sub-<s>_ses-<e>_<bidsname>``."""
    if not all(label in resources for label in CONTAINER_RESOURCES):
        return []
    files = [(rel, f) for label in CONTAINER_RESOURCES for rel, f in resources[label]
             if "/" not in rel]
    found = []
    for stem, group in sorted(_grouped(files).items()):
        if not _image_and_sidecar(group) or not _CONTAINER_BASE.match(stem):
            continue
        try:
            name = parse_bidsname(_CONTAINER_BASE.sub("", stem))
        except ValueError:
            continue
        found.append(Series(**base, scan=scan_id, description=description, name=name,
                            source="the dcm2bids-session container's NIFTI and BIDS resources",
                            reused=tuple(sorted(group.items()))))
    return found
