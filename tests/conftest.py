"""Registers the shared fixtures (``tests.support.fixtures``, ``tests.support.security``) for
every test."""

import signal

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

# A suite started in the background by a script (`cmd &` in a non-interactive shell) inherits an
# ignored SIGINT, and so would every child it starts: Ctrl-C tests would find the command deaf to
# it, as a background job rightly is. A caught signal is reset to the default on exec, so the
# children see Ctrl-C as they do at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
