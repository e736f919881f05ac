"""Text documents of any size: plain text that reads as text, JSON that parses.

A document is a short header naming the file, then filler repeated from a small per-process
pool (words for text, whitespace for JSON, which JSON allows after the value), sliced by
range like the random pool, so a large text file costs no memory either.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from functools import cache

from xnat_emulator.content import Content, mix64

TEXT_POOL_SIZE = 64 << 10
_WORDS = ("scan", "session", "subject", "project", "resource", "series", "slice", "volume",
          "voxel", "image", "header", "archive", "label", "protocol", "consent", "quality",
          "motion", "signal", "noise", "field", "echo", "repetition", "time", "contrast",
          "anatomy", "cortex", "region", "mask", "atlas", "template", "registration")


@cache
def text_pool() -> memoryview:
    """Lines of words, twice over, so any window of TEXT_POOL_SIZE is one slice."""
    rng = random.Random(0x54455854)
    lines, size = [], 0
    while size < TEXT_POOL_SIZE:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 11))).capitalize()
        lines.append(line + ".\n")
        size += len(lines[-1])
    text = "".join(lines).encode("ascii")[:TEXT_POOL_SIZE]
    text = text[:-1] + b"\n"
    return memoryview(text + text)


@cache
def blank_pool() -> memoryview:
    line = b" " * 63 + b"\n"
    return memoryview(line * (2 * TEXT_POOL_SIZE // len(line)))


class DocumentContent(Content):
    """``header`` (cut to the size if longer), then ``filler`` repeated from a seeded offset,
    then ``trailer`` (dropped if the header and trailer do not both fit)."""

    def __init__(self, seed: int, size: int, mtime: float, header: bytes,
                 filler: memoryview, trailer: bytes = b"") -> None:
        self.size = size
        self.mtime = mtime
        self.header = header[:size]
        self.trailer = trailer if len(header) + len(trailer) <= size else b""
        self.filler = filler
        self.period = len(filler) // 2
        start = mix64(seed) % self.period
        self.phase = (bytes(filler[start : start + 256]).find(b"\n") + 1 + start) % self.period
        """Where the filler starts: a line's start, so text reads as whole lines."""

    def chunks(self, offset: int, length: int) -> Iterator[memoryview | bytes]:
        end = min(self.size, offset + length)
        if offset < len(self.header) and offset < end:
            yield self.header[offset : min(end, len(self.header))]
            offset = len(self.header)
        tail = self.size - len(self.trailer)
        while offset < min(end, tail):
            at = (self.phase + offset - len(self.header)) % self.period
            piece = min(self.period, min(end, tail) - offset)
            yield self.filler[at : at + piece]
            offset += piece
        if offset < end:
            yield self.trailer[offset - tail : end - tail]


def text_content(name: str, seed: int, size: int, mtime: float) -> DocumentContent:
    header = f"{name}: synthetic text from the xnatfs XNAT emulator.\n"
    return DocumentContent(seed, size, mtime, header.encode("utf-8", "replace"), text_pool())


def json_content(name: str, seed: int, size: int, mtime: float,
                 fields: dict[str, object]) -> DocumentContent:
    """A JSON object (a BIDS-like sidecar of ``fields``), then blanks up to the size."""
    document = {**fields, "GeneratedBy": "xnatfs XNAT emulator", "Source": name}
    text = json.dumps(document, indent=2, ensure_ascii=True).encode() + b"\n"
    if len(text) > size:
        text = b"{}\n"
    return DocumentContent(seed, size, mtime, text, blank_pool())


def pdf_content(name: str, seed: int, size: int, mtime: float) -> DocumentContent:
    """A one-page PDF naming the file; the filler is blank space inside its page's content
    stream, so the cross-reference offsets after it are known without generating it."""
    title = name.encode("ascii", "replace").replace(b"\\", b"/")
    title = title.replace(b"(", b"[").replace(b")", b"]")[:80]
    text = b"BT /F1 16 Tf 72 760 Td (Synthetic document: " + title + b") Tj ET\n"
    for pad in range(4):  # blank lines at the very end get past a digit count that flips
        length = 0
        for _ in range(4):  # the stream's length and the xref offset are written in the file
            head, tail = _pdf_parts(text, pad, length)
            length, previous = size - len(head) - len(tail) + len(text), length
            if length == previous:
                break
        if length == previous >= len(text):  # the parts were built for this very length
            return DocumentContent(seed, size, mtime, head, blank_pool(), tail)
    return DocumentContent(seed, size, mtime, b"%PDF-1.4\n", blank_pool())  # too small


def _pdf_parts(text: bytes, pad: int, length: int) -> tuple[bytes, bytes]:
    """The bytes before and after the blank part of the page's stream (of ``length`` bytes,
    starting with ``text``), with ``pad`` blank lines at the end."""
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 5 0 R"
        b"/Resources<</Font<</F1 4 0 R>>>>>>",
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    offsets.append(len(out))
    head = out + b"5 0 obj\n<</Length %d>>\nstream\n" % length + text
    end_of_stream = len(head) - len(text) + length
    tail = b"\nendstream\nendobj\n"
    xref = end_of_stream + len(tail)
    tail += b"xref\n0 6\n0000000000 65535 f \n"
    tail += b"".join(b"%010d 00000 n \n" % at for at in offsets)
    tail += b"trailer\n<</Size 6/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % xref + b"\n" * pad
    return head, tail
