"""An XNAT server emulator: XNAT's REST API over real HTTP, for tests, benchmarks and demos.

It serves a synthetic archive (any size, contents generated on demand) or a folder on disk,
with XNAT's listing formats, identifier rules, authentication and quirks, plus knobs for
latency, bandwidth and injected faults. See ``xnatfs emulator --help``.
"""

from xnatfs.emulator.archive import Archive, File
from xnatfs.emulator.folder import load_folder
from xnatfs.emulator.knobs import EmulatorConfig
from xnatfs.emulator.log import Record, RequestLog
from xnatfs.emulator.server import Emulator
from xnatfs.emulator.synthetic import SyntheticSpec, synthetic_archive

__all__ = [
    "Archive",
    "Emulator",
    "EmulatorConfig",
    "File",
    "Record",
    "RequestLog",
    "SyntheticSpec",
    "load_folder",
    "synthetic_archive",
]
