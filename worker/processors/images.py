"""Find the input image among a request's results by content, and decode it.

Result names are untrusted and often wrong ('scan' without extension,
'page.jpg' that is really a PNG), so the image is recognised by its content
type, as libmagic (python-magic, the `file` command's library) reads it from
the first bytes.  Decoding imports OpenCV (and Pillow as a fallback) only when
it is first needed.
"""
from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pero_worker.worker.processors import ProcessingError

if TYPE_CHECKING:
    import numpy as np

    from pero_worker.libs.message_pb2 import Data

log = logging.getLogger(__name__)

# Decoding a bigger image would take gigabytes of memory; a 600 dpi A2 scan is 140 Mpx.
# (Pillow refuses to open images above twice its own limit, about 179 Mpx, whatever we say.)
MAX_IMAGE_PIXELS = 175_000_000
MIN_IMAGE_SIDE = 2

FORMAT_NAMES = "PNG, JPEG, TIFF, BMP, JPEG 2000, WebP, GIF"
# Content types (libmagic's MIME names) of the images we decode -> our short format names.
IMAGE_TYPES = {
    "image/png": "png", "image/jpeg": "jpeg", "image/tiff": "tiff", "image/bmp": "bmp", "image/x-ms-bmp": "bmp",
    "image/jp2": "jp2", "image/jpx": "jp2", "image/x-jp2-codestream": "jp2", "image/webp": "webp", "image/gif": "gif",
}
# libmagic reads the headers of every format from the first bytes; more would only slow it down.
HEAD_BYTES = 4096
# Text, compression and container checks cannot find an image and are the slow part of a miss.
_SKIPPED_CHECKS = ("MAGIC_NO_CHECK_TEXT", "MAGIC_NO_CHECK_ENCODING", "MAGIC_NO_CHECK_TOKENS",
                   "MAGIC_NO_CHECK_COMPRESS", "MAGIC_NO_CHECK_TAR", "MAGIC_NO_CHECK_CDF", "MAGIC_NO_CHECK_ELF",
                   "MAGIC_NO_CHECK_APPTYPE")


@functools.cache
def _detector():
    """One libmagic handle for the process (python-magic serialises calls on it with its own lock)."""
    import magic  # lazy: loads libmagic (Debian libmagic1) only when a processor needs it
    detector = magic.Magic(mime=True)
    flags = magic.MAGIC_MIME_TYPE
    for name in _SKIPPED_CHECKS:
        flags |= getattr(magic, name)
    magic.magic_setflags(detector.cookie, flags)
    return detector


def content_type(data: bytes) -> str | None:
    """libmagic's MIME type of the data (None for empty data)."""
    if not data:
        return None
    return _detector().from_buffer(bytes(data[:HEAD_BYTES]))


def image_format(data: bytes) -> str | None:
    """'png', 'jpeg', 'tiff', 'bmp', 'jp2', 'webp' or 'gif' by content type, else None."""
    return IMAGE_TYPES.get(content_type(data) or "")


def _describe(name: str) -> str:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return repr(shown)


def find_image(results: Sequence[Data]) -> tuple[int, Data]:
    """(index, Data) of the first result whose content is an image; ProcessingError when there is none."""
    for index, data in enumerate(results):
        if image_format(data.content) is not None:
            return index, data
    if not results:
        raise ProcessingError("request has no results: there is no input image to process")
    names = ", ".join(_describe(data.name) for data in list(results)[:5])
    if len(results) > 5:
        names += f" and {len(results) - 5} more"
    raise ProcessingError(f"request has no input image: none of its results ({names}) is an image "
                          f"(recognised formats: {FORMAT_NAMES})")


def _pixels_from_header(data: bytes, name: str) -> tuple[int, int] | None:
    """(width, height) read from the header only, without decoding; None when Pillow cannot tell."""
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        raise ProcessingError(f"image {_describe(name)} is too large (over {MAX_IMAGE_PIXELS} pixels)") from None
    except Exception:  # unknown variant or damaged header: the decoder will judge
        return None


def decode_image(data: bytes, name: str = "", grey: bool = False) -> np.ndarray:
    """The image as an H x W x 3 uint8 BGR array (what pero-ocr's cv2.imread(path, 1) gives),
    or H x W greyscale with `grey` (the layout stage: a third of the memory on big scans).

    ProcessingError when it cannot be decoded or is absurdly large/small.
    """
    import cv2
    import numpy as np

    size = _pixels_from_header(data, name)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ProcessingError(f"image {_describe(name)} is too large: {size[0]} x {size[1]} pixels "
                              f"(limit {MAX_IMAGE_PIXELS})")
    image = None
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    except cv2.error as error:
        log.debug("OpenCV cannot decode %s: %s", _describe(name), error)
    if image is None:
        image = _decode_with_pillow(data)
        if image is not None and grey:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image is None:
        raise ProcessingError(f"result {_describe(name)} is not an image that can be decoded "
                              f"(damaged or unsupported {image_format(data) or 'unknown'} data)")
    if (image.ndim != 2 if grey else (image.ndim != 3 or image.shape[2] != 3)) or image.dtype != np.uint8:
        raise ProcessingError(f"image {_describe(name)} decoded to an unexpected shape {image.shape} {image.dtype}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ProcessingError(f"image {_describe(name)} is too small: {image.shape[1]} x {image.shape[0]} pixels")
    return image


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Formats or variants this OpenCV build cannot read (animated GIF, some JPEG 2000 ...)."""
    import numpy as np
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception:
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


__all__ = ["content_type", "image_format", "find_image", "decode_image", "MAX_IMAGE_PIXELS", "FORMAT_NAMES"]
