"""``xnatfs datalad`` and ``git-annex-remote-xnat`` with real git-annex and real DataLad, in
child processes, against the emulator. Requests are counted from the emulator's log.

One dataset is shared by the module (making one costs a DataLad start): the tests that only
read it come first, the one that changes the server (a rerun's sync) last, on the same
emulator. Every command gets a private HOME and XDG folders, the remote's scripts folder on
PATH and git's identity in the environment: the user's global git config is never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.oracle import Oracle
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnat_emulator.archive import File
from xnat_emulator.content import SyntheticContent
from xnatfs.annex.keys import extension

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("git-annex") is None, reason="needs git-annex"),
]
PASSWORD = "Pw-d4tal4d-9f3e"  # distinctive, so a grep of the repository finds any copy
USER = "carol"  # the commands' user; the oracle reads as alice
USERS = {"alice": "secret", USER: PASSWORD, "demo": "demo"}
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=2, dicoms=2, dicom_size=1500,
                     niftis=1, nifti_size=5000, session_resources=1, subject_resources=0,
                     project_resources=0, resource_files=1, assessors=0, seed=5)
SESSION = "PROJ01/S001/S001_MR1"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org"}


@dataclass
class Made:
    """The shared dataset, its emulator, the environment of its commands, the first run."""

    emu: Emulator
    root: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    file_gets: int
    listings: int

    def run(self, *cmd: str, cwd: Path | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, cwd=cwd or self.root, env=env or self.env,
                              capture_output=True, text=True, timeout=90, check=False)
        if check:
            assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
        return proc

    def xnatfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "xnatfs", *args, cwd=self.root.parent,
                        check=check)


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "GIT_"))}
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        (home / name.lower()).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / name.lower())
    env.update(HOME=str(home), XNAT_USER=USER, XNAT_PASS=PASSWORD, **GIT_IDENTITY)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    base = tmp_path_factory.mktemp("datalad")
    emu = Emulator(synthetic_archive(SPEC), EmulatorConfig(), USERS)
    emu.start()
    try:
        env = environment(base / "home")
        root = base / "ds"
        proc = subprocess.run([sys.executable, "-m", "xnatfs", "datalad", emu.url, "PROJ01",
                               "-o", str(root)], env=env, capture_output=True, text=True,
                              timeout=90, check=False)
        assert proc.returncode == 0, proc.stderr
        yield Made(emu, root, env, proc, emu.log.count(kind="file"),
                   emu.log.count(kind="listing"))
    finally:
        emu.stop()


def annexed(made: Made) -> dict[str, str]:
    """Tree path -> key of every annexed file in the work tree."""
    out = {}
    for path in made.run("git", "ls-files", "-z").stdout.split("\0"):
        link = made.root / path
        if path and link.is_symlink():
            out[path] = os.readlink(link).rsplit("/", 1)[-1]
    return out


def key_of(f: File) -> str:
    """The key git-annex makes of the file's bytes (``test_annex_keys`` checks ``extension``
    against git-annex itself)."""
    return f"MD5E-s{f.size}--{f.md5}{extension(f.relpath)}"


def test_a_dataset_holds_every_file_and_no_body_was_downloaded(made: Made) -> None:
    truth = Oracle.of(made.emu, user="alice").files
    keys = annexed(made)
    assert keys == {path: key_of(f) for path, f in truth.items()}
    assert made.file_gets == 0  # listings only: a project, its subjects, sessions, a session's
    assert made.listings <= 8  # scans and files, whatever the number of files
    assert not any((made.root / p).exists() for p in keys)  # content absent: links dangle
    log = made.run("git", "log", "--format=%s").stdout.splitlines()
    assert log == [f"xnat: {len(truth)} files from {made.emu.url}", "[DATALAD] new dataset"]
    assert (made.root / ".datalad" / "config").is_file()
    remotes = made.run("git", "cat-file", "-p", "git-annex:remote.log").stdout
    assert re.search(r"autoenable=true .*externaltype=xnat .*name=xnat .*url=" +
                     re.escape(made.emu.url), remotes)
    assert f"{len(truth)} files from {made.emu.url}" in made.first.stdout


def test_get_fsck_drop_get_of_a_session_one_get_per_file_then_the_cache(made: Made) -> None:
    truth = Oracle.of(made.emu, SESSION, user="alice")
    wanted = truth.files
    made.emu.log.clear()
    made.run("datalad", "get", SESSION)
    for path, f in wanted.items():
        assert hashlib.md5((made.root / path).read_bytes()).hexdigest() == f.md5
    assert made.emu.log.count(kind="file") == len(wanted) == 7  # small files: one GET each
    assert made.emu.log.count(kind="listing") <= 6  # the remote's tree, not per file
    fsck = made.run("git", "annex", "fsck", SESSION)
    assert fsck.stdout.count(" ok") == len(wanted)
    made.emu.log.clear()
    made.run("git", "annex", "drop", SESSION)  # asks the remote: CHECKPRESENT, from listings
    assert made.emu.log.count(kind="file") == 0 and made.emu.log.count(kind="listing") > 0
    assert not any((made.root / p).exists() for p in wanted)
    made.run("git", "annex", "get", SESSION)
    assert made.emu.log.count(kind="file") == 0  # the chunk cache, shared with the mount
    assert all((made.root / p).read_bytes() == truth.read(p) for p in wanted)
    assert made.run("git", "annex", "fsck", "--from", "xnat", "--fast", SESSION).returncode == 0


def test_the_remote_is_read_only_and_says_so(made: Made) -> None:
    path = next(p for p in annexed(made) if p.endswith(".dcm"))
    made.run("git", "annex", "get", path)
    drop = made.run("git", "annex", "drop", "--from", "xnat", "--force", path, check=False)
    assert drop.returncode != 0
    assert "the xnat remote is read-only" in drop.stdout + drop.stderr
    assert "Traceback" not in drop.stdout + drop.stderr


def test_no_credential_is_written_into_the_dataset(made: Made) -> None:
    made.run("git", "annex", "get", f"{SESSION}/resources")
    hits = subprocess.run(["grep", "-rla", "--", PASSWORD, str(made.root)],
                          capture_output=True, text=True, check=False)
    assert hits.stdout == "" and hits.returncode == 1
    config = (made.root / ".git" / "config").read_text()
    assert USER not in config and PASSWORD not in config
    paths = sorted(annexed(made))[:3]
    made.run("git", "annex", "drop", "--force", *paths)
    made.emu.log.clear()
    wrong = made.run("git", "annex", "get", *paths, check=False,
                     env={**made.env, "XNAT_PASS": "Wr0ng-" + PASSWORD})
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and said.count("login refused") == 3, said
    assert PASSWORD not in said and "Traceback" not in said
    refused = [r for r in made.emu.log.records() if r.status == 401]
    assert len(refused) == 1  # one failed login per remote process, not one per file
    made.run("git", "annex", "get", *paths)


def test_a_clone_autoenables_the_remote_and_addurl_and_addurls_take_xnat_urls(made: Made,
                                                                  tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    made.run("git", "clone", "-q", str(made.root), str(clone), cwd=tmp_path)
    init = made.run("git", "annex", "init", cwd=clone)
    assert "xnat" in init.stdout + init.stderr  # "Remote xnat autoenabled"
    truth = Oracle.of(made.emu, SESSION, user="alice")
    nifti = next(p for p in truth.files if p.endswith(".nii.gz"))
    made.run("git", "annex", "get", "--from", "xnat", nifti, cwd=clone)
    assert hashlib.md5((clone / nifti).read_bytes()).hexdigest() == truth.files[nifti].md5
    dicom = next(p for p in truth.files if p.endswith("/0002.dcm"))
    made.run("git", "annex", "addurl", "--file", "extra.dcm", f"xnat://{dicom}", cwd=clone)
    assert (clone / "extra.dcm").read_bytes() == truth.read(dicom)
    archive = made.emu.archive  # a file of several chunks, in a project no other test lists
    subject = archive.add_subject(archive.add_project("BIG"), "S1")
    scan = archive.add_scan(archive.add_experiment(subject, "E1"), "1", "T1w")
    big = archive.add_resource(scan, "NIFTI").add_file(
        "t1.nii", SyntheticContent(seed=8, size=5 * (1 << 20) + 77, mtime=1.7e9))
    made.run("git", "annex", "addurl", "--file", "big.nii",
             "xnat://BIG/S1/E1/scans/1-T1w/resources/NIFTI/files/t1.nii", cwd=clone)
    assert (clone / "big.nii").read_bytes() == big.read()
    (clone / "own.txt").write_text("my notes")
    made.run("git", "annex", "add", "own.txt", cwd=clone)
    store = made.run("git", "annex", "copy", "--to", "xnat", "own.txt", cwd=clone, check=False)
    assert store.returncode != 0 and "the xnat remote is read-only" in store.stdout + store.stderr
    table = tmp_path / "urls.csv"
    table.write_text(f"url,name\nxnat://{nifti},mine/t1.nii.gz\n")
    made.run("datalad", "addurls", str(table), "{url}", "{name}", cwd=clone)
    assert (clone / "mine" / "t1.nii.gz").read_bytes() == truth.read(nifti)
    bad = made.run("git", "annex", "addurl", "--file", "nope.dcm",
                   f"xnat://{SESSION}/scans/9-X/resources/DICOM/files/none.dcm", cwd=clone,
                   check=False)
    assert bad.returncode != 0 and "no such file on" in bad.stdout + bad.stderr


def test_bad_input_is_one_line_and_writes_nothing(made: Made, tmp_path: Path) -> None:
    url = made.emu.url
    cases = [
        (("datalad", url, "-o", str(tmp_path / "a")), 2, "no tree path given"),
        (("datalad", url, "PROJ01/NOBODY", "-o", str(tmp_path / "b")), 4, "no such path"),
        (("datalad", url.replace("://", "://alice:x@"), "PROJ01", "-o", str(tmp_path / "c")),
         2, "not in the URL"),
        (("datalad", url, "PROJ01", "-o", str(made.root / ".datalad")), 2, "not empty"),
        (("datalad", url, "PROJ01", "-o", str(tmp_path / "f" / "ds")), 1, "f/ds"),
    ]
    (tmp_path / "f").write_text("a file, not a folder")
    for args, code, words in cases:
        proc = made.xnatfs(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and words in lines[0], proc.stderr
        assert PASSWORD not in proc.stderr
    assert not any((tmp_path / n).exists() for n in "abc")
    assert (tmp_path / "f").read_text() == "a file, not a folder"


def test_readme_example_runs(made: Made, tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## DataLad\n", 1)[1]
    script = re.search(r"```bash\n(.*?)```", section, re.S)
    assert script, "the DataLad section has a bash example"
    text = script[1].replace("http://127.0.0.1:8080", made.emu.url)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=tmp_path, env=made.env,
                          capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    files = len(Oracle.of(made.emu, SESSION, user="alice").files)
    assert f"xnat: {files} files from {made.emu.url}" in proc.stdout
    assert (tmp_path / "s001" / ".datalad" / "config").is_file()


def test_a_rerun_commits_new_changed_and_gone_files(made: Made) -> None:
    """Last: it changes the server."""
    archive = made.emu.archive
    session = next(iter(archive.experiments.values()))
    dicom = session.scans[1].resources[0]
    same, grown = dicom.files[0], dicom.files[1]
    added = dicom.add_file("0099.dcm", SyntheticContent(91, 777, 1.7e9))
    dicom.replace_file(same.relpath, SyntheticContent(92, same.size, 1.7e9 + 3600))
    dicom.replace_file(grown.relpath, SyntheticContent(93, grown.size + 10, 1.7e9 + 3600))
    nifti = session.scans[0].resources[1]
    dropped = nifti.files[0]
    nifti.remove_file(dropped.relpath)
    before = annexed(made)
    stale = next(p for p, f in Oracle.of(made.emu, user="alice").files.items()
                 if f.uri == same.uri)
    made.run("git", "annex", "drop", "--force", stale)  # the xnat remote no longer has it
    old = made.run("git", "annex", "get", stale, check=False)  # the key is the old content
    assert old.returncode != 0 and "changed on" in old.stdout + old.stderr
    in_the_way = made.root / Path(stale).parent / "0099.dcm"  # where the new file goes
    in_the_way.write_text("mine")
    refused = made.xnatfs("datalad", made.emu.url, "PROJ01", "-o", str(made.root), check=False)
    assert refused.returncode == 2 and "is in the way" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert annexed(made) == before and in_the_way.read_text() == "mine"  # rolled back
    assert made.run("git", "status", "--porcelain").stdout == "?? " + str(
        in_the_way.relative_to(made.root)) + "\n"
    in_the_way.unlink()
    made.emu.log.clear()
    proc = made.xnatfs("datalad", made.emu.url, "PROJ01", "-o", str(made.root))
    assert made.emu.log.count(kind="file") == 0
    assert "1 new, 2 changed, 1 gone" in proc.stdout
    truth = Oracle.of(made.emu, "PROJ01", user="alice").files
    after = annexed(made)
    assert after == {path: key_of(f) for path, f in truth.items()}
    by_uri = {f.uri: p for p, f in truth.items()}
    changed = {by_uri[same.uri], by_uri[grown.uri]}
    gone = set(before) - set(after)
    assert len(gone) == 1 and set(after) - set(before) == {by_uri[added.uri]}
    message = made.run("git", "log", "-1", "--format=%B").stdout
    assert message.startswith(f"xnat: 1 new, 2 changed, 1 gone on {made.emu.url}")
    assert {ln.split(": ", 1)[1] for ln in message.splitlines() if ln.startswith("changed: ")} \
        == changed
    assert f"gone: {gone.pop()}" in message and f"new: {by_uri[added.uri]}" in message
    assert made.run("git", "status", "--porcelain").stdout == ""
    made.run("git", "annex", "get", *sorted(changed))
    for path in changed:
        assert hashlib.md5((made.root / path).read_bytes()).hexdigest() == truth[path].md5
    commits = made.run("git", "rev-list", "--count", "HEAD").stdout
    again = made.xnatfs("datalad", made.emu.url, "PROJ01", "-o", str(made.root))
    assert "up to date" in again.stdout
    assert made.run("git", "rev-list", "--count", "HEAD").stdout == commits
