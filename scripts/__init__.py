"""Benchmarks, the soak and set-up; a package so that ``python -m scripts.NAME`` run from the
repository root can import the tests' helpers (``tests.support``)."""
