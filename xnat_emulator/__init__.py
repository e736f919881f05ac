"""An XNAT server emulator: XNAT's REST API over real HTTP, for tests, benchmarks and demos.

It serves a synthetic archive (any size, contents generated on demand) or a folder on disk,
with XNAT's listing formats, identifier rules, authentication and quirks, plus knobs for
latency, bandwidth and injected faults. See ``python -m xnat_emulator --help``.

A package of its own beside ``xnatfs``, importing nothing from it, so the client is tested
against a server that does not share its code.
"""

from xnat_emulator.archive import Archive, File
from xnat_emulator.demo import DEMO_SPEC
from xnat_emulator.folder import load_folder
from xnat_emulator.knobs import EmulatorConfig
from xnat_emulator.log import Record, RequestLog
from xnat_emulator.server import Emulator
from xnat_emulator.synthetic import SyntheticSpec, synthetic_archive
from xnat_emulator.values import BadValue

__all__ = [
    "DEMO_SPEC",
    "Archive",
    "BadValue",
    "Emulator",
    "EmulatorConfig",
    "File",
    "Record",
    "RequestLog",
    "SyntheticSpec",
    "load_folder",
    "synthetic_archive",
]
