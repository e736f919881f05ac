"""``xnatfs materialize``: copy chosen subtrees of the XNAT tree into a folder.

Also accepts the XNAT Downloader's habits: ``-w URL -u USER -o DIR``, the password prompt and
the numbered project menu when no path is given.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from xnatfs.cli.options import add_connection_options, open_client, server_url
from xnatfs.cli.units import positive_float, positive_int
from xnatfs.errors import UsageError, XnatfsError

DEFAULT_JOBS = 16
LISTING_PATIENCE = 5  # a listing of a large session may take minutes to start (xnatpy: 300 s)
EPILOG = """\
DIR holds every file at its tree path, as the mount shows it: `materialize URL P1/S1 -o out`
gives out/P1/S1/... (the same as `cd MOUNT && cp -r --parents P1/S1 out/`), so several runs,
selections and shards can fill one DIR. Files appear only complete and verified (size, and MD5
where the server has one). DIR/.xnatfs/manifest.jsonl records what was written and DIR/MD5SUMS
its checksums (`cd DIR && md5sum -c MD5SUMS`).

Rerunning the same command is a sync: it continues an interrupted run, fetches files that are
new or changed on the server (size or MD5), and names files gone from the server (`gone:`),
keeping them; --delete removes those (only files xnatfs wrote). `xnatfs verify DIR` re-hashes
DIR offline against the manifest; --verify re-hashes and fetches whatever is damaged.

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
                   help="print the plan: each file new, changed, unchanged or gone, with "
                        "counts and bytes; download nothing")
    p.add_argument("--verify", action="store_true",
                   help="re-hash files already in DIR; fetch those that differ from what "
                        "xnatfs wrote (offline check: xnatfs verify DIR)")
    p.add_argument("--delete", action="store_true",
                   help="remove files gone from the server (only files xnatfs wrote, as its "
                        "manifest says; never your own)")
    p.add_argument("-ow", "--overwrite", action="store_true",
                   help="download every file again, even when present")
    p.add_argument("--no-zip", action="store_true",
                   help="fetch every file with its own GET, even where one zip of its "
                        "resource would cost the server far less")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="give up on a transfer silent for this long, then retry (default 60; "
                        "a listing may take five times as long to start)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's chunk cache: chunks found there are copied, not "
                        "downloaded (only read; default: the mount's default cache)")
    p.set_defaults(run=run)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a SLURM time limit, systemd stopping a timer's job): end like Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run(args: argparse.Namespace) -> int:
    from xnatfs.archive import Archive
    from xnatfs.materialize.engine import MAX_JOBS, Engine, Options, Source, listing_threads
    from xnatfs.materialize.menu import choose_projects
    from xnatfs.materialize.output import Output
    from xnatfs.materialize.report import Report
    from xnatfs.materialize.selection import Filters, Selection, Shard

    jobs, timeout = args.jobs, args.timeout
    if jobs > MAX_JOBS:
        raise UsageError(f"-j {jobs}: at most {MAX_JOBS} parallel transfers")
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
    output = Output(args.output)  # created by the run, once everything checks out
    options = Options(jobs=jobs, verify=args.verify, overwrite=args.overwrite,
                      delete=args.delete, zips=not args.no_zip)
    json_out = sys.stdout if args.json else None
    pool = jobs + listing_threads(jobs) + 4
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with open_client(args, url, pool_size=pool, read_timeout=timeout,
                         listing_timeout=timeout * LISTING_PATIENCE) as client:
            # One chunk call: the deadline of every front end, --timeout and GRACE for its
            # retries; a file whose step failed is tried again by the run (``FileJob``).
            archive = Archive.open_for(client, cache="read", cache_dir=args.cache_dir,
                                       max_parallel=1)
            tree = archive.tree
            try:
                if not paths:
                    paths = choose_projects(sorted(tree.children(tree.root)), out=sys.stderr)
                selection = Selection(tuple(paths), filters, shard)
                if args.dry_run:
                    report = Report(output.root, progress=False, interval=0)
                    engine = Engine(tree, None, output, report, options)
                    rows, failures = engine.dry_run(selection)
                    report.print_plan(rows, failures, json_out=json_out)
                    return 1 if failures else 0
                report = Report(output.root)
                try:
                    Engine(tree, Source(archive), output, report, options).run(selection)
                except KeyboardInterrupt as exc:
                    summary = report.summary()
                    report.print_summary(summary, json_out=json_out)
                    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
                    print(f"xnatfs: {what}; run the same command again to resume", file=sys.stderr)
                    return 143 if isinstance(exc, Terminated) else 130
                except XnatfsError:
                    summary = report.summary()
                    if summary.selected:  # say what got done before the error line
                        report.print_summary(summary, json_out=json_out)
                    report.close()
                    raise
                summary = report.summary()
                report.print_summary(summary, json_out=json_out)
                return 0 if summary.ok else 1
            finally:
                archive.close()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
