"""``ZipStream``: entries read off a stream that cannot seek, as XNAT and other writers make
them (sizes in the header, or a data descriptor after the bytes; Zip64), and what breaks."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnatfs.errors import IntegrityError
from xnatfs.reader.zipstream import Buffered, EntryCorrupt, ZipFormatError, ZipStream

FILES = {"S/scans/1-T1/resources/DICOM/files/a.dcm": b"a" * 1000,
         "S/scans/1-T1/resources/DICOM/files/sub/b.dcm": b"\x00PK\x07\x08" * 300,
         "S/scans/1-T1/resources/DICOM/files/empty": b""}


class _Pipe(io.RawIOBase):
    """A sink that cannot seek or tell: zipfile then writes data descriptors."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def make_zip(*, seekable: bool, zip64: bool = False) -> bytes:
    sink: io.BytesIO | _Pipe = io.BytesIO() if seekable else _Pipe()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for name, data in FILES.items():
            info = zipfile.ZipInfo(name)
            info.file_size = len(data)
            with archive.open(info, "w", force_zip64=zip64) as out:
                out.write(data)
    return bytes(sink.getvalue() if isinstance(sink, io.BytesIO) else sink.data)


def reader(data: bytes) -> Callable[[int], bytes]:
    buffer = io.BytesIO(data)
    return buffer.read


def read_all(data: bytes) -> dict[str, bytes]:
    stream = ZipStream(reader(data))
    got = {}
    while (entry := stream.next_entry()) is not None:
        size = entry.size if entry.size is not None else len(FILES[entry.name])
        got[entry.name] = b"".join(stream.data(size))
        stream.finish()
    return got


@pytest.mark.parametrize(("seekable", "zip64"), [(True, False), (False, False), (False, True),
                                                 (True, True)])
def test_every_entry_comes_with_its_bytes(seekable: bool, zip64: bool) -> None:
    assert read_all(make_zip(seekable=seekable, zip64=zip64)) == FILES


def test_a_wrong_crc_spoils_that_entry_only() -> None:
    data = bytearray(make_zip(seekable=True))
    at = data.index(b"a" * 1000)
    data[at] ^= 0xFF
    stream = ZipStream(reader(bytes(data)))
    entry = stream.next_entry()
    assert entry is not None and entry.size == 1000
    b"".join(stream.data(1000))
    with pytest.raises(EntryCorrupt):
        stream.finish()
    assert stream.next_entry() is not None  # the stream goes on


def test_a_cut_stream_is_an_integrity_error_not_a_broken_zip() -> None:
    data = make_zip(seekable=False)
    for cut in (10, 500, 2000, data.index(b"PK\x01\x02")):
        with pytest.raises(IntegrityError) as caught:
            read_all(data[:cut])
        assert not isinstance(caught.value, ZipFormatError)
    # cut inside the central directory: every entry has come and been checked already
    assert read_all(data[:data.index(b"PK\x01\x02") + 10]) == FILES


@pytest.mark.parametrize("body", [b"", b"<html>login</html>", b"PK"])
def test_not_a_zip(body: bytes) -> None:
    with pytest.raises(ZipFormatError):
        ZipStream(reader(body)).next_entry()


def test_a_wrong_expected_size_is_caught_by_the_descriptor() -> None:
    stream = ZipStream(reader(make_zip(seekable=False)))
    assert stream.next_entry() is not None
    b"".join(stream.data(999))
    with pytest.raises(ZipFormatError):
        stream.finish()


def test_deflated_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x", b"x" * 100)
    with pytest.raises(ZipFormatError, match="method 8"):
        ZipStream(reader(buffer.getvalue())).next_entry()


def test_header_fields() -> None:
    data = make_zip(seekable=False)
    (sig,) = struct.unpack_from("<I", data)
    assert sig == 0x04034B50
    entry = ZipStream(reader(data)).next_entry()
    assert entry is not None and entry.descriptor and entry.size is None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(1, 700), max_size=30),
       asks=st.lists(st.integers(0, 900), min_size=1, max_size=40))
def test_buffered_reads_give_exact_pieces_whatever_each_receive_brings(data, cuts, asks):
    pieces = iter(cuts)
    at = 0

    def read1(most: int) -> bytes:
        nonlocal at
        n = min(most, next(pieces, most))  # a receive brings any amount up to what is asked
        chunk, at = data[at:at + n], at + n
        return chunk

    buffered, got = Buffered(read1), b""
    for n in asks:
        piece = buffered.read(n)
        assert len(piece) == n or len(got) + len(piece) == len(data)  # short only at the end
        got += piece
    assert got == data[:len(got)]


def test_a_zip_read_through_a_buffer_of_small_receives():
    raw = make_zip(seekable=False)
    at = 0

    def read1(most: int) -> bytes:
        nonlocal at
        chunk, at = raw[at:at + min(most, 7)], at + min(most, 7)
        return chunk

    stream = ZipStream(Buffered(read1).read)
    names = []
    while (entry := stream.next_entry()) is not None:
        names.append(entry.name)
        b"".join(stream.data(len(FILES[entry.name])))
        stream.finish()
    assert names == list(FILES)
