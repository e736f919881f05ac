"""The archive data model: what an XNAT server holds, as the emulator serves it.

Projects own subjects, subjects own experiments (image sessions or non-imaging subject
assessors), sessions own scans, assessors and reconstructions, and every level can hold
resources of files. Subjects and experiments can be shared into other projects under another
label. ``Archive.files()`` is the oracle tests compare clients against.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

from xnat_emulator.content import Content

if TYPE_CHECKING:
    from xnat_emulator.configs import Config

EPOCH = 1695835881.352
"""2023-09-27 17:31:21.352 UTC: insert dates count up from here, so they are reproducible."""


def timestamp(t: float) -> str:
    """``java.sql.Timestamp.toString()``: ``2023-09-27 17:31:21.352`` (>= 1 fraction digit)."""
    millis = round(t * 1000)
    stamp = datetime.fromtimestamp(millis // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{f'{millis % 1000:03d}'.rstrip('0') or '0'}"


class Access(StrEnum):
    PUBLIC = "public"
    PROTECTED = "protected"
    """Listed and its metadata visible to all; its data only to members."""
    PRIVATE = "private"
    """Invisible (404) to non-members."""


class Owner:
    """Anything that holds resources. Subclasses say where they sit in the hierarchy."""

    LEVEL: ClassVar[str]
    CATEGORY: ClassVar[str] = "resources"
    """The resource listing's ``category`` for resources held here."""
    HAS_INOUT: ClassVar[bool] = False
    """Resources are addressed below ``/out`` or ``/in`` (assessors, reconstructions)."""
    resources: list[Resource]

    @property
    def project(self) -> Project:
        """The owning (primary) project."""
        raise NotImplementedError

    @property
    def rel_uri(self) -> str:
        """Path below ``/data`` (or below a project+subject prefix) of this object."""
        raise NotImplementedError

    @property
    def subject(self) -> Subject | None:
        return None

    @property
    def session(self) -> Experiment | None:
        return None

    @property
    def cat_id(self) -> str:
        return ""

    @property
    def cat_desc(self) -> str:
        return " "


@dataclass(eq=False)
class Project(Owner):
    id: str
    name: str
    access: Access = Access.PUBLIC
    members: set[str] = field(default_factory=set)
    description: str = ""
    secondary_id: str = ""
    pi_firstname: str = ""
    pi_lastname: str = ""
    aliases: list[str] = field(default_factory=list)
    resources: list[Resource] = field(default_factory=list)
    subjects: list[Subject] = field(default_factory=list)
    """Owned and shared-in subjects, in insertion order."""
    experiments: list[Experiment] = field(default_factory=list)
    """Owned and shared-in subject assessors, in insertion order."""

    LEVEL = "project"

    @property
    def project(self) -> Project:
        return self

    @property
    def rel_uri(self) -> str:
        return f"/projects/{self.id}"

    def readable_by(self, user: str | None) -> bool:
        return self.access is Access.PUBLIC or user in self.members

    def visible_to(self, user: str | None) -> bool:
        return self.access is not Access.PRIVATE or user in self.members


@dataclass(eq=False)
class Subject(Owner):
    id: str
    label: str
    owner: Project
    inserted: float
    shares: dict[str, str] = field(default_factory=dict)
    """Project ID -> label in that project."""
    resources: list[Resource] = field(default_factory=list)
    experiments: list[Experiment] = field(default_factory=list)

    LEVEL = "subject"

    @property
    def project(self) -> Project:
        return self.owner

    @property
    def subject(self) -> Subject:
        return self

    @property
    def rel_uri(self) -> str:
        return f"/projects/{self.owner.id}/subjects/{self.id}"

    def label_in(self, project: Project) -> str | None:
        return self.label if project is self.owner else self.shares.get(project.id)


@dataclass(eq=False)
class Experiment(Owner):
    """An image session, or a non-imaging subject assessor (then it has no scans)."""

    id: str
    label: str
    owner: Project
    parent: Subject
    inserted: float
    xsi_type: str = "xnat:mrSessionData"
    date: str = ""
    shares: dict[str, str] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    scans: list[Scan] = field(default_factory=list)
    assessors: list[Assessor] = field(default_factory=list)
    reconstructions: list[Reconstruction] = field(default_factory=list)

    LEVEL = "session"

    @property
    def project(self) -> Project:
        return self.owner

    @property
    def subject(self) -> Subject:
        return self.parent

    @property
    def session(self) -> Experiment:
        return self

    @property
    def rel_uri(self) -> str:
        return f"/experiments/{self.id}"

    @property
    def cat_id(self) -> str:
        return self.id

    @property
    def imaging(self) -> bool:
        return self.xsi_type.endswith("SessionData")

    def label_in(self, project: Project) -> str | None:
        return self.label if project is self.owner else self.shares.get(project.id)

    def readable_by(self, user: str | None, projects: dict[str, Project]) -> bool:
        return self.owner.readable_by(user) or any(
            projects[p].readable_by(user) for p in self.shares if p in projects
        )


class InSession(Owner):
    """Scans, assessors and reconstructions: addressed as ``/experiments/{E}/{category}/{id}``."""

    id: str
    parent: Experiment

    @property
    def project(self) -> Project:
        return self.parent.owner

    @property
    def subject(self) -> Subject:
        return self.parent.parent

    @property
    def session(self) -> Experiment:
        return self.parent

    @property
    def rel_uri(self) -> str:
        return f"/experiments/{self.parent.id}/{self.CATEGORY}/{self.id}"

    @property
    def cat_id(self) -> str:
        return self.id


@dataclass(eq=False)
class Scan(InSession):
    id: str
    type: str
    parent: Experiment
    pk: int
    """xnat_imagescandata_id."""
    xsi_type: str = "xnat:mrScanData"
    quality: str = "usable"
    series_description: str = ""
    note: str = ""
    resources: list[Resource] = field(default_factory=list)

    LEVEL = "scan"
    CATEGORY = "scans"

    @property
    def cat_desc(self) -> str:
        return self.type


@dataclass(eq=False)
class Assessor(InSession):
    """An image assessor (QC, FreeSurfer...): an experiment of its own, attached to a session."""

    id: str
    label: str
    parent: Experiment
    inserted: float
    xsi_type: str = "xnat:qcAssessmentData"
    date: str = ""
    resources: list[Resource] = field(default_factory=list)
    """The ``out`` resources (the default TYPE)."""
    in_resources: list[Resource] = field(default_factory=list)

    LEVEL = "assessor"
    CATEGORY = "assessors"
    HAS_INOUT = True

    @property
    def cat_desc(self) -> str:
        return self.xsi_type.split(":")[-1]


@dataclass(eq=False)
class Reconstruction(InSession):
    id: str
    type: str
    parent: Experiment
    pk: int
    base_scan_type: str = ""
    resources: list[Resource] = field(default_factory=list)
    in_resources: list[Resource] = field(default_factory=list)

    LEVEL = "reconstruction"
    CATEGORY = "reconstructions"
    HAS_INOUT = True

    @property
    def cat_desc(self) -> str:
        return self.type


@dataclass(eq=False)
class Resource:
    """A catalogue of files, addressed by label (not unique, may be empty) or numeric id."""

    id: int
    label: str
    owner: Owner
    inout: str = "out"
    format: str = ""
    content: str = ""
    tags: str = ""
    stats_listed: bool = True
    """False: file_count and file_size come out as "" (stats never computed)."""
    files: list[File] = field(default_factory=list)
    _by_path: dict[str, File] = field(default_factory=dict, repr=False)

    def add_file(self, relpath: str, content: Content, **fields: str | bool) -> File:
        f = File(relpath, content, self, **fields)  # type: ignore[arg-type]
        self.files.append(f)
        self._by_path.setdefault(relpath, f)
        return f

    def replace_file(self, relpath: str, content: Content, *, mtime: float | None = None) -> File:
        """New bytes under an existing name (an upload with ``overwrite=true``): tests change
        the archive between two runs of a client (or under an open one) with this and
        ``remove_file``. ``mtime`` stamps the new bytes (a real upload gets the time of the
        upload), so downloads show a new Last-Modified and answer conditional GETs by it; the
        listings show the new size and digest from the next request on. A body already being
        sent goes on with the old bytes, as a file still open on the server's disk would."""
        f = self._by_path[relpath]
        if mtime is not None:
            content.mtime = mtime
        f.content = content
        return f

    def remove_file(self, relpath: str) -> None:
        """Delete a file from the catalogue (``DELETE .../files/{path}``)."""
        f = self._by_path.pop(relpath)
        self.files.remove(f)
        if (other := next((g for g in self.files if g.relpath == relpath), None)) is not None:
            self._by_path[relpath] = other

    def find(self, relpath: str) -> File | None:
        """The catalogue entry with this relative path."""
        return self._by_path.get(relpath)

    def base_uri(self, prefix: str = "/data", rel_uri: str | None = None) -> str:
        """``{prefix}{owner}[/out]/resources/{id}``: what file URIs start with."""
        inout = f"/{self.inout}" if self.owner.HAS_INOUT else ""
        return f"{prefix}{rel_uri or self.owner.rel_uri}{inout}/resources/{self.id}"

    @property
    def file_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(eq=False)
class File:
    """One catalogue entry, with the context tests need to place it."""

    relpath: str
    """Path inside the resource, sub-folders included."""
    content: Content
    resource: Resource
    missing: bool = False
    """Listed in the catalogue but absent on disk: downloads give 404."""
    digest_listed: bool = True
    """False: the listing's digest is "" (catalogue written without checksums)."""
    size_listed: bool = True
    """False: the listing's Size is ""."""
    file_format: str = ""
    file_content: str = ""
    tags: str = ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.relpath)

    @property
    def size(self) -> int:
        return self.content.size

    @property
    def md5(self) -> str:
        return self.content.md5()

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.content.read(offset, length)

    @property
    def uri(self) -> str:
        """The URI as listed by the multi-resource listings (``/data/experiments/...``)."""
        return f"{self.resource.base_uri()}/files/{self.relpath}"

    @property
    def level(self) -> str:
        return self.resource.owner.LEVEL

    @property
    def project_id(self) -> str:
        return self.resource.owner.project.id

    @property
    def subject_label(self) -> str | None:
        subject = self.resource.owner.subject
        return subject.label if subject else None

    @property
    def session_label(self) -> str | None:
        session = self.resource.owner.session
        return session.label if session else None

    @property
    def scan_id(self) -> str | None:
        owner = self.resource.owner
        return owner.id if isinstance(owner, Scan) else None

    @property
    def scan_type(self) -> str | None:
        owner = self.resource.owner
        return owner.type if isinstance(owner, Scan) else None

    @property
    def assessor_label(self) -> str | None:
        owner = self.resource.owner
        return owner.label if isinstance(owner, Assessor) else None

    @property
    def resource_label(self) -> str:
        return self.resource.label


class Archive:
    """The whole archive plus the indexes the server looks things up in."""

    def __init__(self, site_id: str = "XNAT") -> None:
        self.site_id = site_id
        self.projects: dict[str, Project] = {}
        self.subjects: dict[str, Subject] = {}
        self.experiments: dict[str, Experiment] = {}
        self.assessors: dict[str, Assessor] = {}
        self.resources: dict[int, Resource] = {}
        self._aliases: dict[str, Project] = {}
        self.configs: list[Config] = []
        """The configuration service's documents (``xnat_emulator.configs``)."""
        self._counts = {"subject": 0, "experiment": 0, "resource": 0, "scan": 0, "tick": 0}

    def _next(self, what: str) -> int:
        self._counts[what] += 1
        return self._counts[what]

    def _inserted(self) -> float:
        return EPOCH + 61.7 * self._next("tick")

    # -- building -------------------------------------------------------------------------

    def add_project(
        self, project_id: str, name: str | None = None, *, members: Iterable[str] = (), **kw: object
    ) -> Project:
        project = Project(project_id, name or project_id, members=set(members), **kw)  # type: ignore[arg-type]
        self.projects[project_id] = project
        for alias in project.aliases:
            self._aliases[alias] = project
        return project

    def add_subject(self, project: Project, label: str) -> Subject:
        subject = Subject(f"{self.site_id}_S{self._next('subject'):05d}", label, project,
                          self._inserted())
        self.subjects[subject.id] = subject
        project.subjects.append(subject)
        return subject

    def add_experiment(self, subject: Subject, label: str, **kw: str) -> Experiment:
        experiment = Experiment(f"{self.site_id}_E{self._next('experiment'):05d}", label,
                                subject.owner, subject, self._inserted(), **kw)
        self.experiments[experiment.id] = experiment
        subject.experiments.append(experiment)
        subject.owner.experiments.append(experiment)
        return experiment

    def add_scan(self, session: Experiment, scan_id: str, scan_type: str, **kw: str) -> Scan:
        scan = Scan(scan_id, scan_type, session, self._next("scan"), **kw)
        session.scans.append(scan)
        return scan

    def add_assessor(self, session: Experiment, label: str, **kw: str) -> Assessor:
        assessor = Assessor(f"{self.site_id}_E{self._next('experiment'):05d}", label, session,
                            self._inserted(), **kw)
        self.assessors[assessor.id] = assessor
        session.assessors.append(assessor)
        return assessor

    def add_reconstruction(self, session: Experiment, recon_id: str,
                           recon_type: str) -> Reconstruction:
        recon = Reconstruction(recon_id, recon_type, session, self._next("scan"))
        session.reconstructions.append(recon)
        return recon

    def add_resource(self, owner: Owner, label: str, *, inout: str = "out",
                     **kw: str | bool) -> Resource:
        resource = Resource(1000 + self._next("resource"), label, owner, inout, **kw)  # type: ignore[arg-type]
        self.resources[resource.id] = resource
        if inout == "in" and isinstance(owner, Assessor | Reconstruction):
            owner.in_resources.append(resource)
        else:
            owner.resources.append(resource)
        return resource

    def add_config(self, project: Project | None, tool: str, path: str, contents: str) -> Config:
        """Store a configuration document for ``project`` (None: site-wide)."""
        from xnat_emulator.configs import Config

        config = Config(tool, path, contents, self._inserted(),
                        project.id if project is not None else "")
        self.configs.append(config)
        return config

    def share(self, item: Subject | Experiment, project: Project, label: str) -> None:
        """Share a subject or experiment into ``project`` under ``label``."""
        item.shares[project.id] = label
        if isinstance(item, Subject):
            project.subjects.append(item)
        else:
            project.experiments.append(item)

    # -- looking up -----------------------------------------------------------------------

    def find_project(self, key: str) -> Project | None:
        """By ID or alias (never by name)."""
        return self.projects.get(key) or self._aliases.get(key)

    def find_subject(self, project: Project, key: str) -> Subject | None:
        """Label in ``project`` first, then an accession ID that belongs to it."""
        found = next((s for s in project.subjects if s.label_in(project) == key), None)
        if found is None and (by_id := self.subjects.get(key)) is not None:
            found = by_id if by_id.label_in(project) is not None else None
        return found

    def find_experiment(
        self, project: Project, key: str, subject: Subject | None = None
    ) -> Experiment | None:
        """Accession ID first (it must be in ``project``), then the label in ``project``."""
        by_id = self.experiments.get(key)
        if (by_id is not None and by_id.label_in(project) is not None
                and subject in (None, by_id.parent)):
            return by_id
        return next((e for e in project.experiments
                     if subject in (None, e.parent) and e.label_in(project) == key), None)

    def files(self) -> Iterator[File]:
        """Every file of the archive, once, at every level."""
        for resource in self.resources.values():
            yield from resource.files
