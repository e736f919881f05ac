"""XNAT's configuration service: text documents stored per project (or site-wide) by tool and
path, read at ``/data/projects/{P}/config/{tool}/{path}`` and ``/data/config/{tool}/{path}``.

Follows xnat-web's ``ConfigResource`` (docs/xnat-api.md §13): ``?contents=true`` answers the
stored text itself; without it, a ResultSet of the configuration's metadata and contents;
listings of a scope's tools or of a tool's configurations; 404 when nothing is stored there.
Pipelines read BIDS maps this way (``bids/bidsmap``).
"""

from __future__ import annotations

from dataclasses import dataclass

from xnat_emulator.archive import timestamp

CONFIG_COLUMNS = ["tool", "path", "project", "user", "create_date", "reason", "contents",
                  "unversioned", "version", "status"]


@dataclass(frozen=True)
class Config:
    """One stored configuration (its latest, enabled version)."""

    tool: str
    path: str
    contents: str
    created: float
    project: str = ""
    """The project's ID; "" for a site-wide configuration."""
    user: str = "admin"
    reason: str = ""
    version: int = 1

    def row(self) -> dict[str, str]:
        return {"tool": self.tool, "path": self.path, "project": self.project,
                "user": self.user, "create_date": timestamp(self.created),
                "reason": self.reason, "contents": self.contents, "unversioned": "false",
                "version": str(self.version), "status": "enabled"}


@dataclass(frozen=True)
class ConfigQuery:
    """What a config URL asks for: a scope (project or site), maybe a tool, maybe a path."""

    project: str
    tool: str = ""
    path: str = ""


def lookup(configs: list[Config], query: ConfigQuery,
           contents: bool) -> list[Config] | list[str] | str | None:
    """The stored text (``contents``), the matching configurations, the scope's tools, or
    None when nothing is stored at the URL."""
    here = [c for c in configs if c.project == query.project]
    if not query.tool:
        return list(dict.fromkeys(c.tool for c in here)) or None
    if not query.path:
        return [c for c in here if c.tool == query.tool] or None
    match = next((c for c in here if (c.tool, c.path) == (query.tool, query.path)), None)
    if match is None:
        return None
    return match.contents if contents else [match]


def missing(query: ConfigQuery, user: str, contents: bool) -> str:
    """The message of XNAT's 404 (its wording differs with ``contents=true`` on a path)."""
    project = query.project or "null"
    if contents and query.path:
        return (f"Config not found for user {user} and project {project} on tool "
                f"[{query.tool}] path [{query.path}]")
    return (f"Couldn't find config for user {user} and project {project} on tool "
            f"[{query.tool or 'null'}] path [{query.path or 'null'}]")
