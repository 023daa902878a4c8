"""Integration tests against real engines on 127.0.0.1 (see README.md); not part of the package.

NOTE: a package on purpose. Without this file pytest imports `integration/conftest.py` as the
top-level module `conftest`, which shadows `tests/conftest.py` (`from conftest import ...` in tests/
then fails) once both folders are collected in one run. Import sibling modules as
`from integration.client import ...`.
"""
