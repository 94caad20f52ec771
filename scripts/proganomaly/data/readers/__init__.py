"""Slide readers behind the one `Slide` interface, and the choice among them by what the file is.

Each reader module gives NAME, FORMATS (the formats tested with it), ``claims(head, vendor)`` and an opener; the
first reader in READERS that claims a file opens it. ``vendor`` is OpenSlide's format detection, so a TIFF that only
OpenSlide reads correctly (NDPI, Philips, Ventana, …) goes to OpenSlide, while SVS and generic TIFF keep the direct
tifffile path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import openslide_reader, tifffile_reader
from .base import Slide, SlideError


@dataclass(frozen=True)
class Reader:
    name: str
    formats: tuple[str, ...]
    claims: Callable[[bytes, str | None], bool]
    open: Callable[..., Slide]


READERS = (
    Reader(tifffile_reader.NAME, tifffile_reader.FORMATS, tifffile_reader.claims, tifffile_reader.open_tiff),
    Reader(openslide_reader.NAME, openslide_reader.FORMATS, openslide_reader.claims, openslide_reader.open_openslide),
)
SUPPORTED = ", ".join(f for reader in READERS for f in reader.formats)


def reader_for(path: Path, head: bytes) -> Reader | None:
    """The reader that opens `path` (whose first bytes are `head`), or None when none does."""
    vendor = openslide_reader.detect_vendor(path)
    return next((reader for reader in READERS if reader.claims(head, vendor)), None)


__all__ = ["READERS", "SUPPORTED", "Reader", "Slide", "SlideError", "reader_for"]
