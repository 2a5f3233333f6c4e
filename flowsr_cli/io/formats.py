"""Image file formats flowsr writes, and how file names map to them (no imaging libraries imported)."""

from __future__ import annotations

import os
from pathlib import PurePath

FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "webp": (".webp",),
    "tiff": (".tif", ".tiff"),
    "bmp": (".bmp",),
}
"""Writable formats and their file extensions; the first extension is the one used for new files."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)
"""Extensions of the formats flowsr writes."""
INPUT_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | {".gif"}
"""Extensions of the files a folder or glob argument picks up: the writable formats and GIF (read only;
its outputs default to PNG)."""


def format_from_suffix(path: str | os.PathLike[str]) -> str | None:
    """The format a file name's extension names (case-insensitive), or None."""
    suffix = PurePath(path).suffix.lower()
    for name, extensions in FORMAT_EXTENSIONS.items():
        if suffix in extensions:
            return name
    return None
