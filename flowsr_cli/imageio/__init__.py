"""Image files in and out without losing bit depth, alpha or metadata.

``read_image`` decodes (``reading``), ``encode_image``/``write_image`` encode (``writing``); both
speak ``Image`` (``image``).
"""

from flowsr_cli.imageio.image import Image, Metadata
from flowsr_cli.imageio.reading import DEFAULT_MAX_PIXELS, read_image
from flowsr_cli.imageio.writing import encode_image, write_image

__all__ = ["DEFAULT_MAX_PIXELS", "Image", "Metadata", "encode_image", "read_image", "write_image"]
