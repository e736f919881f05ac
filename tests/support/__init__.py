"""What the tests share: emulator fixtures, the FUSE mount helper and the one tree oracle.

* ``tests.support.fixtures``: pytest fixtures (emulators, logins, mounts, the oracle, and the
  autouse ``isolated_home``), registered for the whole suite by ``tests/conftest.py``.
* ``tests.support.mount``: ``Mount`` (``xnatfs mount -f`` in a child process), ``unmount``,
  ``needs_fuse``, ``xnatfs(...)`` (the command line to completion), ``one_line(stderr)`` (the
  one ``xnatfs: ...`` line of a refusal), ``tree_of(folder)``.
* ``tests.support.oracle``: ``Oracle`` (what a client must show of an emulator's archive),
  ``archive_file`` and ``layout_path``.
* ``tests.support.security``: ``USER``/``PASSWORD`` (a user whose secrets tests hunt for),
  ``Secrets``, ``cmdlines()`` (every process's argv), the ``certificate`` fixture and
  ``tls_proxy`` (HTTPS in front of an emulator).

Importable as ``tests.support`` from the repository root: pytest puts the root on ``sys.path``
(``pythonpath`` in pyproject), and scripts that use it run as ``python -m scripts.NAME``.
"""
