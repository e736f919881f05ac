"""XNAT inside git-annex and DataLad: a read-only special remote and the datasets it serves.

* ``keys.py``: annex keys from XNAT's listings (size and MD5, no body) and ``xnat://`` URLs.
* ``git.py``: git and git-annex run as child processes, batch modes fed in one go.
* ``remote.py``: ``git-annex-remote-xnat``, the special remote (through ``Archive``).
* ``dataset.py``: the listing turned into a dataset, and a rerun into one commit of changes.
* ``cli.py``: ``xnatfs datalad URL PATH... -o DIR``.
"""
