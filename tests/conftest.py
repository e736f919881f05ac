"""Registers the shared fixtures (``tests.support.fixtures``, ``tests.support.security``) for
every test."""

from tests.support.fixtures import (  # noqa: F401
    emulator,
    hostile_archive,
    hostile_emulator,
    isolated_home,
    login,
    make_emulator,
    mount,
    oracle,
    small_archive,
)
from tests.support.security import certificate  # noqa: F401
