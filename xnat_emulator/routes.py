"""URL routing: from a raw request path to what it addresses, with XNAT's identifier rules.

Path segments are matched the way Restlet 1.1 hands them to XNAT (docs/xnat-api.md §4): project,
subject, experiment, assessor and resource segments are *not* percent-decoded, only
XML-escaped (so ``My%20Subj`` and ``A&B`` never match a label); scan and reconstruction
segments are URL-decoded. Permission failures are raised here, as XNAT's 403/404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from xnat_emulator.archive import (
    Archive,
    Assessor,
    Experiment,
    Owner,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
)


class HttpError(Exception):
    """An error answer: a Restlet status page, or an empty body when ``empty``."""

    def __init__(self, status: int, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.empty = empty


@dataclass
class Scope:
    """The resources one URL addresses, and how answers about them are phrased."""

    resources: list[Resource]
    single: bool
    """One catalogue (``.../resources/{r}`` matched one resource): 404 bodies are empty and
    file URIs keep the request's project+subject prefix."""
    prefix: str = "/data"
    """``/data``, or ``/data/projects/{P}/subjects/{S}`` when a single resource was reached
    through project and subject."""
    project: Project | None = None
    """The project the request went through, whose labels the answer uses."""

    def base(self, resource: Resource) -> str:
        owner = resource.owner
        if isinstance(owner, Subject) and self.project is not None:
            return resource.base_uri("/data", f"/projects/{self.project.id}/subjects/{owner.id}")
        if isinstance(owner, Project):
            return resource.base_uri("/data")
        return resource.base_uri(self.prefix if self.single else "/data")


@dataclass
class Target:
    """What a URL addresses. ``kind`` picks the view; the other fields are its inputs."""

    kind: str
    project: Project | None = None
    subject: Subject | None = None
    experiment: Experiment | None = None
    items: list[Owner] = field(default_factory=list)
    """The addressed objects (scans, assessors...) or the parents of a listing."""
    scope: Scope | None = None
    path: str | None = None
    """Raw file path below ``/files/`` for a download; a name for schema and build info."""


NO_MATCH = "The server has not found anything matching the request URI"


def not_found(message: str = NO_MATCH) -> HttpError:
    return HttpError(404, message)


def xml_escape(segment: str) -> str:
    """``StringEscapeUtils.escapeXml11``, which is all XNAT does to most path parameters."""
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"),
                         ("'", "&apos;")):
        segment = segment.replace(raw, escaped)
    return segment


def decoded_list(segment: str) -> list[str]:
    """A URL-decoded comma list with XNAT's ``[SLASH]`` and ``[COMMA]`` stand-ins."""
    return [item.replace("[SLASH]", "/").replace("[COMMA]", ",")
            for item in unquote_plus(segment).split(",")]


class Router:
    """Resolves paths for one user. ``user`` is None when unauthenticated."""

    def __init__(self, archive: Archive, user: str | None, query: dict[str, str]) -> None:
        self.archive = archive
        self.user = user
        self.query = query

    def route(self, path: str) -> Target:
        segments = path.rstrip("/").split("/")[1:] if path.rstrip("/") else []
        if not segments:
            return Target("site_root")
        head, rest = segments[0], segments[1:]
        if head == "app" and rest == ["template", "Login.vm"]:
            return Target("login_page")
        if head == "xapi":
            return self._xapi(rest)
        if head != "data" or not rest:
            raise not_found()
        return self._data(rest)

    def _xapi(self, rest: list[str]) -> Target:
        match rest:
            case ["siteConfig", "buildInfo"]:
                return Target("build_info")
            case ["siteConfig", "buildInfo", name]:
                return Target("build_info", path=name)
            case ["users", "username"]:
                return Target("username")
            case ["schemas"]:
                return Target("schemas")
            case ["schemas", name]:
                return Target("schema", path=name)
        raise not_found()

    def _data(self, rest: list[str]) -> Target:
        match rest:
            case ["JSESSION"]:
                return Target("jsession")
            case ["auth"]:
                return Target("auth")
            case ["services", "auth"]:
                return Target("services_auth")
            case ["services", "tokens", "issue"]:
                return Target("token_issue")
            case ["services", "tokens", "validate", alias, secret]:
                return Target("token_validate", path=f"{alias}:{secret}")
            case ["services", "tokens", "invalidate", alias, *_]:
                return Target("token_invalidate", path=alias)
            case ["search", "elements"]:
                return Target("search_elements")
            case ["search", "elements", name]:
                return Target("search_element", path=name)
            case ["config", *more]:
                return Target("config", path="/".join(more))
            case ["projects", *more]:
                return self._projects(more)
            case ["subjects", *more]:
                return self._subjects(more)
            case ["experiments", *more]:
                return self._experiments(more)
        raise not_found()

    # -- projects and subjects ------------------------------------------------------------

    def _projects(self, rest: list[str]) -> Target:
        if not rest:
            return Target("projects")
        project = self.archive.find_project(xml_escape(rest[0]))
        if rest[1:2] == ["config"]:
            return self._project_config(rest[0], project, rest[2:])
        if project is None or not project.visible_to(self.user):
            raise not_found("Unable to find the specified project.")
        rest = rest[1:]
        if not rest:
            return Target("project", project=project)
        if not project.readable_by(self.user):
            if len(rest) == 1 and rest[0] in ("subjects", "experiments", "resources", "files"):
                raise HttpError(403, f"Unable to read {rest[0]} for Project: {project.id}")
            raise not_found("Unable to identify project")
        head, rest = rest[0], rest[1:]
        if head == "subjects":
            if not rest:
                return Target("subjects", project=project)
            subject = self.archive.find_subject(project, xml_escape(rest[0]))
            if subject is None:
                raise not_found(f"Unable to identify subject {rest[0]}")
            return self._subject(project, subject, rest[1:])
        if head == "experiments":
            if not rest:
                return Target("experiments", project=project)
            experiment = self.archive.find_experiment(project, xml_escape(rest[0]))
            if experiment is None:
                raise not_found("Unable to find the specified experiment.")
            return self._experiment(experiment, rest[1:], project=project)
        return self._owned_files(head, [project], rest, Scope([], False, project=project))

    def _project_config(self, key: str, project: Project | None, rest: list[str]) -> Target:
        """``ConfigResource``'s own checks: an unknown (or invisible) project is a 404, one
        the user cannot read a 403 (docs/xnat-api.md §13)."""
        if project is None or not project.visible_to(self.user):
            raise not_found(f"The requested project {key} does not exist.")
        if not project.readable_by(self.user):
            raise HttpError(403, f"User {self.user or 'guest'} can not access project {key}")
        return Target("config", project=project, path="/".join(rest))

    def _subject(self, project: Project, subject: Subject, rest: list[str]) -> Target:
        if not rest:
            return Target("subject", project=project, subject=subject)
        head, rest = rest[0], rest[1:]
        if head == "experiments":
            if not rest:
                return Target("experiments", project=project, subject=subject)
            experiment = self.archive.find_experiment(project, xml_escape(rest[0]), subject)
            if experiment is None:
                raise not_found("Unable to find the specified experiment.")
            prefix = f"/data/projects/{project.id}/subjects/{subject.id}"
            return self._experiment(experiment, rest[1:], project=project, prefix=prefix)
        return self._owned_files(head, [subject], rest, Scope([], False, project=project))

    def _subjects(self, rest: list[str]) -> Target:
        if not rest:
            return Target("all_subjects")
        subject = self.archive.subjects.get(xml_escape(rest[0]))
        if subject is None or not subject.owner.readable_by(self.user):
            raise not_found(f"Unable to identify subject {rest[0]}")
        if len(rest) == 1:
            return Target("subject", project=subject.owner, subject=subject)
        return self._owned_files(rest[1], [subject], rest[2:], Scope([], False))

    # -- experiments ----------------------------------------------------------------------

    def _experiments(self, rest: list[str]) -> Target:
        if not rest:
            return Target("all_experiments")
        key = xml_escape(rest[0])
        experiment = self.archive.experiments.get(key)
        assessor = self.archive.assessors.get(key)
        if assessor is not None and assessor.parent.readable_by(self.user, self.archive.projects):
            if len(rest) == 1:
                return Target("assessor", items=[assessor])
            return self._owned_files(rest[1], [assessor], rest[2:], Scope([], False))
        if experiment is None or not experiment.readable_by(self.user, self.archive.projects):
            if len(rest) > 1 and rest[1] == "scans":
                # XNAT falls back to proj.getId() with proj == null: a NullPointerException.
                raise HttpError(500, "Internal Server Error")
            raise not_found("Unable to find the specified experiment.")
        return self._experiment(experiment, rest[1:])

    def _experiment(self, experiment: Experiment, rest: list[str], *,
                    project: Project | None = None, prefix: str = "/data") -> Target:
        if not rest:
            return Target("experiment", project=project, experiment=experiment)
        head, rest = rest[0], rest[1:]
        scope = Scope([], False, prefix=prefix, project=project)
        if head == "scans":
            if not experiment.imaging:
                # ScanList casts to XnatImagesessiondata: a ClassCastException, so 500.
                raise HttpError(500, "Internal Server Error")
            if not rest:
                return Target("scans", project=project, experiment=experiment)
            wanted = decoded_list(rest[0])
            scans: list[Owner] = [s for s in experiment.scans if _scan_matches(s, wanted)]
            if not scans:
                raise not_found("Unable to find scan.")
            if len(rest) == 1:
                return Target("scan", project=project, experiment=experiment, items=scans)
            return self._owned_files(rest[1], scans, rest[2:], scope)
        if head in ("assessors", "reconstructions"):
            children = experiment.assessors if head == "assessors" else experiment.reconstructions
            if not rest:
                return Target(head, project=project, experiment=experiment)
            wanted = (xml_escape(rest[0]).split(",") if head == "assessors"
                      else decoded_list(rest[0]))
            picked: list[Owner] = [c for c in children if _child_matches(c, wanted)]
            if not picked:
                raise not_found(f"Unable to find {head[:-1]}.")
            if len(rest) == 1:
                kind = "assessor" if head == "assessors" else "reconstruction"
                return Target(kind, project=project, experiment=experiment, items=picked)
            inout = "out"
            if rest[1] in ("in", "out"):
                inout, rest = rest[1], rest[1:]
            if len(rest) < 2:
                raise not_found()
            return self._owned_files(rest[1], picked, rest[2:], scope, inout)
        if head == "files" and self.query.get("all") == "true":
            everything = [experiment, *experiment.scans, *experiment.assessors,
                          *experiment.reconstructions]
            return self._owned_files(head, everything, rest, scope)
        return self._owned_files(head, [experiment], rest, scope)

    # -- resources and files --------------------------------------------------------------

    def _owned_files(self, head: str, owners: list[Owner], rest: list[str], scope: Scope,
                     inout: str = "out") -> Target:
        """``resources[/{r}[/files[/{path}]]]`` or ``files[/{path}]`` below ``owners``."""
        resources = [r for o in owners for r in _resources_of(o, inout)]
        if head == "files":
            scope.resources = resources
            return _files_target(scope, rest)
        if head != "resources":
            raise not_found()
        if not rest:
            scope.resources = resources
            return Target("resources", scope=scope)
        keys = xml_escape(rest[0]).split(",")
        scope.resources = [r for r in resources if r.label in keys or str(r.id) in keys]
        scope.single = len(scope.resources) == 1
        if len(rest) == 1:
            return Target("catalog", scope=scope)
        if rest[1] != "files":
            raise not_found()
        return _files_target(scope, rest[2:])


def _files_target(scope: Scope, rest: list[str]) -> Target:
    if not rest:
        return Target("files", scope=scope)
    return Target("file", scope=scope, path="/".join(rest))


def _resources_of(owner: Owner, inout: str) -> list[Resource]:
    if inout == "in" and isinstance(owner, Assessor | Reconstruction):
        return owner.in_resources
    return owner.resources


def _scan_matches(scan: Scan, wanted: list[str]) -> bool:
    return any(w in ("ALL", "*") or (w == "NULL" and not scan.type) or w in (scan.id, scan.type)
               for w in wanted)


def _child_matches(child: Owner, wanted: list[str]) -> bool:
    if isinstance(child, Assessor):
        keys = (child.id, child.label, child.xsi_type)
    else:
        assert isinstance(child, Reconstruction)
        keys = (child.id, child.type)
    return any(w in ("ALL", "*") or w in keys for w in wanted)
