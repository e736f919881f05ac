"""git and git-annex as child processes: each batch mode fed all its lines in one go.

One process per operation, never one per file: 10,000 files cost a handful of processes.
A failure becomes one ``XnatfsError`` line naming the command and git's last words, with
nothing of the environment in it (credentials never reach a git command line or message).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from xnatfs.errors import XnatfsError

REMOTE_PROGRAM = "git-annex-remote-xnat"
log = logging.getLogger(__name__)


def require_tools() -> None:
    """git and git-annex, or one line on how to get them."""
    for tool, package in (("git", "git"), ("git-annex", "git-annex")):
        if shutil.which(tool) is None:
            raise XnatfsError(f"{tool} is not installed (Debian/Ubuntu: apt install {package})")


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git-annex: with this installation's scripts folder on PATH when
    ``git-annex-remote-xnat`` is not found there, so the remote that git-annex starts is ours."""
    env = dict(os.environ if base is None else base)
    if shutil.which(REMOTE_PROGRAM, path=env.get("PATH")) is None:
        scripts = sysconfig.get_path("scripts")
        env["PATH"] = scripts + os.pathsep + env.get("PATH", "")
    return env


def remote_on_path() -> bool:
    return shutil.which(REMOTE_PROGRAM) is not None


class Git:
    """git and git-annex in one work tree."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.env = child_env(env)

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        """``git ARGS`` in the work tree; its stdout. A failure is one line."""
        proc = subprocess.run(["git", *args], cwd=self.root, env=self.env, input=input,
                              capture_output=True, check=False)
        if check and proc.returncode != 0:
            raise XnatfsError(f"git {' '.join(args[:2])} failed in {self.root}: "
                              f"{last_line(proc.stderr or proc.stdout)}")
        return proc.stdout

    def ok(self, *args: str) -> bool:
        return subprocess.run(["git", *args], cwd=self.root, env=self.env,
                              capture_output=True, check=False).returncode == 0

    def batch(self, args: Iterable[str], lines: Iterable[str]) -> bytes:
        """A ``--batch`` command fed every line at once; every line must succeed (git-annex
        answers a failed line with an empty one and a message on stderr)."""
        data = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
        if not data:
            return b""
        args = list(args)
        began = time.monotonic()
        out = self.run(*args, input=data)
        log.info("git %s: %d lines in %.1f s", " ".join(args[:2]), data.count(b"\n"),
                 time.monotonic() - began)
        answers = out.split(b"\n")
        if b"" in answers[:-1]:
            raise XnatfsError(f"git {' '.join(args[:2])} refused some of its input")
        return out


def last_line(text: bytes) -> str:
    lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def git_identity_missing(root: Path) -> bool:
    """Whether git would refuse to commit for want of a user name and email."""
    return subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=root, capture_output=True,
                          check=False).returncode != 0
