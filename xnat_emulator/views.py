"""Turning an archive target into an answer: listings, single items, and the site pages.

One method per target kind, picked by ``render``. The endpoints that change security state
(login, sessions, tokens) live in ``gate``; file bodies and zips in ``downloads``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from importlib import resources as package_data

from xnat_emulator import configs, downloads, listings, pages
from xnat_emulator.archive import EPOCH, Archive, Assessor, Reconstruction, Scan
from xnat_emulator.knobs import EmulatorConfig
from xnat_emulator.listings import table
from xnat_emulator.routes import HttpError, Target
from xnat_emulator.transfer import Response

BUILD_INFO = {"version": "1.8.10", "buildNumber": "8", "buildDate": "Mon Nov 20 12:00:00 UTC 2023",
              "sha": "emulated", "isDirty": "false", "branch": "emulator", "commit": "emulated",
              "tag": "1.8.10", "shaFull": "emulated", "timestamp": "1700481600000",
              "hostName": "xnatfs-emulator", "displayHostName": "false", "nodeId": ""}
SEARCH_ELEMENTS = {"xnat:projectData": ["ID", "NAME", "SECONDARY_ID"],
                   "xnat:subjectData": ["SUBJECT_ID", "SUBJECT_LABEL", "INSERT_DATE"],
                   "xnat:mrSessionData": ["SESSION_ID", "LABEL", "DATE", "SUBJECT_ID"],
                   "xnat:mrScanData": ["ID", "TYPE", "SERIES_DESCRIPTION"]}


class View:
    """Renders targets for one request."""

    def __init__(self, archive: Archive, config: EmulatorConfig, user: str | None,
                 query: dict[str, str], headers: dict[str, str],
                 shuffle: random.Random | None) -> None:
        self.archive = archive
        self.config = config
        self.user = user
        self.query = query
        self.headers = headers
        self.shuffle = shuffle

    def render(self, target: Target) -> Response:
        handler: Callable[[Target], Response] = getattr(self, f"_{target.kind}")
        return handler(target)

    def _listing(self, rows: list[listings.Row], defaults: list[str], *, pageable: bool = False,
                 always: tuple[str, ...] = ("URI",), title: str | None = None,
                 query: dict[str, str] | None = None) -> Response:
        document = table(rows, self.query if query is None else query, defaults,
                         always=always, pageable=pageable, rng=self.shuffle, title=title)
        return downloads.json_response(document)

    def _item(self, xsi_type: str, inserted: float, fields: dict[str, object],
              label: str) -> Response:
        if self.query.get("format") == "json":
            return downloads.json_response(listings.item(xsi_type, inserted, fields), "item")
        return Response(200, [("Content-Type", "text/html;charset=UTF-8")],
                        pages.item_page(xsi_type, label), kind="item")

    # -- archive listings -----------------------------------------------------------------

    def _projects(self, target: Target) -> Response:
        rows = [listings.project_row(p) for p in self.archive.projects.values()
                if p.visible_to(self.user)]
        return self._listing(rows, listings.PROJECT_COLUMNS, always=("ID", "URI"))

    def _subjects(self, target: Target) -> Response:
        project = target.project
        assert project is not None
        rows = [listings.subject_row(s, project) for s in project.subjects]
        return self._listing(rows, listings.SUBJECT_COLUMNS, pageable=True, always=("ID", "URI"))

    def _all_subjects(self, target: Target) -> Response:
        readable = [p for p in self.archive.projects.values() if p.readable_by(self.user)]
        if not readable:
            raise HttpError(500, "Internal Server Error")  # IllegalAccessException, caught as 500
        rows = [listings.subject_row(s, None) for s in self.archive.subjects.values()
                if s.owner in readable]
        return self._listing(rows, listings.SUBJECT_COLUMNS, pageable=True, always=("ID", "URI"))

    def _experiments(self, target: Target) -> Response:
        project = target.project
        assert project is not None
        rows = []
        for experiment in project.experiments:
            if target.subject is None or experiment.parent is target.subject:
                row = listings.experiment_row(experiment, project)
                row[listings.SUBJECT_ASSESSOR_KEY] = experiment.id
                rows.append(row)
        return self._listing(rows, listings.EXPERIMENT_COLUMNS, pageable=True,
                             always=(listings.SUBJECT_ASSESSOR_KEY, "ID", "URI"))

    def _all_experiments(self, target: Target) -> Response:
        projects = self.archive.projects
        rows = [listings.experiment_row(e, None) for e in self.archive.experiments.values()
                if e.readable_by(self.user, projects)]
        rows += [listings.assessor_row(a) for a in self.archive.assessors.values()
                 if a.parent.readable_by(self.user, projects)]
        return self._listing(rows, listings.experiment_defaults(self.query), pageable=True,
                             always=("ID", "URI"), title="Matching experiments")

    def _scans(self, target: Target) -> Response:
        assert target.experiment is not None
        rows = [listings.scan_row(s) for s in target.experiment.scans]
        return self._listing(rows, listings.SCAN_COLUMNS)

    def _assessors(self, target: Target) -> Response:
        assert target.experiment is not None
        rows = [listings.assessor_row(a) for a in target.experiment.assessors]
        return self._listing(rows, listings.ASSESSOR_COLUMNS)

    def _reconstructions(self, target: Target) -> Response:
        assert target.experiment is not None
        rows = [listings.recon_row(r) for r in target.experiment.reconstructions]
        return self._listing(rows, listings.RECON_COLUMNS)

    def _resources(self, target: Target) -> Response:
        assert target.scope is not None
        rows = [listings.resource_row(r) for r in target.scope.resources]
        query = {k: v for k, v in self.query.items() if k != "columns"}  # fixed column set
        return self._listing(rows, listings.RESOURCE_COLUMNS, always=(), title="Resources",
                             query=query)

    # -- files ----------------------------------------------------------------------------

    def _files(self, target: Target) -> Response:
        assert target.scope is not None
        if self.query.get("format") == "zip":
            return downloads.zip_download(target.scope, self.query, self.config.broken_zips)
        return downloads.file_listing(target.scope, self.query, self.config.path_prefix,
                                      blank=self.config.blank_file_rows)

    def _file(self, target: Target) -> Response:
        assert target.scope is not None and target.path is not None
        if self.query.get("format") == "zip":
            return downloads.pattern_zip(target.scope, target.path, self.query,
                                         self.config.broken_zips)
        return downloads.download(target.scope, target.path, self.headers, self.config)

    def _catalog(self, target: Target) -> Response:
        assert target.scope is not None
        return downloads.catalog(target.scope)

    # -- single items ---------------------------------------------------------------------

    def _project(self, target: Target) -> Response:
        p = target.project
        assert p is not None
        return self._item("xnat:projectData", EPOCH, {
            "ID": p.id, "secondary_ID": p.secondary_id, "name": p.name,
            "description": p.description}, p.id)

    def _subject(self, target: Target) -> Response:
        s = target.subject
        assert s is not None
        return self._item("xnat:subjectData", s.inserted,
                          {"ID": s.id, "label": s.label, "project": s.owner.id}, s.label)

    def _experiment(self, target: Target) -> Response:
        e = target.experiment
        assert e is not None
        return self._item(e.xsi_type, e.inserted, {
            "ID": e.id, "label": e.label, "project": e.owner.id, "subject_ID": e.parent.id,
            "date": e.date, "modality": listings.experiment_row(e, None)["modality"]}, e.label)

    def _scan(self, target: Target) -> Response:
        scan = target.items[0]
        assert isinstance(scan, Scan)
        return self._item(scan.xsi_type, scan.parent.inserted, {
            "ID": scan.id, "type": scan.type, "quality": scan.quality,
            "series_description": scan.series_description, "image_session_ID": scan.parent.id,
            "xnat_imagescandata_id": scan.pk}, scan.id)

    def _assessor(self, target: Target) -> Response:
        a = target.items[0]
        assert isinstance(a, Assessor)
        return self._item(a.xsi_type, a.inserted, {
            "ID": a.id, "label": a.label, "project": a.project.id,
            "imageSession_ID": a.parent.id, "date": a.date}, a.label)

    def _reconstruction(self, target: Target) -> Response:
        r = target.items[0]
        assert isinstance(r, Reconstruction)
        return self._item("xnat:reconstructedImageData", r.parent.inserted, {
            "ID": r.id, "type": r.type, "baseScanType": r.base_scan_type}, r.id)

    def _config(self, target: Target) -> Response:
        """The configuration service (``configs``): text as stored, or a ResultSet."""
        tool, _, path = (target.path or "").partition("/")
        query = configs.ConfigQuery(target.project.id if target.project else "", tool, path)
        # SecureResource.isQueryVariableTrueHelper: present and neither "false" nor "0"
        contents = self.query.get("contents", "false").lower() not in ("false", "0")
        found = configs.lookup(self.archive.configs, query, contents)
        if not found:
            raise HttpError(404, configs.missing(query, self.user or "guest", contents))
        if isinstance(found, str):  # Restlet's StringRepresentation: text/plain in UTF-8
            return Response(200, [("Content-Type", "text/plain;charset=UTF-8")],
                            found.encode())
        rows = [{"tool": item} if isinstance(item, str) else item.row() for item in found]
        # representTable does not filter rows by the query, as the archive listings do
        query = {k: v for k, v in self.query.items() if k not in configs.CONFIG_COLUMNS}
        return self._listing(rows, ["tool"] if isinstance(found[0], str)
                             else configs.CONFIG_COLUMNS, always=(), query=query)

    # -- site -----------------------------------------------------------------------------

    def _site_root(self, target: Target) -> Response:
        body = (pages.home_page(self.user) if self.user
                else pages.login_page(self.config.path_prefix))
        return Response(200, [("Content-Type", "text/html;charset=UTF-8")], body, kind="page")

    def _login_page(self, target: Target) -> Response:
        return Response(200, [("Content-Type", "text/html;charset=UTF-8")],
                        pages.login_page(self.config.path_prefix), kind="page")

    def _build_info(self, target: Target) -> Response:
        if target.path is None:
            return downloads.json_response(BUILD_INFO, "other")
        if target.path not in BUILD_INFO:
            raise HttpError(404, "Not Found")
        return _text(BUILD_INFO[target.path])

    def _username(self, target: Target) -> Response:
        return _text(self.user or "")

    def _schemas(self, target: Target) -> Response:
        return downloads.json_response(["xnat"], "other")

    def _schema(self, target: Target) -> Response:
        if target.path != "xnat":
            raise HttpError(404, "Not Found")
        return Response(200, [("Content-Type", "application/xml")], _xnat_xsd())

    def _search_elements(self, target: Target) -> Response:
        rows = [{"ELEMENT_NAME": name, "PLURAL": "", "SINGULAR": "", "SECURED": "true"}
                for name in SEARCH_ELEMENTS]
        return self._listing(rows, ["ELEMENT_NAME", "PLURAL", "SINGULAR", "SECURED"], always=())

    def _search_element(self, target: Target) -> Response:
        fields = SEARCH_ELEMENTS.get(target.path or "")
        if fields is None:
            raise HttpError(404, "Not Found")
        rows = [{"FIELD_ID": f, "HEADER": f.lower(), "SUMMARY": "", "TYPE": "string",
                 "REQUIRES_VALUE": "false", "DESC": "", "ELEMENT_NAME": target.path or "",
                 "SRC": "0"} for f in fields]
        return self._listing(rows, list(rows[0]), always=())


@cache
def _xnat_xsd() -> bytes:
    """XNAT 1.7's xnat.xsd, with ``xdat:LONGVARCHAR`` made ``xs:string`` so that it stands
    alone (xnatpy builds its classes from it and must resolve every type)."""
    return package_data.files("xnat_emulator").joinpath("data/xnat.xsd").read_bytes()


def _text(text: str) -> Response:
    return Response(200, [("Content-Type", "text/plain;charset=UTF-8")], text.encode())
