"""``xnatfs materialize``: copy chosen subtrees of the XNAT tree into a folder.

Also accepts the XNAT Downloader's habits: ``-w URL -u USER -o DIR``, the password prompt and
the numbered project menu when no path is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from xnatfs.connect import add_connection_options, open_client, server_url
from xnatfs.errors import UsageError, XnatfsError
from xnatfs.units import human_size, positive_float, positive_int

if TYPE_CHECKING:
    from xnatfs.materialize.output import Output
    from xnatfs.materialize.selection import Selection
    from xnatfs.tree.model import Tree

DEFAULT_JOBS = 16
LISTING_TIMEOUT = 300.0  # a listing of a large session may take minutes to start (xnatpy: 300)
EPILOG = """\
DIR holds every file at its tree path, as the mount shows it: `materialize URL P1/S1 -o out`
gives out/P1/S1/... (the same as `cd MOUNT && cp -r --parents P1/S1 out/`), so several runs,
selections and shards can fill one DIR. Files appear only complete and verified (size, and MD5
where the server has one); rerun the same command to continue an interrupted run.

examples:
  xnatfs materialize https://xnat.example.org MYPROJ -o data
  xnatfs materialize -w https://xnat.example.org -u alice -o data       (numbered project menu)
  xnatfs materialize URL MYPROJ --scan-type 'T1*' --resource NIFTI -o data -j 16
  sbatch --array=1-8 --wrap 'xnatfs materialize URL MYPROJ -o data --shard $SLURM_ARRAY_TASK_ID/8'

exit status: 0 when every selected file is present and verified, 1 when some failed (each is
named with its reason), 2 for bad usage, 3 for refused credentials, 4 for an unknown path.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "materialize", help="download chosen subtrees: parallel, filtered, resumable, verified",
        description="Download tree paths (a project, subject, session, scan, resource or file) "
                    "into DIR, in the mount's layout.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_options(p)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="tree paths such as PROJECT/SUBJECT/SESSION (none: choose projects "
                        "from a numbered menu)")
    p.add_argument("-o", "--output", "--output_dir", dest="output", default=".", metavar="DIR",
                   help="where to put the files (default: the current folder)")
    p.add_argument("-j", "--jobs", type=positive_int, default=DEFAULT_JOBS, metavar="N",
                   help=f"parallel transfers (default {DEFAULT_JOBS})")
    f = p.add_argument_group("filters (repeat an option for alternatives; all options must hold)")
    f.add_argument("--scan-type", action="append", default=[], metavar="GLOB",
                   help="scans whose type or series description matches (scan files only)")
    f.add_argument("--resource", action="append", default=[], metavar="LABEL",
                   help="resources with this label (DICOM, NIFTI, ...; a glob works too)")
    f.add_argument("--subject", action="append", default=[], metavar="GLOB",
                   help="subjects whose label matches")
    f.add_argument("--session", action="append", default=[], metavar="GLOB",
                   help="sessions (experiments) whose label matches")
    f.add_argument("--xsi-type", action="append", default=[], metavar="TYPE",
                   help="sessions of this type, e.g. xnat:mrSessionData or petSessionData")
    f.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only tree paths matching GLOB (* matches / too, as in find -path)")
    f.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="no tree paths matching GLOB")
    f.add_argument("--since", metavar="DATE",
                   help="sessions acquired or archived on or after DATE (YYYY-MM-DD[ HH:MM])")
    p.add_argument("--shard", metavar="K/N", default="1/1",
                   help="take only the K-th of N disjoint parts (for job arrays)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the selected files and their total size; download nothing")
    p.add_argument("--verify", action="store_true",
                   help="check files already in DIR against the server's MD5; fetch bad ones")
    p.add_argument("-ow", "--overwrite", action="store_true",
                   help="download every file again, even when present")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="give up on a transfer silent for this long, then retry (default 60; "
                        "listings may take at least 300)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's chunk cache: chunks found there are copied, not "
                        "downloaded (only read; default: the mount's default cache)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xnatfs.materialize.engine import Engine, Options, listing_threads
    from xnatfs.materialize.menu import choose_projects
    from xnatfs.materialize.output import Output
    from xnatfs.materialize.report import Report
    from xnatfs.materialize.selection import Filters, Selection, Shard
    from xnatfs.reader.chunkcache import ChunkCache, default_cache_dir
    from xnatfs.reader.fetcher import Fetcher
    from xnatfs.tree.model import Tree

    jobs, timeout = args.jobs, args.timeout
    filters = Filters.from_options(
        scan_type=args.scan_type, resource=args.resource, subject=args.subject,
        session=args.session, xsi_type=args.xsi_type, include=args.include,
        exclude=args.exclude, since=args.since)
    shard = Shard.parse(args.shard)
    paths = list(args.paths)
    if args.web and args.url:  # with -w, the first positional is a path, not the URL
        paths.insert(0, args.url)
    url = server_url(args)
    if not paths and not sys.stdin.isatty():
        raise UsageError("no tree path given and no terminal for the project menu: "
                         "xnatfs materialize URL PROJECT[/SUBJECT/...] -o DIR")
    output = Output(args.output, create=not args.dry_run)
    pool = jobs + listing_threads(jobs) + 4
    with open_client(args, url, pool_size=pool, read_timeout=timeout,
                     listing_timeout=max(timeout, LISTING_TIMEOUT)) as client:
        tree = Tree(client)
        if not paths:
            paths = choose_projects(sorted(tree.children(tree.root)), out=sys.stderr)
        selection = Selection(tuple(paths), filters, shard)
        if args.dry_run:
            return dry_run(tree, selection, output, jobs, as_json=args.json)
        cache_dir = args.cache_dir or default_cache_dir()
        cache = ChunkCache(cache_dir) if os.path.isdir(cache_dir) else None
        fetcher = Fetcher(client, cache, max_parallel=1, deadline=max(60.0, 3 * timeout))
        report = Report(output.root)
        options = Options(jobs=jobs, verify=args.verify, overwrite=args.overwrite)
        try:
            Engine(tree, fetcher, output, report, options).run(selection)
        except (XnatfsError, KeyboardInterrupt):
            summary = report.summary()
            if summary.selected:  # say what got done before the error line
                report.print_summary(summary, json_out=sys.stdout if args.json else None)
            report.close()
            raise
        finally:
            fetcher.close()
            if cache is not None:
                cache.close()
        summary = report.summary()
        report.print_summary(summary, json_out=sys.stdout if args.json else None)
        return 0 if summary.ok else 1


def dry_run(tree: Tree, selection: Selection, output: Output, jobs: int, *,
            as_json: bool) -> int:
    """List the selection and print it with sizes; nothing is written."""
    from xnatfs.materialize.engine import listing_threads
    from xnatfs.materialize.output import existing_size
    from xnatfs.materialize.plan import PlannedFile, Planner
    from xnatfs.materialize.workers import Workers

    planned: list[tuple[PlannedFile, int | None]] = []

    def emit(pf: PlannedFile) -> None:
        size = pf.file.size if pf.file.size is not None else tree.file_size(pf.node)
        planned.append((pf, size))

    listers = Workers(listing_threads(jobs), "xnatfs-list")
    planner = Planner(tree, selection, lambda task: listers.submit(0, task), emit)
    try:
        planner.run(planner.roots())
    finally:
        listers.close()
    rows = []
    for pf, size in sorted(planned, key=lambda t: t[0].path):
        present = size is not None and existing_size(output.target(pf.path).final) == size
        rows.append({"path": pf.path, "size": size, "present": present})
    total = sum(r["size"] or 0 for r in rows)
    todo = [r for r in rows if not r["present"]]
    todo_bytes = sum(r["size"] or 0 for r in todo)
    failures = [{"path": f.path, "reason": f"listing failed: {f.reason}"}
                for f in planner.failures]
    if as_json:
        json.dump({"output": output.root, "selected": len(rows), "selected_bytes": total,
                   "to_download": len(todo), "to_download_bytes": todo_bytes,
                   "files": rows, "failures": failures}, sys.stdout, indent=2,
                  ensure_ascii=False)
        print()
    else:
        for r in rows:
            mark = "present" if r["present"] else "get"
            print(f"{mark:7} {'?' if r['size'] is None else r['size']:>12}  {r['path']}")
    for failure in failures:
        print(f"failed: {failure['path']}: {failure['reason']}", file=sys.stderr)
    print(f"dry run: {len(rows)} files ({human_size(total)}) selected; {len(todo)} to download "
          f"({human_size(todo_bytes)}), {len(rows) - len(todo)} already in {output.root}",
          file=sys.stderr)
    return 1 if failures else 0
