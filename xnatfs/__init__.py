"""xnatfs: an XNAT archive as a read-only filesystem, and fast bulk downloads."""

__version__ = "0.1.0"
