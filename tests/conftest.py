"""Registers the shared fixtures (``tests.support.fixtures``) for every test."""

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
