"""``xnatfs bids``: a BIDS dataset of an XNAT project (or some of its subjects or sessions)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from xnatfs.cli.options import add_connection_options, open_client, server_url
from xnatfs.cli.units import positive_float, positive_int
from xnatfs.errors import NotFound, UsageError

if TYPE_CHECKING:
    from xnatfs.archive import Archive
    from xnatfs.bids.export import Summary
    from xnatfs.bids.names import Bidsmap
    from xnatfs.bids.plan import Plan, Series

DEFAULT_JOBS = 8
EPILOG = """\
Series are named by the first of: --bidsmap FILE, the project's XNAT config bids/bidsmap (as
XNAT's dcm2bids-session container reads it), and ReproIn series descriptions (anat-T1w,
func-bold_task-rest_run-01, ...). A bidsmap is a JSON list of
  {"series_description": "MPRAGE", "bidsname": "T1w"}   (exact, case-blind) or
  {"pattern": "^ep2d_bold", "bidsname": "task-rest_bold"} (a regular expression).
Series nothing names (localizers) are skipped and listed. What XNAT already holds as NIfTI with
its sidecar (a session resource BIDS laid out as BIDS, or the container's scan NIFTI and BIDS
resources) is used as it is, with no DICOM downloaded; the rest is converted with dcm2niix.

A rerun is a sync: series whose source files are unchanged are left alone (nothing is
downloaded), changed ones are converted again, and an interrupted run continues.

examples:
  xnatfs bids https://xnat.example.org MYPROJ -o bids
  xnatfs bids URL MYPROJ/SUBJ01 MYPROJ/SUBJ02 -o bids --bidsmap map.json -j 16

exit status: 0 when every named series is in DIR, 1 when some failed (each named with its
reason), 2 for bad usage (a bad bidsmap included), 3 for refused credentials, 4 for an unknown
path.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bids", help="write a BIDS dataset of a project: named, converted, verified, resumable",
        description="Write PATHs (a project, or subjects and sessions of one project) as a "
                    "BIDS dataset in DIR.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_options(p)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="tree paths such as PROJECT or PROJECT/SUBJECT/SESSION")
    p.add_argument("-o", "--output", dest="output", required=True, metavar="DIR",
                   help="the BIDS dataset's folder (created if missing)")
    p.add_argument("--bidsmap", metavar="FILE",
                   help="a JSON bidsmap naming series; it comes before the project's own")
    p.add_argument("-j", "--jobs", type=positive_int, default=DEFAULT_JOBS, metavar="N",
                   help=f"parallel transfers (default {DEFAULT_JOBS}); conversions run one "
                        "per core")
    p.add_argument("--dry-run", action="store_true",
                   help="print each series' BIDS name and what would be done; write nothing")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="give up on a transfer silent for this long, then retry (default 60)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's chunk cache: chunks found there are copied, not "
                        "downloaded (only read)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xnatfs.archive import Archive
    from xnatfs.bids.names import Bidsmap, Namer
    from xnatfs.bids.plan import plan_project
    from xnatfs.materialize.selection import normalise_path

    given = _read_bidsmap(args.bidsmap) if args.bidsmap else None
    raw = list(args.paths)
    if args.web and args.url:  # with -w, the first positional is a path, not the URL
        raw.insert(0, args.url)
    paths = [normalise_path(p) for p in raw]
    projects = {p.split("/", 1)[0] for p in paths}
    if "" in projects:
        raise UsageError("a BIDS dataset is made of one project: give PROJECT[/SUBJECT/...]")
    if len(projects) > 1:
        raise UsageError(f"one project per BIDS dataset, not {', '.join(sorted(projects))}")
    project = projects.pop()
    url = server_url(args)
    with open_client(args, url, read_timeout=args.timeout,
                     listing_timeout=args.timeout * 5) as client:
        archive = Archive.open_for(client, cache="read", cache_dir=args.cache_dir)
        try:
            tree = archive.tree
            try:
                node = tree.lookup(project)
            except NotFound:
                raise NotFound(f"no project {project} on {client.base_url} for this "
                               "user") from None
            for path in paths:
                tree.lookup(path)  # an unknown subject or session: one line, exit 4
            maps = [given] if given else []
            stored = client.config(node.context.project or project, "bids", "bidsmap")
            if stored is not None:
                maps.append(Bidsmap.parse(stored, f"the project's bids/bidsmap config "
                                                  f"({project})"))
            only = None if paths == [project] else paths
            plan = plan_project(tree, project, Namer(maps), only=only)
            return _export(args, archive, plan)
        finally:
            archive.close()


def _read_bidsmap(path: str) -> Bidsmap:
    from xnatfs.bids.names import Bidsmap

    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read bidsmap {path}: {exc.strerror or exc}") from None
    return Bidsmap.parse(text, f"bidsmap {path}")


def _export(args: argparse.Namespace, archive: Archive, plan: Plan) -> int:
    from xnatfs.bids.convert import ConverterMissing, check_converter, dcm2niix
    from xnatfs.bids.export import Export
    from xnatfs.materialize.dirlock import DirLock
    from xnatfs.materialize.selection import Shard

    root = os.path.abspath(args.output)
    export = Export(archive, root, plan, jobs=args.jobs, converter=None)
    write, same = export.todo()
    if args.dry_run:
        return _print_plan(plan, write, same, root, args.json)
    if any(not s.reused for s in write):
        try:
            export.converter = dcm2niix()
            check_converter(export.converter)
        except ConverterMissing as exc:
            export.converter, export.no_converter = None, str(exc)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {root}: {exc.strerror or exc}") from None
    lock = DirLock(root, Shard(1, 1), lambda line: print(f"xnatfs: {line}", file=sys.stderr))
    lock.acquire()  # one export at a time in DIR: two would rename each other's files
    try:
        summary = export.run()
    except KeyboardInterrupt:
        print("xnatfs: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        lock.release()
    _print_summary(plan, summary, args.json)
    return 0 if summary.ok else 1


def _skipped(plan: Plan) -> list[dict[str, str]]:
    return [{"path": k.path, "description": k.description, "reason": k.reason}
            for k in plan.skipped]


def _print_plan(plan: Plan, write: list[Series], same: list[Series], root: str,
                as_json: bool) -> int:
    rows = [{"series": s.key, "description": s.description, "scan": s.scan,
             "action": "reuse" if s.reused else "convert", "source": s.source,
             "dicom": s.dicom_path} for s in write]
    rows += [{"series": s.key, "description": s.description, "scan": s.scan,
              "action": "unchanged", "source": s.source} for s in same]
    skipped = _skipped(plan)
    if as_json:
        json.dump({"output": root, "series": rows, "skipped": skipped}, sys.stdout, indent=1)
        print()
        return 0
    for row in sorted(rows, key=lambda r: r["series"]):
        print(f"{row['action']:9}  {row['series']}  ({row['description']}: {row['source']})")
    for k in skipped:
        print(f"{'skip':9}  {k['path']}  ({k['description']}: {k['reason']})")
    print(f"{len(write)} series to write, {len(same)} unchanged, {len(skipped)} skipped",
          file=sys.stderr)
    return 0


def _print_summary(plan: Plan, s: Summary, as_json: bool) -> None:
    skipped = _skipped(plan)
    if as_json:
        json.dump({"output": s.output, "ok": s.ok, "converted": sorted(s.converted),
                   "reused": sorted(s.reused), "unchanged": sorted(s.unchanged),
                   "downloaded_files": s.downloaded_files, "skipped": skipped,
                   "failed": s.failed}, sys.stdout, indent=1)
        print()
    err = sys.stderr
    for k in skipped:
        print(f"xnatfs: skipped {k['path']} ({k['description']}): {k['reason']}", file=err)
    for f in s.failed:
        print(f"xnatfs: FAILED {f['series']} ({f['path']}): {f['reason']}", file=err)
    print(f"xnatfs: {s.output}: {len(s.converted)} series converted, {len(s.reused)} reused "
          f"from the server, {len(s.unchanged)} unchanged, {len(skipped)} skipped, "
          f"{len(s.failed)} failed", file=err)
