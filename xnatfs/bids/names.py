"""BIDS names for XNAT series: the three naming sources, labels, and run numbers.

A series is named by the first source that names it (``Namer.name``):

1. a bidsmap file given on the command line (``--bidsmap``);
2. the project's XNAT configuration ``bids/bidsmap``, as XNAT's dcm2bids-session container
   reads it: a JSON list whose entries match the series description exactly (case-blind,
   ``series_description`` or ``xnat_field``) or by regular expression (``pattern``), and give
   a ``bidsname`` such as ``task-rest_bold`` (the container's regex entries say ``suffix``;
   a regex entry without a name excludes what it matches);
3. ReproIn names in the series description itself, heudiconv's convention:
   ``<datatype>[-<suffix>][_<entity>-<label>...][__<anything>]``, e.g. ``anat-T1w``,
   ``func-bold_task-rest_run-01``, ``fmap-epi_dir-AP``, ``dwi_dir-PA``.

A series none of them names (a localizer) is skipped. Two series of one session that would get
the same name get ``run-`` entities (``assign_runs``), so nothing is ever overwritten. Labels
are BIDS-safe: letters and digits only, as the specification's ``label`` demands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from xnatfs.errors import UsageError

ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
                "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part",
                "proc", "hemi", "space", "split", "recording", "chunk", "seg", "res", "den",
                "label", "desc")
"""The specification's entity order (appendix "Entities"): a name lists them in this order."""

_DATATYPES: dict[str, tuple[str, ...]] = {
    "anat": ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2",
             "angio", "T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap",
             "MTRmap", "MTsat", "UNIT1", "T1rho", "MWFmap", "MTVmap", "Chimap", "S0map",
             "M0map", "MESE", "MEGRE", "VFA", "IRT1", "MP2RAGE", "MPM", "MTS", "MTR"),
    "func": ("bold", "cbv", "phase", "events", "physio"),
    "dwi": ("dwi",),
    "fmap": ("phasediff", "phase1", "phase2", "magnitude", "magnitude1", "magnitude2",
             "fieldmap", "epi", "TB1DAM", "TB1EPI", "TB1AFI", "TB1TFL", "TB1RFM", "TB1SRGE",
             "TB1map", "RB1map", "TB1DREAM"),
    "perf": ("asl", "m0scan", "aslcontext"),
    "pet": ("pet",),
}
DATATYPE_OF = {suffix: datatype for datatype, suffixes in _DATATYPES.items()
               for suffix in suffixes}
REPROIN_DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi", "pet": "pet", "perf": "asl"}
"""The suffix a ReproIn datatype without ``-<suffix>`` means (``dwi_dir-PA``)."""
_LABEL = re.compile(r"[A-Za-z0-9]+")
_ENTITY = re.compile(r"([a-z]+)-([A-Za-z0-9]+)")


@dataclass(frozen=True, order=True)
class BidsName:
    """What a file of a series is called below its session folder, extension aside."""

    datatype: str
    suffix: str
    entities: tuple[tuple[str, str], ...] = ()
    """Without ``sub`` and ``ses``: those come from the XNAT subject and session."""

    def get(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    def with_entity(self, key: str, value: str) -> BidsName:
        entities = {**dict(self.entities), key: value}
        return replace(self, entities=_ordered(entities))

    def stem(self, subject: str, session: str) -> str:
        """``sub-<subject>_ses-<session>_<entities>_<suffix>``."""
        parts = [f"sub-{subject}", f"ses-{session}"]
        parts += [f"{k}-{v}" for k, v in self.entities]
        return "_".join([*parts, self.suffix])

    def __str__(self) -> str:
        return "_".join([*(f"{k}-{v}" for k, v in self.entities), self.suffix])


def _ordered(entities: dict[str, str]) -> tuple[tuple[str, str], ...]:
    rank = {key: i for i, key in enumerate(ENTITY_ORDER)}
    return tuple(sorted(entities.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def parse_bidsname(text: str, *, datatype: str | None = None) -> BidsName:
    """``task-rest_run-01_bold`` (a bidsmap's name, or a file's stem) as a BidsName; ``sub``
    and ``ses`` are dropped. ValueError if it is not entities then a known suffix."""
    parts = [p for p in text.strip().split("_") if p]
    if not parts:
        raise ValueError("an empty BIDS name")
    suffix, entities = parts[-1], {}
    for part in parts[:-1]:
        m = _ENTITY.fullmatch(part)
        if m is None:
            raise ValueError(f"{part!r} is not an entity (key-label, letters and digits)")
        entities[m[1]] = m[2]
    entities.pop("sub", None)
    entities.pop("ses", None)
    kind = datatype or datatype_of(suffix, entities)
    if kind is None:
        raise ValueError(f"{suffix!r} is not a BIDS suffix this tool knows "
                         f"(e.g. T1w, bold, dwi, epi)")
    return BidsName(kind, suffix, _ordered(entities))


def datatype_of(suffix: str, entities: dict[str, str] | None = None) -> str | None:
    """The datatype folder a suffix belongs in; ``sbref`` goes with func if it has a task."""
    if suffix == "sbref":
        return "func" if entities and "task" in entities else "dwi"
    return DATATYPE_OF.get(suffix)


def reproin(description: str) -> BidsName | None:
    """The BIDS name a ReproIn series description spells, or None if it spells none."""
    text = description.strip().split("__", 1)[0]
    head, _, rest = text.partition("_")
    datatype, _, suffix = head.partition("-")
    if datatype not in _DATATYPES:
        return None
    suffix = suffix or REPROIN_DEFAULT_SUFFIX.get(datatype, "")
    if not suffix:
        return None
    entities: dict[str, str] = {}
    for part in filter(None, rest.split("_")):
        m = _ENTITY.fullmatch(part)
        if m is None:
            return None
        if m[1] not in ("ses", "sub"):  # the session comes from XNAT
            entities[m[1]] = m[2]
    if datatype_of(suffix, entities) != datatype:
        return None
    return BidsName(datatype, suffix, _ordered(entities))


def safe_label(text: str) -> str:
    """A BIDS label: the letters and digits of ``text``, in order."""
    return "".join(_LABEL.findall(text))


def session_label(session: str, subject: str) -> str:
    """``P001_MR1`` of subject ``P001`` → ``MR1``: the subject prefix removed, BIDS-safe."""
    rest = session
    if session.startswith(subject) and len(session) > len(subject) \
            and not session[len(subject)].isalnum():
        rest = session[len(subject):]
    return safe_label(rest) or safe_label(session)


def unique_labels(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``(key, wanted label)`` → a distinct BIDS-safe label per key: two XNAT labels that
    differ only in punctuation (``A-1``, ``A_1``) must not become one BIDS subject."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for key, wanted in items:
        label = safe_label(wanted) or "x"
        candidate, n = label, 1
        while candidate.lower() in taken:  # case-blind: file systems may be
            n += 1
            candidate = f"{label}{n}"
        taken.add(candidate.lower())
        out[key] = candidate
    return out


# -- bidsmaps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapEntry:
    exact: str | None
    pattern: re.Pattern[str] | None
    name: BidsName | None
    """None: the entry excludes what it matches (the container's regex entries allow it)."""


class Bidsmap:
    """One bidsmap: exact entries first, then patterns in their order (the container's)."""

    def __init__(self, entries: Sequence[MapEntry], source: str) -> None:
        self.entries = list(entries)
        self.source = source

    def match(self, description: str) -> MapEntry | None:
        key = description.strip().lower()
        for entry in self.entries:
            if entry.exact is not None and entry.exact == key:
                return entry
        for entry in self.entries:
            if entry.pattern is not None and entry.pattern.search(description):
                return entry
        return None

    @classmethod
    def parse(cls, text: str | bytes, source: str) -> Bidsmap:
        """A bidsmap from its JSON; UsageError naming ``source`` and the entry if it is not
        JSON or not of either shape."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{source} is not JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("mappings"), list):
            data = data["mappings"]
        if not isinstance(data, list):
            raise UsageError(f"{source} must be a JSON list of "
                             f'{{"series_description": ..., "bidsname": ...}} or '
                             f'{{"pattern": ..., "bidsname": ...}} entries')
        return cls([_entry(item, i, source) for i, item in enumerate(data, 1)], source)


def _entry(item: object, n: int, source: str) -> MapEntry:
    where = f"{source}, entry {n}"
    if not isinstance(item, dict):
        raise UsageError(f"{where} is not an object")
    exact = item.get("series_description", item.get("xnat_field"))
    pattern = item.get("pattern")
    raw_name = item.get("bidsname", item.get("suffix"))
    if (exact is None) == (pattern is None):
        raise UsageError(f"{where} needs exactly one of series_description and pattern")
    for key, value in (("series_description", exact), ("pattern", pattern),
                       ("bidsname", raw_name)):
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be a string")
    if raw_name is None and exact is not None:
        raise UsageError(f"{where} has no bidsname")
    compiled = None
    if pattern is not None:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"{where}: bad pattern {pattern!r}: {exc}") from None
    name = None
    if raw_name:
        try:
            name = parse_bidsname(raw_name, datatype=item.get("modality") or None)
        except ValueError as exc:
            raise UsageError(f"{where}: bad bidsname {raw_name!r}: {exc}") from None
    return MapEntry(exact.strip().lower() if exact is not None else None, compiled, name)


@dataclass(frozen=True)
class Named:
    """A series' name and which source gave it (for the summary), or why it has none."""

    name: BidsName | None
    source: str


class Namer:
    """The naming chain: the given bidsmap, the project's, then ReproIn."""

    def __init__(self, maps: Sequence[Bidsmap]) -> None:
        self.maps = list(maps)

    def name(self, description: str) -> Named:
        for bidsmap in self.maps:
            entry = bidsmap.match(description)
            if entry is not None:
                return Named(entry.name, bidsmap.source if entry.name else
                             f"excluded by {bidsmap.source}")
        found = reproin(description)
        if found is not None:
            return Named(found, "ReproIn series description")
        return Named(None, "no bidsmap entry and not a ReproIn name")


def assign_runs(names: Sequence[BidsName]) -> list[BidsName]:
    """The same names, except that where several would be equal, each of those gets the
    lowest ``run-`` not taken by any other name of the session (in the given order, which is
    the scans' order). Names that collide with nothing are left exactly as they are."""
    counts: dict[BidsName, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    taken = {name for name, count in counts.items() if count == 1}
    out: list[BidsName] = []
    for name in names:
        if counts[name] == 1:
            out.append(name)
            continue
        run = 1
        while (candidate := name.with_entity("run", f"{run:02d}")) in taken:
            run += 1
        taken.add(candidate)
        out.append(candidate)
    return out
