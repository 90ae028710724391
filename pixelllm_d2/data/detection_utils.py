"""Image decoding (the one reader of training, evaluation and the predictor) and the errors a mapper raises on a
sample it cannot use."""
import os
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DataError", "ImageReadError", "ImageNotFoundError", "read_image", "image_size", "ImageLike"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


class DataError(ValueError):
    """A sample that cannot be turned into model inputs (names the file); the training loader replaces it."""


class ImageReadError(DataError):
    """An image that is missing, truncated, not an image, or of a kind that cannot be turned into 8-bit RGB.

    Attributes:
        file_name: the path (or the name the caller gave an in-memory image).
        reason: what went wrong.
    """

    def __init__(self, file_name: str, reason: str):
        super().__init__(f"{file_name}: cannot read image: {reason}")
        self.file_name = file_name
        self.reason = reason


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The image file does not exist (also a FileNotFoundError)."""

    def __init__(self, file_name: str):
        super().__init__(file_name, "file does not exist")


# Pillow modes holding more than 8 bits per sample: Pillow's own convert("RGB") clips them to 255 (a 16-bit PNG
# becomes all white), so they are scaled here.
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb8(img: Image.Image, name: str) -> np.ndarray:
    if img.mode in _WIDE_INTEGER_MODES:
        a = np.asarray(img)
        if a.min() < 0 or a.max() > 65535:
            raise ImageReadError(name, f"{img.mode} image with values outside 0..65535 (min {a.min()}, max {a.max()})")
        gray = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)  # 0..65535 -> 0..255
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode == "F":
        raise ImageReadError(name, "32-bit float images are not supported; save it as 8- or 16-bit")
    return np.asarray(img.convert("RGB"))


def _array_to_rgb8(image: np.ndarray, input_format: str, name: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f"{name}: numpy images must be uint8 (0-255) or uint16 (0-65535), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    rgb = image[:, :, :3]
    return np.ascontiguousarray(rgb[:, :, ::-1] if input_format == "BGR" else rgb)


def read_image(image: ImageLike, input_format: str = "RGB", name: Optional[str] = None) -> np.ndarray:
    """Decode an image completely into 8-bit RGB.

    Args:
        image: a file path (JPEG / PNG / any format Pillow reads; EXIF orientation applied), a PIL image, or a
            numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped) of uint8 or uint16.
            Grayscale, palette, CMYK and RGBA are converted; 16-bit samples are scaled to 8 bits (v / 257).
        input_format: channel order of a 3 / 4 channel array, "RGB" or "BGR" (OpenCV). Files and PIL images know
            their own order, so it does not apply to them.
        name: how errors name the image (default: the path, or "image").

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        ImageNotFoundError: the file does not exist (a FileNotFoundError and an ImageReadError).
        ImageReadError: the file is truncated, not an image, or a float image (a ValueError).
        TypeError / ValueError: an array of another dtype or shape; an unknown `input_format`.
    """
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        name = name or path
        try:
            with Image.open(path) as img:
                img.load()  # decode everything now: truncated files fail here, not later
                return _to_rgb8(ImageOps.exif_transpose(img), name)
        except FileNotFoundError:
            raise ImageNotFoundError(name) from None
        except ImageReadError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageReadError(name, f"{type(e).__name__}: {e}") from None
    name = name or "image"
    if isinstance(image, Image.Image):
        return _to_rgb8(image, name)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    return _array_to_rgb8(image, input_format, name)


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
        raise ImageNotFoundError(file_name) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(file_name, f"{type(e).__name__}: {e}") from None
