"""MR series with explicit geometry and timing, as a scanner writes them and dcm2niix reads them.

Unlike the size-driven images of ``imaging.dicom_header``, every value here is stated: matrix,
voxel size, slice positions, repetition and echo times, flip angle, and for a functional run
the volumes. A series is one DICOM file per slice per volume; the slices of every volume sit
at the same positions, and a volume's files share an AcquisitionNumber (= the volume number)
and an AcquisitionTime one TR after the previous volume's, which is how dcm2niix tells a 4D
run from a stack of slices. The same series also gives the NIfTI volume and JSON sidecar
dcm2niix makes of it, so an archive can hold what a conversion pipeline would have left.

Pixel values are a smooth ellipsoid phantom (a little brighter every volume): deterministic,
cheap, and recognisably an image in a viewer.
"""

from __future__ import annotations

import gzip
import math
import struct
from array import array
from dataclasses import dataclass
from functools import lru_cache

from xnat_emulator.imaging import MR_IMAGE_STORAGE, nifti_image_header, part10, text_value, uid
from xnat_emulator.imaging import uid_value as uid_bytes

MANUFACTURER = "Philips"
"""A vendor dcm2niix needs no private tags from (Siemens without CSA headers makes it guess
multiband factors and slice timing)."""
MODEL = "Ingenia"
SOFTWARE = "5.7.1"
FIELD_STRENGTH = 3.0
DCM2NIIX_VERSION = "v1.0.20240202"
"""The converter the emulator's NIfTI files and sidecars pretend to come from."""


@dataclass(frozen=True)
class Study:
    """One imaging session: who, when, and the key its UIDs are derived from."""

    key: str
    patient: str
    study_id: str
    date: str
    """``YYYY-MM-DD``."""


@dataclass(frozen=True)
class Series:
    """One MR acquisition. Lengths in mm, times in ms (as DICOM states them)."""

    number: int
    description: str
    slices: int
    volumes: int = 1
    rows: int = 64
    columns: int = 64
    pixel_mm: float = 1.0
    slice_mm: float = 1.0
    tr_ms: float = 2000.0
    te_ms: float = 30.0
    flip: float = 90.0
    sequence: str = "GR"
    """ScanningSequence: GR for structural, EP for echo-planar BOLD."""
    acquisition: str = "2D"

    @property
    def files(self) -> int:
        return self.slices * self.volumes

    @property
    def shape(self) -> tuple[int, ...]:
        """The NIfTI shape dcm2niix makes of it: columns, rows, slices[, volumes]."""
        base = (self.columns, self.rows, self.slices)
        return (*base, self.volumes) if self.volumes > 1 else base

    def origin(self) -> tuple[float, float, float]:
        """ImagePositionPatient (LPS) of the first voxel of the first slice: centred."""
        return (-self.columns * self.pixel_mm / 2, -self.rows * self.pixel_mm / 2,
                -(self.slices - 1) * self.slice_mm / 2)

    def start_seconds(self) -> float:
        """Seconds after midnight the series starts: 09:30, five minutes per series number."""
        return 9.5 * 3600 + 300 * self.number


# -- DICOM -------------------------------------------------------------------------------------


def dicom_file(study: Study, series: Series, index: int) -> bytes:
    """File ``index`` (0-based; slice-fastest, then volume) of ``series`` in ``study``."""
    volume, slice_ = divmod(index, series.slices)
    x0, y0, z0 = series.origin()
    z = z0 + slice_ * series.slice_mm
    when = _tm(series.start_seconds() + volume * series.tr_ms / 1000)
    sop = uid("bids-sop", study.key, series.number, index)
    date = study.date.replace("-", "")
    ds = text_value
    elements = [
        (0x00080008, "CS", ds("ORIGINAL\\PRIMARY\\M\\ND")),
        (0x00080016, "UI", uid_bytes(MR_IMAGE_STORAGE)),
        (0x00080018, "UI", uid_bytes(sop)),
        (0x00080020, "DA", ds(date)),
        (0x00080021, "DA", ds(date)),
        (0x00080022, "DA", ds(date)),
        (0x00080023, "DA", ds(date)),
        (0x00080030, "TM", ds("093000.000000")),
        (0x00080031, "TM", ds(_tm(series.start_seconds()))),
        (0x00080032, "TM", ds(when)),
        (0x00080033, "TM", ds(when)),
        (0x00080060, "CS", ds("MR")),
        (0x00080070, "LO", ds(MANUFACTURER)),
        (0x00081030, "LO", ds("BIDS demo study")),
        (0x0008103E, "LO", ds(series.description)),
        (0x00081090, "LO", ds(MODEL)),
        (0x00100010, "PN", ds(study.patient)),
        (0x00100020, "LO", ds(study.patient)),
        (0x00100040, "CS", ds("O")),
        (0x00180020, "CS", ds(series.sequence)),
        (0x00180021, "CS", ds("SK\\SS" if series.sequence == "EP" else "SK\\SP")),
        (0x00180023, "CS", ds(series.acquisition)),
        (0x00180050, "DS", ds(_ds(series.slice_mm))),
        (0x00180080, "DS", ds(_ds(series.tr_ms))),
        (0x00180081, "DS", ds(_ds(series.te_ms))),
        (0x00180087, "DS", ds(_ds(FIELD_STRENGTH))),
        (0x00180088, "DS", ds(_ds(series.slice_mm))),
        (0x00181020, "LO", ds(SOFTWARE)),
        (0x00181030, "LO", ds(series.description)),
        (0x00181314, "DS", ds(_ds(series.flip))),
        (0x00185100, "CS", ds("HFS")),
        (0x0020000D, "UI", uid_bytes(uid("bids-study", study.key))),
        (0x0020000E, "UI", uid_bytes(uid("bids-series", study.key, series.number))),
        (0x00200010, "SH", ds(study.study_id[:16])),
        (0x00200011, "IS", ds(str(series.number))),
        (0x00200012, "IS", ds(str(volume + 1))),
        (0x00200013, "IS", ds(str(index + 1))),
        (0x00200032, "DS", ds("\\".join(map(_ds, (x0, y0, z))))),
        (0x00200037, "DS", ds("1\\0\\0\\0\\1\\0")),
        (0x00200052, "UI", uid_bytes(uid("bids-frame", study.key))),
        (0x00200100, "IS", ds(str(volume + 1))),
        (0x00200105, "IS", ds(str(series.volumes))),
        (0x00201041, "DS", ds(_ds(z))),
        (0x00280002, "US", struct.pack("<H", 1)),
        (0x00280004, "CS", ds("MONOCHROME2")),
        (0x00280010, "US", struct.pack("<H", series.rows)),
        (0x00280011, "US", struct.pack("<H", series.columns)),
        (0x00280030, "DS", ds(f"{_ds(series.pixel_mm)}\\{_ds(series.pixel_mm)}")),
        (0x00280100, "US", struct.pack("<H", 16)),
        (0x00280101, "US", struct.pack("<H", 12)),
        (0x00280102, "US", struct.pack("<H", 11)),
        (0x00280103, "US", struct.pack("<H", 0)),
    ]
    return part10(elements, sop, _pixels(series.rows, series.columns, series.slices, slice_,
                                         volume))


def _ds(value: float) -> str:
    """A Decimal String: ``2000``, ``3.75``, ``-120``."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _tm(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}{int(minutes):02d}{secs:09.6f}"


@lru_cache(maxsize=256)
def _phantom(rows: int, columns: int, slices: int, slice_: int) -> tuple[int, ...]:
    """One slice of an ellipsoid: bright in the middle, fading to a dim background."""
    values = []
    dz = ((slice_ + 0.5) / slices - 0.5) * 2
    for r in range(rows):
        dy = ((r + 0.5) / rows - 0.5) * 2.4
        for c in range(columns):
            dx = ((c + 0.5) / columns - 0.5) * 2.2
            inside = 1 - (dx * dx + dy * dy + dz * dz)
            values.append(int(60 + inside * (1800 + 200 * math.cos(9 * dx))) if inside > 0
                          else 40 + (r * 7 + c * 13) % 23)
    return tuple(values)


def _pixels(rows: int, columns: int, slices: int, slice_: int, volume: int) -> bytes:
    gain = 1 + 0.01 * (volume % 4)  # a slow rise and fall over the run
    return array("H", [int(v * gain) for v in _phantom(rows, columns, slices, slice_)]).tobytes()


# -- what dcm2niix makes of it -----------------------------------------------------------------


def nifti_gz(series: Series, description: str = "") -> bytes:
    """The gzipped NIfTI-1 volume (int16) of ``series`` as dcm2niix writes it: rows flipped
    (so the y axis runs forward), 3D acquisitions also columns (so x runs right, as dcm2niix
    reorients them), pixdim[4] the TR in seconds; gzip without a timestamp so the same
    series always gives the same bytes."""
    x0, y0, z0 = series.origin()
    p, s = series.pixel_mm, series.slice_mm
    flip_x = series.acquisition == "3D"
    x_axis = (p, 0.0, 0.0, -x0 - (series.columns - 1) * p) if flip_x else (-p, 0.0, 0.0, -x0)
    # LPS to RAS: negate x and y
    affine = (x_axis, (0.0, p, 0.0, -y0 - (series.rows - 1) * p), (0.0, 0.0, s, z0))
    header = nifti_image_header(series.shape, affine, series.tr_ms / 1000,
                                description or series.description)
    body = bytearray()
    width = 2 * series.columns
    for volume in range(series.volumes):
        for slice_ in range(series.slices):
            plane = _pixels(series.rows, series.columns, series.slices, slice_, volume)
            for r in reversed(range(series.rows)):
                row = plane[r * width:(r + 1) * width]
                body += _reversed_row(row) if flip_x else row
    return gzip.compress(header + bytes(body), compresslevel=6, mtime=0)


def _reversed_row(row: bytes) -> bytes:
    values = array("H", row)
    values.reverse()
    return values.tobytes()


def sidecar(series: Series, **extra: object) -> dict[str, object]:
    """The JSON sidecar dcm2niix writes for ``series``: its keys, in its order, in seconds."""
    fields: dict[str, object] = {
        "Modality": "MR",
        "MagneticFieldStrength": _number(FIELD_STRENGTH),
        "Manufacturer": MANUFACTURER,
        "ManufacturersModelName": MODEL,
        "PatientPosition": "HFS",
        "SoftwareVersions": SOFTWARE,
        "MRAcquisitionType": series.acquisition,
        "StudyDescription": "BIDS demo study",
        "SeriesDescription": series.description,
        "ProtocolName": series.description,
        "ScanningSequence": series.sequence,
        "SequenceVariant": "SK\\SS" if series.sequence == "EP" else "SK\\SP",
        "PulseSequenceType": ("Gradient Echo EPI" if series.sequence == "EP"
                              else "Spoiled Gradient Echo"),
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MAGNITUDE"],
        "NonlinearGradientCorrection": False,
        "SeriesNumber": series.number,
        "AcquisitionTime": _clock(series.start_seconds()),
        "AcquisitionNumber": 1,
        "SliceThickness": _number(series.slice_mm),
        "SpacingBetweenSlices": _number(series.slice_mm),
        "EchoTime": _number(series.te_ms / 1000),
        "RepetitionTime": _number(series.tr_ms / 1000),
        **({} if series.sequence == "EP" else {"SpoilingState": True}),
        "FlipAngle": _number(series.flip),
        "ReconMatrixPE": series.rows,
        "ImageOrientationPatientDICOM": [1, 0, 0, 0, 1, 0],
        "ConversionSoftware": "dcm2niix",
        "ConversionSoftwareVersion": DCM2NIIX_VERSION,
    }
    fields.update(extra)
    return fields


def _number(value: float) -> float | int:
    """dcm2niix prints whole numbers without a fraction (``3``, not ``3.0``)."""
    return int(value) if value == int(value) else round(value, 6)


def _clock(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"
