"""The plugin's settings: Snakefile ``storage:`` keywords and ``--storage-xnat-*`` flags.

Secrets are ``env_var`` settings: Snakemake then hands them to the jobs it spawns through the
environment (``SNAKEMAKE_STORAGE_XNAT_PASSWORD``), never on a command line other users can see
in ``ps``, and the dataclass never shows them in its ``repr``. Left unset, credentials come
from where every xnatfs command finds them: ``XNAT_USER``/``XNAT_PASS``, ``XNAT_JSESSION``,
the login stored by ``xnatfs login``, ``~/.netrc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snakemake_interface_storage_plugins.settings import StorageProviderSettingsBase


@dataclass
class StorageProviderSettings(StorageProviderSettingsBase):
    url: str | None = field(default=None, metadata={
        "help": "The XNAT server's base URL, e.g. https://xnat.example.org (default: "
                "$XNAT_URL, else the server of `xnatfs login`)."})
    user: str | None = field(default=None, repr=False, metadata={
        "help": "XNAT user or alias token (default: XNAT_USER, the stored login, ~/.netrc).",
        "env_var": True})
    password: str | None = field(default=None, repr=False, metadata={
        "help": "Password or alias secret (default: XNAT_PASS, the stored login, ~/.netrc).",
        "env_var": True})
    jsession: str | None = field(default=None, repr=False, metadata={
        "help": "A JSESSIONID from a browser login (SSO sites; default: XNAT_JSESSION).",
        "env_var": True})
    cache_dir: str | None = field(default=None, metadata={
        "help": "The chunk cache, shared with xnatfs mount (default: the user's cache "
                "folder)."})
    timeout: float | None = field(default=None, metadata={
        "help": "Seconds one request may take, retries included (default: 60).",
        "type": float})  # the annotation is a string here: Snakemake parses by this
