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

from .content import Content, mix64

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
    """``header`` (cut to the size if longer), then ``filler`` repeated from a seeded offset."""

    def __init__(self, seed: int, size: int, mtime: float, header: bytes,
                 filler: memoryview) -> None:
        self.size = size
        self.mtime = mtime
        self.header = header[:size]
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
        while offset < end:
            at = (self.phase + offset - len(self.header)) % self.period
            piece = min(self.period, end - offset)
            yield self.filler[at : at + piece]
            offset += piece


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
