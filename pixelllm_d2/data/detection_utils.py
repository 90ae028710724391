"""Image decoding and the errors a mapper raises on a sample it cannot use."""
import numpy as np
from PIL import Image, ImageOps

__all__ = ["DataError", "ImageReadError", "read_image", "image_size"]


class DataError(ValueError):
    """A sample that cannot be turned into model inputs (names the file); the training loader replaces it."""


class ImageReadError(DataError):
    """An image that is missing, truncated or not an image.

    Attributes:
        file_name: the path.
        reason: what went wrong.
    """

    def __init__(self, file_name: str, reason: str):
        super().__init__(f"{file_name}: cannot read image: {reason}")
        self.file_name = file_name
        self.reason = reason


def read_image(file_name: str) -> np.ndarray:
    """Decode an image file completely, apply its EXIF orientation and convert it to RGB.

    Args:
        file_name: path of a JPEG / PNG / any format PIL reads.

    Returns:
        uint8 array [H, W, 3], RGB. Grayscale, palette, CMYK and RGBA images are converted (alpha dropped).

    Raises:
        ImageReadError: the file is missing, truncated, or not an image.
    """
    try:
        with Image.open(file_name) as img:
            img.load()  # decode everything now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(file_name, "file does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(file_name, f"{type(e).__name__}: {e}") from None


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def image_size(file_name: str):
    """(width, height) of an image after EXIF orientation, from its header only (no decoding).

    Raises:
        ImageReadError: the file is missing or not an image.
    """
    try:
        with Image.open(file_name) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
            return w, h
    except FileNotFoundError:
        raise ImageReadError(file_name, "file does not exist") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(file_name, f"{type(e).__name__}: {e}") from None
