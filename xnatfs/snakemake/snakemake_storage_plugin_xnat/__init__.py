"""``snakemake-storage-plugin-xnat``: XNAT files as Snakemake inputs, read-only.

Installed with xnatfs as the module ``snakemake_storage_plugin_xnat`` (Snakemake finds storage
plugins by that name prefix). Queries are ``xnat://`` tree paths, the URLs the git-annex
remote uses. Snakemake asks for existence, modification time and size file by file; here one
listing of a resource answers all of its files (``inventory``), so a workflow over a session
costs the session's listings plus one download per file it reads. Downloads go through the
mount's reader: MD5-checked, into the shared chunk cache, renamed into place only when whole.

* ``settings.py``: ``url``, ``user``, ``password``, ``jsession``, ``cache_dir``, ``timeout``.
* ``storage.py``: the provider (one logged-in archive per server) and the storage object.
"""

from .settings import StorageProviderSettings
from .storage import StorageObject, StorageProvider

__all__ = ["StorageObject", "StorageProvider", "StorageProviderSettings"]
