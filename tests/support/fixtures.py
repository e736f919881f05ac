"""The suite's fixtures: real XNAT-speaking servers on loopback, real mounts, no mocks.

* ``isolated_home`` (autouse): XDG_CACHE_HOME, XDG_CONFIG_HOME and XDG_STATE_HOME point into
  a temporary folder for every test and every process it starts, so no test reads or fills
  the developer's own ``~/.cache/xnatfs`` or configuration.

* ``small_archive`` / ``hostile_archive``: session-wide synthetic archives (read-only; build
  your own with ``synthetic_archive`` if a test must change one).
* ``make_emulator(archive=None, users=None, **config)``: a started ``Emulator``, stopped at
  teardown; ``config`` are ``EmulatorConfig`` fields.
* ``emulator`` / ``hostile_emulator``: fresh servers on those archives (starting one costs
  about a millisecond, so every test gets its own log and knobs).
* ``USERS``: alice belongs to the hostile set's private and protected projects, bob does not.
* ``login(emulator, user="alice")`` (a fixture returning a function): a ``requests.Session``
  with Basic credentials (none for ``user=None``) whose relative URLs (``"/data/projects"``)
  go to the emulator.
* ``mount(emulator, *args, cache_dir=None, user="alice", pauses=QUICK_PAUSES, probe=None)``:
  a live ``xnatfs mount -f`` (``tests.support.mount.Mount``), unmounted at teardown; it pauses
  a tenth of the product's time between the tries of a request (``pauses=None``: the
  product's own); ``probe``: seconds between its tries of a server that is away.
* ``oracle(emulator, user="alice")``: ``Oracle.of`` (``tests.support.oracle``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support.mount import QUICK_PAUSES, Mount
from tests.support.oracle import PASSWORD, Oracle
from xnat_emulator import Archive, Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive

USERS = PASSWORD
SMALL = SyntheticSpec(projects=2, subjects=2, sessions=2, scans=2, dicoms=3, dicom_size=2048,
                      niftis=1, nifti_size=300_000, assessors=1, reconstructions=1)


class Client(requests.Session):
    """A requests session bound to one emulator: ``client.get("/data/projects")``."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        return super().request(method, url if "://" in url else self.base + url, *args, **kwargs)  # type: ignore[arg-type]


def _login(emulator: Emulator, user: str | None = "alice") -> Client:
    client = Client(emulator.url)
    if user is not None:
        client.auth = (user, USERS[user])
    return client


@pytest.fixture
def login() -> Callable[..., Client]:
    return _login


@pytest.fixture(scope="session")
def small_archive() -> Archive:
    return synthetic_archive(SMALL)


@pytest.fixture(scope="session")
def hostile_archive() -> Archive:
    return synthetic_archive(SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1,
                                           dicoms=2, dicom_size=1024, nifti_size=4096,
                                           hostile=True, members=("alice",)))


@pytest.fixture
def make_emulator(small_archive: Archive) -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def make(archive: Archive | None = None, users: dict[str, str] | None = None,
             **config: object) -> Emulator:
        emulator = Emulator(archive or small_archive, EmulatorConfig(**config),  # type: ignore[arg-type]
                            USERS if users is None else users)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def hostile_emulator(make_emulator: Callable[..., Emulator], hostile_archive: Archive) -> Emulator:
    return make_emulator(hostile_archive)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test, and every process it starts, gets its own cache, config and state folders."""
    home = tmp_path_factory.mktemp("home")
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        (home / name.lower()).mkdir()
        monkeypatch.setenv(name, str(home / name.lower()))
    return home


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """``mount(emulator, *args, cache_dir=None)``: a live mount, unmounted at teardown."""
    started: list[Mount] = []

    def make(emulator: Emulator, *args: str, cache_dir: str | None = None,
             user: str = "alice", pauses: tuple[float, ...] | None = QUICK_PAUSES,
             probe: float | None = None) -> Mount:
        point = tmp_path / f"mnt{len(started)}"
        point.mkdir()
        m = Mount(emulator.url, str(point), cache_dir or str(tmp_path / "cache"), args, user,
                  pauses, probe)
        started.append(m)
        return m.start()

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def oracle() -> Callable[..., Oracle]:
    def make(emulator: Emulator, user: str = "alice") -> Oracle:
        return Oracle.of(emulator, user=user)

    return make
