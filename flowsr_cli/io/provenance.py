"""flowsr's provenance mark: a small JSON object that every file flowsr writes carries in its own metadata.

The mark tells flowsr's earlier outputs apart from the user's files: only a marked file is ever taken as
an earlier output (skipped as an input, replaced by ``--overwrite``); an unmarked file is never replaced.
The JSON object holds flowsr's version under the key ``"flowsr"`` and the settings of the run that change
pixels (:class:`RunSettings`: ``{"flowsr": "0.1.0", "model": "linf", "temperature": 0.8, ...}``, with the model's
default temperature beside the one used), so a rerun tells an output made with the same settings (done) from one
made with others. It is written even with
``--strip-metadata``: it describes flowsr's own run, not the input's metadata.

Where it is stored:

* PNG (8 and 16 bits): a ``tEXt`` chunk with the keyword ``flowsr``, before the image data;
* JPEG: a comment (COM) segment holding the JSON;
* WebP: an XMP chunk, and TIFF (8 and 16 bits): the XMP tag (700); in both an XMP packet whose
  ``flowsr:provenance`` attribute holds the JSON;
* BMP: nowhere, the format has no place for it. So BMP outputs are never replaced by ``--overwrite``
  (delete them to redo them), and a BMP named like another input's output is taken as that output by
  its name alone (skipped as an input, never replaced).

Reading a mark imports no imaging library: a few bounded header reads that never raise.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import BinaryIO, Protocol

from flowsr_cli import __version__

MARK_KEY = "flowsr"
XMP_TIFF_TAG = 700
_XMP_NAMESPACE = "urn:flowsr:provenance:1/"
_XMP_ATTRIBUTE = re.compile(rb'flowsr:provenance="([^"]*)"')
_MAX_MARK_BYTES = 65_536
_MAX_STEPS = 256  # chunks, segments or tags looked at before giving up
_MAX_SHOWN = 40  # characters of a recorded value shown in a message (a mark is untrusted input)
DEFAULT_TEMPERATURE = 0.5
"""The Gaussian prior's temperature when neither the user nor the model's network gives one."""
DEFAULT_SEED = 0
"""The Gaussian prior's seed when none is given."""


def mark_json(settings: Mapping[str, object] | None = None) -> str:
    """The mark's text: ``{"flowsr": VERSION}`` plus the run's ``settings`` (ASCII JSON)."""
    return json.dumps({MARK_KEY: __version__, **(settings or {})}, separators=(",", ":"))


class MarkedRun(Protocol):
    """The settings of a run as its outputs' marks record them and its ``--json`` lines report them:
    :class:`RunSettings` for `upscale`, ``RescaleSettings`` (:mod:`flowsr_cli.io.rescale_mark`) for `rescale`."""

    @property
    def seed(self) -> int: ...

    @property
    def temperature(self) -> float | None: ...

    @property
    def consistency(self) -> str | None: ...

    def mark(self, sample: int | None = None) -> dict[str, object]:
        """The settings an output of the run records (``sample``: its number among several samples)."""
        ...

    def differences(self, mark: Mapping[str, object], sample: int | None = None) -> list[str] | None:
        """How an earlier output's ``mark`` differs from what this run would write (empty: the same; None: the
        mark records no settings)."""
        ...


@dataclass(frozen=True)
class RunSettings:
    """The settings of an ``upscale`` run that change its pixels, as its outputs' marks record them: the model
    as the user named it (and its file's sha256 when known), the size request (``x3.5``, ``w1920``), the prior
    asked for (None: the model's default), the Gaussian prior's temperature and seed, and whether the output is
    back-projected onto the input (``consistency`` resolved for the model: ``on`` or ``off``); each output adds
    its sample number (None when the run writes one output per input). The model's default temperature is
    recorded too: it is not a setting, but it tells a rerun without ``--temperature`` whether an output was made
    at the default."""

    model: str
    model_sha256: str | None
    size: str
    prior: str | None = None
    temperature: float | None = DEFAULT_TEMPERATURE
    """None: the model's default, not known yet (its network is not looked up before a job needs the model)."""
    seed: int = DEFAULT_SEED
    consistency: str | None = None
    """``on`` or ``off``; None while ``auto`` is not resolved yet (the model's file is not here to read)."""
    default_temperature: float | None = DEFAULT_TEMPERATURE
    """The temperature the model's network samples at unless told (HCFlow: 0.9); None: not known yet."""

    def mark(self, sample: int | None = None) -> dict[str, object]:
        """The settings an output of this run records; ``sample`` numbers it among several samples (None: the
        run writes one output per input)."""
        return {**asdict(self), "sample": sample}

    def differences(self, mark: Mapping[str, object], sample: int | None = None) -> list[str] | None:
        """How the settings recorded in ``mark`` (an earlier output's) differ from this run's output ``sample``,
        e.g. ``["model linf, not linf-lp"]``: empty when they are the same, None when the mark records no
        settings (written by an earlier flowsr). Model files are compared by sha256 when both are known; a
        setting the mark does not record (one a later flowsr added) is taken to be the same, except
        ``consistency``: no flowsr before it was recorded projected, so such a mark's is ``off``. A consistency
        this run has not resolved yet (None) is not compared; a temperature not resolved yet (None: the model's
        default) is the one the mark records as its model's default (0.5 in marks that record none)."""
        wanted = self.mark(sample)
        if not set(wanted) & (set(mark) - {MARK_KEY}):
            return None
        mark = {**_UNRECORDED, **mark}
        del wanted["default_temperature"]
        if self.consistency is None:
            wanted.pop("consistency")
        if self.temperature is None:
            wanted["temperature"] = mark["default_temperature"]
        recorded_sha, wanted_sha = mark.get("model_sha256"), wanted.pop("model_sha256")
        found: list[str] = []
        if recorded_sha and wanted_sha:
            wanted.pop("model")
            if recorded_sha != wanted_sha:
                found.append(f"model file changed (sha256 {_shown(recorded_sha)[:12]}…, now {wanted_sha[:12]}…)")
        for key, value in wanted.items():
            if key in mark and mark[key] != value:
                found.append(f"{key} {_shown(mark.get(key))}, not {_shown(value)}")
        return found


_UNRECORDED: dict[str, object] = {"consistency": "off", "default_temperature": DEFAULT_TEMPERATURE}
"""What marks written before flowsr recorded a setting mean by its absence (every model's default temperature
was 0.5 then)."""


def _shown(value: object) -> str:
    """A recorded value as a message shows it: its JSON text, shortened; strings bare, None as ``(default)``."""
    text = "(default)" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def xmp_packet(mark: str) -> bytes:
    """An XMP packet holding the mark (for WebP and TIFF)."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:flowsr="{_XMP_NAMESPACE}" '
        f'flowsr:provenance="{html.escape(mark, quote=True)}"/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    ).encode()


def parse_mark(text: str) -> dict[str, object] | None:
    """The mark in ``text``, or None if it is not one."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get(MARK_KEY), str) else None


def read_mark(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The mark of the image file at ``path``, or None (unmarked, unreadable or not a regular file)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as stream:
            return _mark_in(stream)
    except (OSError, ValueError, struct.error):
        return None


def read_mark_bytes(data: bytes) -> dict[str, object] | None:
    """The mark in an image file's content ``data`` (e.g. read from stdin), or None."""
    try:
        return _mark_in(io.BytesIO(data))
    except (ValueError, struct.error):
        return None


def _mark_in(stream: BinaryIO) -> dict[str, object] | None:
    head = stream.read(16)
    reader = _reader_for(head)
    return None if reader is None else reader(stream, head)


def is_flowsr_output(path: str | os.PathLike[str]) -> bool:
    """Whether flowsr wrote the file at ``path`` (it carries the mark)."""
    return read_mark(path) is not None


def unmarked_file_problem(path: str | os.PathLike[str]) -> str:
    """Why a job does not replace the file at ``path``, which flowsr did not write."""
    return f"{os.fsdecode(path)} exists and was not written by flowsr; not replaced (use --suffix or -o)"


_Reader = Callable[[BinaryIO, bytes], dict[str, object] | None]


def _reader_for(head: bytes) -> _Reader | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_mark
    if head.startswith(b"\xff\xd8"):
        return _jpeg_mark
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_mark
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_mark
    return None


def _png_mark(stream: BinaryIO, head: bytes) -> dict[str, object] | None:
    """The ``flowsr`` tEXt chunk among the chunks before the image data."""
    stream.seek(8)
    for _ in range(_MAX_STEPS):
        length, kind = struct.unpack(">I4s", _read_exactly(stream, 8))
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"tEXt" and length <= _MAX_MARK_BYTES:
            keyword, _, text = _read_exactly(stream, length).partition(b"\0")
            if keyword == MARK_KEY.encode():
                return parse_mark(text.decode("latin-1"))
            stream.seek(4, io.SEEK_CUR)
        else:
            stream.seek(length + 4, io.SEEK_CUR)
    return None


def _jpeg_mark(stream: BinaryIO, head: bytes) -> dict[str, object] | None:
    """A comment segment holding a mark, among the segments before the scan."""
    stream.seek(2)
    for _ in range(_MAX_STEPS):
        prefix, code = _read_exactly(stream, 2)
        if prefix != 0xFF or code in (0xD9, 0xDA):  # not a marker, end of image, start of scan
            return None
        if code == 0xFF:  # a fill byte before the marker
            stream.seek(-1, io.SEEK_CUR)
            continue
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length
            continue
        (length,) = struct.unpack(">H", _read_exactly(stream, 2))
        if length < 2:
            return None
        if code == 0xFE and length - 2 <= _MAX_MARK_BYTES:
            mark = parse_mark(_read_exactly(stream, length - 2).decode("utf-8"))
            if mark is not None:
                return mark
        else:
            stream.seek(length - 2, io.SEEK_CUR)
    return None


def _webp_mark(stream: BinaryIO, head: bytes) -> dict[str, object] | None:
    """The XMP chunk of a RIFF WebP file (after the image data: the chunks between are skipped)."""
    stream.seek(12)
    for _ in range(_MAX_STEPS):
        kind, size = struct.unpack("<4sI", _read_exactly(stream, 8))
        if kind == b"XMP ":
            return _xmp_mark(_read_exactly(stream, size)) if size <= _MAX_MARK_BYTES else None
        stream.seek(size + (size & 1), io.SEEK_CUR)
    return None


def _tiff_mark(stream: BinaryIO, head: bytes) -> dict[str, object] | None:
    """The XMP tag of the first IFD of a classic or Big TIFF."""
    endian = "<" if head[:2] == b"II" else ">"
    big = head[2] == 0x2B or head[3] == 0x2B
    offset_format, value_size = ("Q", 8) if big else ("I", 4)
    (offset,) = struct.unpack(endian + offset_format, head[8:16] if big else head[4:8])
    stream.seek(offset)
    count_format = "Q" if big else "H"
    (count,) = struct.unpack(endian + count_format, _read_exactly(stream, struct.calcsize(count_format)))
    entry_format = endian + ("HHQQ" if big else "HHII")
    for _ in range(min(count, _MAX_STEPS)):
        tag, _kind, length, value_offset = struct.unpack(entry_format, _read_exactly(stream, 4 + 2 * value_size))
        if tag == XMP_TIFF_TAG:
            if not value_size < length <= _MAX_MARK_BYTES:
                return None
            stream.seek(value_offset)
            return _xmp_mark(_read_exactly(stream, length))
    return None


def _xmp_mark(packet: bytes) -> dict[str, object] | None:
    found = _XMP_ATTRIBUTE.search(packet)
    return None if found is None else parse_mark(html.unescape(found.group(1).decode("utf-8")))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("truncated file")
    return data
