"""Keys and ``xnat://`` URLs of the git-annex integration. The extension rule is checked
against git-annex itself (``calckey``), run on real files in a scratch repository: a key
that differs from git-annex's own would still work, but would not dedup with a copy added by
hand."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from xnatfs.annex.branch import log_file, merged
from xnatfs.annex.keys import annex_key, key_facts, matches
from xnatfs.errors import UsageError, XnatfsError
from xnatfs.tree.model import RemoteFile
from xnatfs.tree.urls import tree_path, xnat_url

NAMES = ["t1.nii.gz", "a.b.c.tar.gz", "0001.dcm", ".foo", ".bashrc", "x..gz", "noext",
         "data.json", "a.verylong.gz", "a.gz.verylong", "a.tar.bz2", "sub-01_T1w.json",
         "image.DCM", "1.2.840.10008.5.1.4.dcm"]


@pytest.mark.skipif(shutil.which("git-annex") is None, reason="needs git-annex")
def test_md5e_keys_are_the_keys_git_annex_makes(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "annex", "init", "-q"], cwd=tmp_path, check=True,
                   capture_output=True)
    ours = []
    for n, name in enumerate(NAMES):
        body = f"content {n}".encode()
        (tmp_path / name).write_bytes(body)
        file = RemoteFile(f"/data/x/{name}", len(body), hashlib.md5(body).hexdigest())
        ours.append(annex_key(file, name, 0.0))
    theirs = subprocess.run(["git", "annex", "calckey", "--batch", "--backend", "MD5E"],
                            cwd=tmp_path, input="".join(f"{n}\n" for n in NAMES),
                            capture_output=True, text=True, check=True)
    assert dict(zip(NAMES, ours, strict=True)) == dict(
        zip(NAMES, theirs.stdout.splitlines(), strict=True))

def test_keys_say_size_and_md5_and_match_the_listing() -> None:
    md5 = "0123456789abcdef0123456789abcdef"
    key = annex_key(RemoteFile("/u", 12, md5.upper()), "a.nii.gz", 0.0)
    assert key == f"MD5E-s12--{md5}.nii.gz"
    facts = key_facts(key)
    assert (facts.size, facts.md5) == (12, md5)
    assert matches(key, RemoteFile("/u", 12, md5))
    assert not matches(key, RemoteFile("/u", 12, "f" * 32))  # a same-size replacement
    assert not matches(key, RemoteFile("/u", 13, md5))
    worm = annex_key(RemoteFile("/u", 5, None), "b.dcm", 1.7e9)  # no MD5 listed
    assert worm.startswith("WORM-s5-m1700000000--") and worm.endswith(".dcm")
    assert key_facts(worm).md5 is None and matches(worm, RemoteFile("/u", 5, None))
    assert key_facts("URL--xnat://P/x").size is None


def test_xnat_urls_are_tree_paths_percent_encoded() -> None:
    path = "P 1/S#1/E?1/scans/1-T1w/resources/DICOM/files/a b%.dcm"
    url = xnat_url(path)
    assert url == "xnat://P%201/S%231/E%3F1/scans/1-T1w/resources/DICOM/files/a%20b%25.dcm"
    assert " " not in url and tree_path(url) == path
    for bad in ("http://host/P", "xnat://", "xnat://P/../x", "xnat://P/a%2Fb"):
        with pytest.raises(UsageError):
            tree_path(bad)


def test_branch_logs_replace_only_our_own_line() -> None:
    key = "MD5E-s2048--e701c8512af33cbd52a623a0854eaf06.dcm"
    assert log_file(key) == f"f0b/1e5/{key}"  # the path git-annex itself gave this key
    old = "1.000000000s 1 other-uuid\n2.000000000s 0 our-uuid\n"
    assert merged(old, "our-uuid", "3.5s") == "1.000000000s 1 other-uuid\n3.5s 1 our-uuid\n"
    assert merged("", "xnat://P/a", "4s") == "4s 1 xnat://P/a\n"
    with pytest.raises(XnatfsError):
        log_file("URL--xnat://P/a b")
