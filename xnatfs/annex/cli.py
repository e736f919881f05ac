"""``xnatfs datalad URL PATH... -o DIR``: a DataLad dataset of XNAT files, content on demand.

The first run creates DIR as a DataLad dataset with the ``xnat`` special remote and one
commit of every selected file, downloading no file body; ``datalad get`` / ``git annex get``
then fetch through the remote. The same command run again brings the dataset up to date with
the server in one more commit (new, changed and gone files). DIR is created only once login,
server and selection check out, and a DIR that is neither empty nor such a dataset is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from xnatfs.annex.git import Git, git_identity_missing, remote_on_path, require_tools
from xnatfs.annex.keys import stored_server_url
from xnatfs.cli.options import add_connection_options, open_client, server_url
from xnatfs.errors import UsageError, XnatfsError

REMOTE = "xnat"
log = logging.getLogger(__name__)

EPILOG = """\
DIR gets one annexed file per XNAT file at its tree path, as the mount shows it, with no
content: `datalad get PATH` (or `git annex get PATH`) fetches it from XNAT through the
git-annex special remote `xnat` (git-annex-remote-xnat, installed with xnatfs; it must be on
PATH), verified against XNAT's MD5. `git annex fsck` checks what is here; `drop` frees it.
Rerun the same command to take in what changed on the server: one commit says what.
Credentials come from XNAT_USER/XNAT_PASS, xnatfs login or ~/.netrc, for this command and
for the remote alike; none is written into the dataset.

examples:
  xnatfs datalad https://xnat.example.org MYPROJ/SUBJ01 -o subj01
  cd subj01 && datalad get MYPROJ/SUBJ01/SESS01/scans/1-T1w
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datalad", help="make or update a DataLad dataset of tree paths (content on demand)",
        description="Make DIR a DataLad dataset holding every file below the tree PATHs "
                    "(annexed, content left on XNAT), or bring one up to date.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_options(p)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="tree paths such as PROJECT/SUBJECT/SESSION")
    p.add_argument("-o", "--output", dest="output", metavar="DIR",
                   help="the dataset's folder (created if missing; must be empty or a "
                        "dataset this command made)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The command; a failure of the local disk (permissions, a full disk) is one line too."""
    try:
        return _run(args)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise XnatfsError(f"cannot write the dataset:{where}: {exc.strerror or exc}") from None


def _run(args: argparse.Namespace) -> int:
    from xnatfs.annex import dataset
    from xnatfs.archive import Archive

    paths = list(args.paths)
    if args.web and args.url:
        paths.insert(0, args.url)
    if not paths:
        raise UsageError("no tree path given: xnatfs datalad URL PROJECT[/SUBJECT/...] -o DIR")
    if not args.output:
        raise UsageError("no dataset folder given: -o DIR")
    url = stored_server_url(server_url(args))
    require_tools()
    root = Path(args.output)
    git = Git(root)
    existing = _existing(git, url)
    if git_identity_missing(root if root.is_dir() else Path.cwd()):
        raise UsageError("git needs a name and email to commit: set user.name and user.email "
                         "(git config), or GIT_AUTHOR_NAME/EMAIL and GIT_COMMITTER_NAME/EMAIL")
    with open_client(args, url) as client:
        tree = Archive.open_for(client, cache="none").tree  # listings only: no reader runs
        began = time.monotonic()
        roots, wanted = dataset.listed(tree, paths)
        log.info("listed %d files in %.1f s", len(wanted), time.monotonic() - began)
    if existing is None:
        began = time.monotonic()
        made_root = not root.exists()
        try:
            _create(git, url)
        except BaseException:  # leave DIR as it was: missing or empty
            _empty(root, remove=made_root)
            raise
        log.info("created the dataset in %.1f s", time.monotonic() - began)
        existing = dataset.stored_url(git)
        assert existing is not None
    have = dataset.committed(git)
    first = not have
    changes = dataset.compare(roots, wanted, have)
    if not changes:
        print(f"{root}: up to date with {url} ({changes.unchanged} files)")
        return 0
    began = time.monotonic()
    try:
        dataset.apply(git, changes, existing[0])
        log.info("recorded %s in %.1f s", changes.summary(), time.monotonic() - began)
        git.run("commit", "-q", "--no-verify", "-F", "-",
                input=dataset.message(url, changes, first=first).encode())
    except BaseException:  # the work tree as HEAD has it, so a rerun can start clean
        dataset.roll_back(git, changes)
        raise
    if first:
        print(f"{root}: {len(changes.new)} files from {url}; no content downloaded "
              f"(datalad get PATH fetches it)")
    else:
        print(f"{root}: {changes.summary()}, {changes.unchanged} unchanged")
    if not remote_on_path():
        print("xnatfs: note: git-annex-remote-xnat is not on PATH; add the folder of the "
              "xnatfs command to PATH for datalad get and git annex get", file=sys.stderr)
    return 0


def _existing(git: Git, url: str) -> tuple[str, str] | None:
    """The dataset's remote (uuid, url) if DIR is one of ours; None for a DIR to create."""
    from xnatfs.annex import dataset

    root = git.root
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    if not root.exists() or not any(root.iterdir()):
        return None
    if not (root / ".git").exists():
        raise UsageError(f"{root} is not empty and not a dataset made by xnatfs datalad")
    found = dataset.stored_url(git)
    if found is None:
        raise UsageError(f"{root} is a git repository without the {REMOTE} remote: "
                         "give an empty or new folder")
    if found[1] != url:
        raise UsageError(f"{root} holds files of {found[1]}, not {url}")
    if git.run("status", "--porcelain", "--untracked-files=no"):
        raise UsageError(f"{root} has uncommitted changes: commit or discard them first")
    return found


def _empty(root: Path, *, remove: bool) -> None:
    """Undo a half-made dataset: DIR removed (``remove``: this run made it) or emptied (it was
    empty before)."""
    import shutil

    if remove:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _create(git: Git, url: str) -> None:
    """A new DataLad dataset in DIR, with the remote (autoenabled in every clone)."""
    try:
        import datalad.api as dl
    except ImportError:
        raise XnatfsError("DataLad is not installed: pip install 'xnatfs[datalad]'") from None
    try:
        dl.create(path=str(git.root), result_renderer="disabled")
    except Exception as exc:  # DataLad's own errors: say them in one line
        text = " ".join(str(exc).split())
        raise XnatfsError(f"datalad create {git.root} failed: {text[:300]}") from None
    git.run("annex", "initremote", REMOTE, "type=external", "externaltype=xnat",
            "encryption=none", f"url={url}", "autoenable=true")
