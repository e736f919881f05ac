"""Headers of real imaging files: DICOM Part-10 and NIfTI-1, written by hand (stdlib only).

A synthetic image is a header followed by pixel bytes that the caller generates on demand,
so a header is all that is built per file and gigabytes still cost no memory. The header is
sized so that header + pixels fill exactly the size the archive's spec asks for: DICOM
absorbs the slack in a private padding element before the pixel data, NIfTI leaves it after
the last voxel (readers stop at the image's end).

DICOM files of one scan form one series that dcm2niix converts into one volume: shared
Study/Series/Frame-of-Reference UIDs, and per file an instance number with the matching
slice position. UIDs are ``2.25.<128-bit integer>`` (ISO/IEC 9834-8), hashed from the
file's place in the archive, so the same spec gives the same UIDs in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from dataclasses import dataclass
from functools import lru_cache

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLEMENTATION_CLASS_UID = "2.25.197015919426393862410232178034823466322"
PRIVATE_CREATOR = "XNATFS EMULATOR"
_LONG_VRS = {"OB", "OW", "OF", "SQ", "UT", "UN"}
"""VRs whose explicit-VR element has 2 reserved bytes and a 4-byte length."""
PIXEL_ELEMENT_HEADER = 12
"""(7FE0,0010) OW: tag, VR, reserved, 4-byte length."""
NIFTI_HEADER_SIZE = 352
"""348 bytes of header plus the 4-byte extension flag (no extensions)."""
SLICE_THICKNESS = 3.0
MAX_SIDE = 46340
"""Rows and columns at most this, so the pixel data's 32-bit length cannot overflow."""


@lru_cache(maxsize=4096)
def uid(*parts: object) -> str:
    """A DICOM UID derived from ``parts``: same parts, same UID, always 44 characters."""
    key = "\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass")
    number = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")
    return f"2.25.{10**38 + number}"  # 39 digits, no leading zero


@dataclass(frozen=True)
class SeriesInfo:
    """Where a DICOM file sits: who, which study (session), which series (scan), which slice."""

    study_key: str
    """Identifies the session (study) across processes, e.g. seed and experiment ID."""
    series_key: str
    """Identifies the scan (series)."""
    patient: str
    study_id: str
    series_number: int
    series_description: str
    date: str
    """``YYYY-MM-DD`` or empty."""
    instance: int


_PER_FILE = (0x00020003, 0x00080018, 0x00200013, 0x00200032, 0x00201041)
"""Elements that differ between the files of a series; all else is the series' template."""


def dicom_header(size: int, info: SeriesInfo, file_key: str) -> bytes:
    """Everything of a ``size``-byte DICOM file up to its pixel values.

    The pixel values (16-bit unsigned, little endian) fill the rest, up to one odd trailing
    byte when ``size`` is odd. Returns a shorter, pixel-less file's bytes when ``size`` is too
    small for a header: the spec's size always wins. Files of a series share a template, and
    their own values have fixed widths, so a header costs a copy and five small patches.
    """
    template, spots = _series_template(dataclasses.replace(info, instance=0), size)
    header = bytearray(template)
    for tag, value in _per_file_values(info, file_key).items():
        at = spots[tag]
        header[at : at + len(value)] = value
    return bytes(header[:size])


def _per_file_values(info: SeriesInfo, file_key: str) -> dict[int, bytes]:
    sop = uid_value(uid("sop", file_key))
    z = f"{(info.instance - 1) * SLICE_THICKNESS:.1f}".ljust(10).encode()
    return {0x00020003: sop, 0x00080018: sop,
            0x00200013: str(info.instance).ljust(12).encode(),  # IS: spaces do not count
            0x00200032: b"-120.0\\-120.0\\" + z, 0x00201041: z}


@lru_cache(maxsize=256)
def _series_template(info: SeriesInfo, size: int) -> tuple[bytes, dict[int, int]]:
    """The header of ``size``-byte files of a series, and where each per-file value goes."""
    blank = {tag: bytes(len(value)) for tag, value in _per_file_values(info, "").items()}
    # The matrix size changes values, never lengths, so one pass gives the header's length.
    fixed = len(_encode_part10(_dicom_elements(info, blank, 0, 0), blank, 0, 0)[0])
    room = size - fixed - PIXEL_ELEMENT_HEADER
    side = min(MAX_SIDE, math.isqrt(max(0, room) // 2))
    rows = min(MAX_SIDE, (room // 2) // side) if side else 0
    # under 4 GiB the rest is less than two rows; beyond, what does not fit follows the pixels
    padding = min(room - rows * side * 2, 4 * MAX_SIDE) if side else 0
    return _encode_part10(_dicom_elements(info, blank, rows, side), blank,
                          padding - padding % 2, rows * side * 2)


def _dicom_elements(info: SeriesInfo, own: dict[int, bytes], rows: int,
                    columns: int) -> list[tuple[int, str, bytes]]:
    """The data set before the padding and pixel data, in tag order."""
    date = info.date.replace("-", "") or "20230201"
    spacing = f"{240 / max(rows, columns, 1):.6f}"[:8]  # the same length for any matrix
    ds = text_value
    return [
        (0x00080008, "CS", ds("ORIGINAL\\PRIMARY\\M\\ND")),
        (0x00080016, "UI", uid_value(MR_IMAGE_STORAGE)),
        (0x00080018, "UI", own[0x00080018]),
        (0x00080020, "DA", ds(date)),
        (0x00080021, "DA", ds(date)),
        (0x00080022, "DA", ds(date)),
        (0x00080030, "TM", ds("093000")),
        (0x00080031, "TM", ds(f"{93000 + info.series_number * 100:06d}")),
        (0x00080032, "TM", ds(f"{93000 + info.series_number * 100:06d}")),
        (0x00080060, "CS", ds("MR")),
        (0x00080070, "LO", ds("xnatfs emulator")),
        (0x0008103E, "LO", ds(info.series_description[:64])),
        (0x00100010, "PN", ds(info.patient[:64])),
        (0x00100020, "LO", ds(info.patient[:64])),
        (0x00180020, "CS", ds("GR")),
        (0x00180023, "CS", ds("2D")),
        (0x00180050, "DS", ds(f"{SLICE_THICKNESS:g}")),
        (0x00180080, "DS", ds("2000")),
        (0x00180081, "DS", ds("30")),
        (0x00180087, "DS", ds("3")),
        (0x00180088, "DS", ds(f"{SLICE_THICKNESS:g}")),
        (0x00185100, "CS", ds("HFS")),
        (0x0020000D, "UI", uid_value(uid("study", info.study_key))),
        (0x0020000E, "UI", uid_value(uid("series", info.series_key))),
        (0x00200010, "SH", ds(info.study_id[:16])),
        (0x00200011, "IS", ds(str(info.series_number))),
        (0x00200012, "IS", ds("1")),
        (0x00200013, "IS", own[0x00200013]),
        (0x00200032, "DS", own[0x00200032]),
        (0x00200037, "DS", ds("1\\0\\0\\0\\1\\0")),
        (0x00200052, "UI", uid_value(uid("frame", info.study_key))),
        (0x00201041, "DS", own[0x00201041]),
        (0x00280002, "US", struct.pack("<H", 1)),
        (0x00280004, "CS", ds("MONOCHROME2")),
        (0x00280010, "US", struct.pack("<H", rows)),
        (0x00280011, "US", struct.pack("<H", columns)),
        (0x00280030, "DS", ds(f"{spacing}\\{spacing}")),
        (0x00280100, "US", struct.pack("<H", 16)),
        (0x00280101, "US", struct.pack("<H", 16)),
        (0x00280102, "US", struct.pack("<H", 15)),
        (0x00280103, "US", struct.pack("<H", 0)),
    ]


def _encode_part10(elements: list[tuple[int, str, bytes]], own: dict[int, bytes],
                   padding: int, pixel_bytes: int) -> tuple[bytes, dict[int, int]]:
    """The encoded header, and the offset of each per-file element's value in it."""
    meta = _file_meta(own[0x00020003])
    out = bytearray(bytes(128) + b"DICM")
    out += _element(0x00020000, "UL", struct.pack("<I", sum(len(_element(*m)) for m in meta)))
    spots: dict[int, int] = {}
    for tag, vr, value in [*meta, *elements, (0x00290010, "LO", text_value(PRIVATE_CREATOR)),
                           (0x00291000, "OB", bytes(padding))]:
        out += _element(tag, vr, value)
        if tag in _PER_FILE:
            spots[tag] = len(out) - len(value)
    out += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    return bytes(out), spots


def _file_meta(sop_value: bytes) -> list[tuple[int, str, bytes]]:
    """Group 0002 after its length: MR Image Storage, explicit VR little endian."""
    return [
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", uid_value(MR_IMAGE_STORAGE)),
        (0x00020003, "UI", sop_value),
        (0x00020010, "UI", uid_value(EXPLICIT_VR_LITTLE_ENDIAN)),
        (0x00020012, "UI", uid_value(IMPLEMENTATION_CLASS_UID)),
        (0x00020013, "SH", text_value("XNATFS_EMU")),
    ]


def part10(elements: list[tuple[int, str, bytes]], sop_uid: str, pixels: bytes) -> bytes:
    """A whole DICOM file: preamble, file meta, ``elements`` (in tag order, SOP Instance UID
    among them) and ``pixels`` as (7FE0,0010) OW. For images whose every value is given."""
    meta = _file_meta(uid_value(sop_uid))
    out = bytearray(bytes(128) + b"DICM")
    out += _element(0x00020000, "UL", struct.pack("<I", sum(len(_element(*m)) for m in meta)))
    for tag, vr, value in [*meta, *elements, (0x7FE00010, "OW", pixels)]:
        out += _element(tag, vr, value)
    return bytes(out)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    assert len(value) % 2 == 0, (hex(tag), value)
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def text_value(value: str) -> bytes:
    """A text value padded with a space to even length; non-ASCII becomes '?'."""
    raw = value.encode("ascii", "replace")
    return raw + b" " * (len(raw) % 2)


def uid_value(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


# -- NIfTI-1 -----------------------------------------------------------------------------------

NIFTI_INT16 = 4


def volume_shape(voxels: int) -> tuple[int, ...]:
    """A plausible shape for at most ``voxels`` voxels: a near-cube volume up to 256 on a
    side, then a series of 256-cubed volumes over time (like a functional run)."""
    side = min(256, _icbrt(voxels))
    if side == 0:
        return (0, 0, 0)
    slices = voxels // (side * side)
    if slices <= 256:
        return (side, side, slices)
    return (256, 256, 256, min(voxels // (1 << 24), 0x7FFF))


def _icbrt(n: int) -> int:
    root = round(n ** (1 / 3)) if n > 0 else 0
    while root**3 > n:
        root -= 1
    while (root + 1) ** 3 <= n:
        root += 1
    return root


def nifti_header(data_bytes: int, description: str = "xnatfs emulator") -> bytes:
    """The 352-byte header of a NIfTI-1 single file whose voxel bytes (int16) follow it,
    ``data_bytes`` of them; a shape is chosen to fit, any rest is ignored by readers."""
    shape = volume_shape(max(0, data_bytes) // 2)
    header = bytearray(NIFTI_HEADER_SIZE)
    struct.pack_into("<i", header, 0, 348)
    header[38] = ord("r")
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hhh", header, 70, NIFTI_INT16, 16, 0)
    # pixdim: qfac, then 3.75 x 3.75 x 4 mm voxels and a 2 s repetition time
    struct.pack_into("<8f", header, 76, 1.0, 3.75, 3.75, 4.0, 2.0, 0.0, 0.0, 0.0)
    struct.pack_into("<fff", header, 108, float(NIFTI_HEADER_SIZE), 1.0, 0.0)
    header[123] = 2 | 8  # millimetres, seconds
    header[148:148 + 80] = description.encode("ascii", "replace")[:79].ljust(80, b"\0")
    struct.pack_into("<hh", header, 252, 1, 1)  # qform and sform: scanner coordinates
    struct.pack_into("<6f", header, 256, 0.0, 0.0, 0.0, -120.0, -120.0, -60.0)
    struct.pack_into("<12f", header, 280, 3.75, 0, 0, -120.0, 0, 3.75, 0, -120.0,
                     0, 0, 4.0, -60.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def nifti_image_header(shape: tuple[int, ...], affine: tuple[tuple[float, ...], ...],
                       tr: float = 0.0, description: str = "xnatfs emulator") -> bytes:
    """The 352-byte header of an int16 NIfTI-1 single file of an axis-aligned image.

    ``affine`` is the 3x4 voxel-to-RAS matrix (mm), diagonal in its first three columns, as
    for images acquired along the scanner's axes; it goes into the sform and, as a 180-degree
    rotation and qfac, into the qform, so readers that prefer either agree. ``tr`` (seconds)
    is pixdim[4] of a 4D series, which BIDS tools check against the sidecar.
    """
    scales = [affine[i][i] for i in range(3)]
    assert all(affine[i][j] == 0 for i in range(3) for j in range(3) if i != j), affine
    qfac = -1.0 if scales[0] * scales[1] * scales[2] < 0 else 1.0
    signs = tuple(1 if s > 0 else -1 for s in (scales[0], scales[1], scales[2] * qfac))
    # a proper rotation with only +-1 on the diagonal is the identity or a half turn
    quatern = {(1, 1, 1): (0.0, 0.0, 0.0), (1, -1, -1): (1.0, 0.0, 0.0),
               (-1, 1, -1): (0.0, 1.0, 0.0), (-1, -1, 1): (0.0, 0.0, 1.0)}[signs]
    header = bytearray(NIFTI_HEADER_SIZE)
    struct.pack_into("<i", header, 0, 348)
    header[38] = ord("r")
    struct.pack_into("<8h", header, 40, len(shape), *shape, *[1] * (7 - len(shape)))
    struct.pack_into("<hhh", header, 70, NIFTI_INT16, 16, 0)
    struct.pack_into("<8f", header, 76, qfac, *map(abs, scales), tr, 0.0, 0.0, 0.0)
    struct.pack_into("<fff", header, 108, float(NIFTI_HEADER_SIZE), 1.0, 0.0)
    header[123] = 2 | 8  # millimetres, seconds
    header[148:148 + 80] = description.encode("ascii", "replace")[:79].ljust(80, b"\0")
    struct.pack_into("<hh", header, 252, 1, 1)  # qform and sform: scanner coordinates
    struct.pack_into("<6f", header, 256, *quatern, *(row[3] for row in affine))
    struct.pack_into("<12f", header, 280, *(value for row in affine for value in row))
    header[344:348] = b"n+1\0"
    return bytes(header)
