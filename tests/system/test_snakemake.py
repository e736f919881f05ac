"""The Snakemake storage plugin ``xnat`` with real Snakemake against the emulator: the
interface's own ``TestStorageBase`` in-process, and workflows run by ``snakemake --cores 2``
in child processes. Requests are counted from the emulator's log.

Snakemake takes a second or two to start, so the README's example (its Snakefile and its two
``snakemake --cores 2`` lines, copied as they are) is run by one module fixture, a first run
that downloads and a second that must have nothing to do, and the tests read what those runs
did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from snakemake.io import IOCache
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_storage_plugins.tests import TestStorageBase
from snakemake_storage_plugin_xnat import StorageProvider, StorageProviderSettings

from tests.support.oracle import Oracle
from xnat_emulator import Emulator, EmulatorConfig, Record, SyntheticSpec, synthetic_archive

pytestmark = pytest.mark.timeout(120)
PASSWORD = "Pw-sn4kem4ke-7c1d"  # distinctive, so a grep finds any copy
USER = "dave"
USERS = {"alice": "secret", USER: PASSWORD}
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1, dicoms=4, dicom_size=2048,
                     niftis=1, nifti_size=30_000, session_resources=0, subject_resources=0,
                     project_resources=1, resource_files=1, assessors=0, seed=7)
SCAN = "PROJ01/S001/S001_MR1/scans/1-T1w/resources"
DICOM = f"{SCAN}/DICOM/files"


@pytest.fixture(scope="module")
def served() -> Iterator[Emulator]:
    emu = Emulator(synthetic_archive(SPEC), EmulatorConfig(), USERS)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def environment(home: Path) -> dict[str, str]:
    """A private HOME and XDG folders (no stored login, netrc or cache of the user's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "SNAKEMAKE_"))}
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        (home / name.lower()).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / name.lower())
    env.update(HOME=str(home), XNAT_USER=USER, XNAT_PASS=PASSWORD)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    return env


def snakemake(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=90,
                          check=False)


def readme_example(url: str) -> tuple[str, str, list[str]]:
    """The README's Snakefile and its shell lines (an export, then the snakemake commands),
    with the test's server and credentials."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Snakemake\n", 1)[1].split("\n## ", 1)[0]
    snakefile = re.search(r"```python\n(.*?)```", section, re.S)
    script = re.search(r"```bash\n(.*?)```", section, re.S)
    assert snakefile and script, "the Snakemake section has a Snakefile and a bash example"
    lines = [line for line in script[1].replace(
        "XNAT_USER=demo XNAT_PASS=demo", f"XNAT_USER={USER} XNAT_PASS={PASSWORD}").splitlines()
        if line.strip()]
    export, *commands = lines
    assert export.startswith("export ") and len(commands) == 2, lines
    return snakefile[1].replace("http://127.0.0.1:8080", url), export, commands


@dataclass
class Runs:
    """The README's workflow, run twice; what each run asked the server."""

    folder: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    first_log: list[Record]
    second: subprocess.CompletedProcess[str]
    second_log: list[Record]


@pytest.fixture(scope="module")
def runs(served: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("snakemake")
    env = environment(base / "home")
    folder = base / "workflow"
    folder.mkdir()
    snakefile, export, commands = readme_example(served.url)
    (folder / "Snakefile").write_text(snakefile)
    done = []
    served.config = replace(served.config, latency=0.1)  # so that overlapping GETs show
    for command in commands:  # each on its own, to count its requests
        served.log.clear()
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{export}\n{command}"],
                              cwd=folder, env={k: v for k, v in env.items()
                                               if not k.startswith("XNAT_")},
                              capture_output=True, text=True, timeout=90, check=False)
        done.append((proc, served.log.records()))
    served.config = replace(served.config, latency=0.0)
    (first, first_log), (second, second_log) = done
    return Runs(folder, env, first, first_log, second, second_log)


def kinds(records: list[Record], kind: str) -> list[Record]:
    return [r for r in records if r.kind == kind]


def test_a_workflow_gets_each_input_in_one_request_and_the_right_bytes(runs: Runs,
                                                                        served: Emulator) -> None:
    assert runs.first.returncode == 0, runs.first.stderr
    truth = Oracle.of(served, SCAN, user="alice")
    nifti = f"{SCAN}/NIFTI/files/1_T1w.nii.gz"
    assert (runs.folder / "t1" / "t1.nii.gz").read_bytes() == truth.read(nifti)
    dicoms = [f"{DICOM}/{n:04d}.dcm" for n in (1, 2, 3)]
    assert (runs.folder / "t1" / "md5s.txt").read_text().split() == \
        [truth.files[p].md5 for p in dicoms]
    gets = kinds(runs.first_log, "file")
    assert sorted(r.path for r in gets) == sorted(
        truth.nodes[p].file.uri for p in [nifti, *dicoms])  # type: ignore[union-attr]
    # Listings: the way down to the session, then its scans and its files (asked at once),
    # from which both resources' files come, however many files there are.
    assert sorted(r.path for r in kinds(runs.first_log, "listing")[-2:]) == \
        ["/data/experiments/XNAT_E00001/files", "/data/experiments/XNAT_E00001/scans"]
    assert len(kinds(runs.first_log, "listing")) == 5
    assert {r.kind for r in runs.first_log} <= {"auth", "listing", "file"}  # nothing per file
    overlapping = [(a, b) for a in gets for b in gets if a is not b and a.time < b.time < a.done]
    assert overlapping, "the inputs were fetched one after another"
    storage = runs.folder / ".snakemake" / "storage"
    assert not [p for p in storage.rglob("*") if p.is_file()]  # no part file, no copy kept
    said = runs.first.stdout + runs.first.stderr
    assert PASSWORD not in said and "Traceback" not in said


def test_a_second_run_has_nothing_to_do_and_downloads_nothing(runs: Runs) -> None:
    assert runs.second.returncode == 0, runs.second.stderr
    assert "Nothing to be done" in runs.second.stdout + runs.second.stderr
    assert kinds(runs.second_log, "file") == []
    assert len(kinds(runs.second_log, "listing")) <= 5
    hits = subprocess.run(["grep", "-rla", "--", PASSWORD, str(runs.folder)],
                          capture_output=True, text=True, check=False)
    assert hits.stdout == "" and hits.returncode == 1  # not in .snakemake's logs either


def test_a_rule_writing_to_xnat_storage_fails_with_a_clear_message(runs: Runs,
                                                                   served: Emulator,
                                                                   tmp_path: Path) -> None:
    """Also: the server and credentials as flags and Snakemake's own variables, not XNAT_*."""
    (tmp_path / "Snakefile").write_text(
        'storage:\n    provider="xnat",\n\n'
        'rule write:\n'
        f'    output: storage.xnat("xnat://{DICOM}/new.dcm")\n'
        '    shell: "echo data > {output}"\n')
    env = {k: v for k, v in runs.env.items() if not k.startswith("XNAT_")}
    env.update(SNAKEMAKE_STORAGE_XNAT_USER=USER, SNAKEMAKE_STORAGE_XNAT_PASSWORD=PASSWORD)
    proc = snakemake(tmp_path, env, "--storage-xnat-url", served.url,
                     "--storage-xnat-timeout", "20")
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the xnat storage is read-only: files are added on the XNAT server; write outputs " \
        f"to local paths or another storage provider: xnat://{DICOM}/new.dcm" in said, said
    assert PASSWORD not in said and "Traceback" not in said
    assert f"{DICOM}/new.dcm" not in Oracle.of(served, SCAN, user="alice").files


# -- in-process: the interface's tests, the inventory, bad input -------------------------------


def provider(url: str, tmp_path: Path, **settings: object) -> StorageProvider:
    return StorageProvider(local_prefix=tmp_path / "prefix", logger=logging.getLogger("test"),
                           settings=StorageProviderSettings(url=url, **settings))  # type: ignore[arg-type]


class TestXnatStorage(TestStorageBase):
    """``TestStorageBase`` as it applies to a read-only provider: exists, mtime, size, the
    MD5 checksum, the inventory and retrieval; a file that is not there; the queries."""

    __test__ = True
    retrieve_only = True
    delete = False

    @pytest.fixture(autouse=True)
    def _server(self, served: Emulator) -> None:
        self.url = served.url

    def get_storage_provider_cls(self) -> type[StorageProvider]:
        return StorageProvider

    def get_storage_provider_settings(self) -> StorageProviderSettings:
        return StorageProviderSettings(url=self.url, user=USER, password=PASSWORD)

    def get_query(self, tmp_path: object) -> str:
        return f"xnat://{DICOM}/0004.dcm"

    def get_query_not_existing(self, tmp_path: object) -> str:
        return f"xnat://{DICOM}/9999.dcm"


def test_one_listing_answers_every_file_of_a_resource(served: Emulator, tmp_path: Path) -> None:
    xnat = provider(served.url, tmp_path, user=USER, password=PASSWORD)
    truth = Oracle.of(served, DICOM, user="alice")
    cache = IOCache(max_wait_time=10)
    first = xnat.object(f"xnat://{DICOM}/0001.dcm")
    asyncio.run(first.inventory(cache))
    served.log.clear()
    for path, f in truth.files.items():
        obj = xnat.object(f"xnat://{path}")
        key = obj.cache_key()
        assert cache.exists_in_storage[key] is True and cache.size[key] == f.size
        assert cache.checksum[key] == f"md5:{f.md5}"
        assert cache.mtime[key].storage() == obj.mtime() > 0  # the session's last_modified
        asyncio.run(obj.inventory(cache))  # the resource is done: no second listing
    missing = xnat.object(f"xnat://{DICOM}/9999.dcm")
    assert missing.get_inventory_parent() in cache.exists_in_storage.has_inventory
    assert missing.cache_key() not in cache.exists_in_storage  # so Snakemake reads: absent
    assert served.log.records() == []
    project_file = next(iter(Oracle.of(served, "PROJ01/resources", user="alice").files))
    assert xnat.object(f"xnat://{project_file}").mtime() == 0  # XNAT gives it no time
    xnat.close()


def test_bad_queries_and_settings_are_one_line_without_secrets(
        served: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for query, words in [("https://host/file.dcm", "not an xnat:// URL"),
                         ("xnat://PROJ01/S001", "not a file of a resource"),
                         (f"xnat://{SCAN}/DICOM/files", "not a file of a resource"),
                         ("xnat://PROJ01/../etc/passwd", "not a tree path")]:
        result = StorageProvider.is_valid_query(query)
        assert not result and words in str(result) and "\n" not in str(result)
    assert StorageProvider.is_valid_query("xnat://P/S/E/scans/{scan}/resources/DICOM/files/"
                                          "{name}.dcm")  # wildcards are fine
    monkeypatch.delenv("XNAT_URL", raising=False)
    for settings, words in [
        ({"url": served.url.replace("://", f"://{USER}:{PASSWORD}@")}, "must not hold a user"),
        ({"url": served.url, "password": PASSWORD}, "needs a user"),
        ({"url": served.url, "timeout": -1.0}, "timeout must be positive"),
        ({"url": "https://[::1"}, "https://[::1"),
        ({}, "no XNAT server for the xnat storage: give url="),
    ]:
        with pytest.raises(WorkflowError) as caught:
            StorageProvider(local_prefix=tmp_path, logger=logging.getLogger("test"),
                            settings=StorageProviderSettings(**settings))  # type: ignore[arg-type]
        text = str(caught.value)
        assert words in text and PASSWORD not in text and "\n" not in text.strip(), text
    wrong = provider(served.url, tmp_path, user=USER, password="Wr0ng-" + PASSWORD)
    served.log.clear()
    for name in ("0001.dcm", "0002.dcm"):
        with pytest.raises(WorkflowError) as caught:
            wrong.object(f"xnat://{DICOM}/{name}").exists()
        assert "login refused" in str(caught.value) and PASSWORD not in str(caught.value)
    assert len([r for r in served.log.records() if r.status == 401]) == 1  # never retried
    wrong.close()
    for name in ("XNAT_USER", "XNAT_PASS", "XNAT_JSESSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    guest = provider(served.url, tmp_path)
    with pytest.raises(WorkflowError) as caught:
        guest.object(f"xnat://{DICOM}/0001.dcm").exists()
    assert "refused the guest access" in str(caught.value)
    assert "found no credentials: set XNAT_USER and XNAT_PASS" in str(caught.value)
    guest.close()
