"""Reading image files: the one image read of the data check, the dataset and the frame cache, and printable paths.

read_image() reads the file's bytes with Python's open() and decodes them with cv2.imdecode: a path whose name is
not UTF-8 (surrogate-escaped by os.listdir) reads like any other, where cv2.imread on it crashes the process.
Before decoding, the bytes are checked for the damage a decoder would pass over or report only on stderr: a JPEG
must end with its end-of-image marker (FF D9; trailing zero bytes allowed), a PNG must be a whole chain of chunks
with matching CRCs up to its IEND chunk. A truncated file is therefore refused without libjpeg or libpng printing
anything. A JPEG damaged inside its compressed data but complete to its end marker is not detected (JPEG has no
checksum): it decodes as a damaged picture, and libjpeg may print one "Corrupt JPEG data" line.
"""
import zlib

import cv2
import numpy as np

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = 3  # of every image read_image() returns: it decodes in colour (cv2.IMREAD_COLOR), BGR


def printable(text: str) -> str:
    """text with the bytes of non-UTF-8 file names (surrogate escapes from os.listdir) shown as \\xNN: printable
    and loggable with any strict UTF-8 stream."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _png_damage(data: bytes) -> str:
    """Why the PNG data is truncated or corrupt (a chunk past the end, a CRC mismatch, no IEND), or ""."""
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos:pos + 4], "big")
        name = bytes(view[pos + 4:pos + 8]).decode("ascii", "backslashreplace")
        end = pos + 12 + length
        if end > len(data):
            return f"truncated or corrupt PNG: chunk {name} ({length} bytes) runs past the end of the file"
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            return f"corrupt PNG: CRC mismatch in chunk {name} at byte {pos}"
        if name == "IEND":
            return ""
        pos = end
    return "truncated PNG: the file ends before its IEND chunk"


def image_damage(data: bytes) -> str:
    """Why these image file bytes cannot be a whole image (empty, truncated JPEG, truncated or corrupt PNG), or ""
    when nothing is found; other formats are left to the decoder."""
    if not data:
        return "empty file (0 bytes)"
    if data.startswith(JPEG_START) and not data.rstrip(b"\x00").endswith(JPEG_END):
        return "truncated JPEG: the data does not end with the end-of-image marker FF D9"
    if data.startswith(PNG_SIGNATURE):
        return _png_damage(data)
    return ""


def read_image(path: str) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 [h, w, CHANNELS] image, "") of the image file at path, or (None, why it is unusable); never raises."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read the file ({e.strerror or e})"
    damage = image_damage(data)
    if damage:
        return None, damage
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # a decoder error on one file is that file's problem, never the run's
        return None, f"does not decode (cv2.error: {str(e).strip()})"
    if image is None or image.size == 0:
        return None, "does not decode: not an image OpenCV reads, or corrupt"
    return image, ""
