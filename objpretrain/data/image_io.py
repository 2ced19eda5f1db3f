"""Robust image decoding shared by the proposal job and the pretraining mappers.

``read_image_rgb`` turns whatever a folder of "images" holds into an upright 8-bit RGB array, or raises
``BadImageError`` naming the file and the reason. It

- applies the EXIF orientation (``ImageOps.exif_transpose``), so boxes live in the pixels a viewer shows;
- converts grayscale, palette, CMYK, YCbCr, LAB, HSV, 1-bit, alpha (composited onto black) and 16/32-bit
  integer or float images to RGB, scaling high-bit-depth values to 0-255 instead of clipping them;
- decodes JPEGs at reduced size (PIL ``draft``: 1/2, 1/4 or 1/8 scale, in the DCT) when only ``max_size``
  pixels, or a ``min_scale`` fraction of the full size, are needed, which is several times faster on large
  photographs;
- turns Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) into a ``BadImageError`` and its
  warning into a ``"huge"`` note instead of a crash or a log flood.

The original (EXIF-oriented) size is always returned, so callers can map coordinates computed on a reduced
image back to original-image pixels.

``resize_rgb`` is the resize of the mappers: bilinear, antialiased when shrinking, as PIL's ``BILINEAR`` and
torchvision's ``antialias=True`` (to within 1 grey level), through PyTorch's vectorized uint8 channels-last
kernel, about 5x faster than PIL on a 512 -> 224 px shrink (docs/performance.md).
"""
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = ["BadImageError", "read_image_rgb", "read_annotated_images", "resize_rgb", "HUGE_IMAGE_SIDE"]

# Longer sides above this are reported as "huge" (decoded at reduced size when max_size allows).
HUGE_IMAGE_SIDE = 8000

# EXIF orientations 5-8 swap width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112

# Modes whose pixels are single-channel integers/floats wider than 8 bits.
_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadImageError(Exception):
    """An image file that cannot be decoded. ``path`` and ``reason`` are kept for logs and summaries."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_image_rgb(path, max_size=None, notes=None, min_scale=None):
    """Decodes ``path`` into an upright RGB image.

    Args:
        path: image file.
        max_size: if given, the returned image is shrunk (never enlarged) so its longer side is at most this.
        notes: optional list; names of the conversions applied ("exif_rotated", "grayscale", "rgba",
            "cmyk", "16bit", "palette", "huge", ...) are appended to it, for counting in summaries.
        min_scale: if given (and ``max_size`` is not), a JPEG may be decoded at the smallest DCT scale (1/2,
            1/4, 1/8) that keeps each side at least ``min_scale`` times its full size; nothing is resized
            afterwards, so the image is returned at its decoded size (map coordinates with ``image.shape``
            against the returned original size).

    Returns:
        (image, (orig_h, orig_w)): ``image`` is a C-contiguous uint8 array HxWx3; ``orig_h, orig_w`` is the
        EXIF-oriented size of the full-resolution image.

    Raises:
        BadImageError: the file is missing, not an image, truncated, or exceeds ``Image.MAX_IMAGE_PIXELS``.
    """
    if max_size is not None and min_scale is not None:
        raise ValueError("read_image_rgb takes max_size or min_scale, not both")
    notes = notes if notes is not None else []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                image, orig_size = _decode(img, max_size, min_scale, notes)
        if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught) and "huge" not in notes:
            notes.append("huge")
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"exceeds Image.MAX_IMAGE_PIXELS ({e})") from e
    except FileNotFoundError as e:
        raise BadImageError(path, "file not found") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        raise BadImageError(path, f"cannot decode ({type(e).__name__}: {e})") from e
    return image, orig_size


def _decode(img, max_size, min_scale, notes):
    stored_w, stored_h = img.size
    if min(stored_w, stored_h) <= 0:
        raise ValueError(f"empty image of size {stored_w}x{stored_h}")
    orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    orig_w, orig_h = (stored_h, stored_w) if orientation in _TRANSPOSING_ORIENTATIONS else (stored_w, stored_h)
    if max(orig_w, orig_h) > HUGE_IMAGE_SIDE:
        notes.append("huge")

    if min_scale is not None:
        target = _scaled_size(stored_w, stored_h, min_scale) if min_scale < 1 else None
    else:
        target = _target_size(stored_w, stored_h, max_size)
    if target is not None and img.format == "JPEG":
        # draft() picks the smallest JPEG DCT scale (1/2, 1/4, 1/8) still at least `target`.
        img.draft("RGB", target)
    img.load()
    if orientation in range(2, 9):
        img = ImageOps.exif_transpose(img)
        notes.append("exif_rotated")
    image = _to_rgb_array(img, notes)
    if max_size is not None and max(image.shape[:2]) > max_size:
        scale = max_size / max(orig_w, orig_h)
        new_w, new_h = max(1, round(orig_w * scale)), max(1, round(orig_h * scale))
        image = resize_rgb(image, new_h, new_w)
    return np.ascontiguousarray(image), (orig_h, orig_w)


def read_annotated_images(dataset_dicts, logger):
    """Yields (dataset dict, ``3 x H x W`` uint8 tensor, its non-crowd annotations) for every image of
    ``dataset_dicts`` that has a non-crowd annotation and can be read; an unreadable one is logged on
    ``logger`` and skipped."""
    for d in dataset_dicts:
        annotations = [a for a in d.get("annotations", []) if not a.get("iscrowd", 0)]
        if not annotations:
            continue
        try:
            image, _ = read_image_rgb(d["file_name"])
        except BadImageError as error:
            logger.warning("skipping %s (%s)", d["file_name"], error.reason)
            continue
        yield d, torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1), annotations


def resize_rgb(image, height, width):
    """A uint8 ``H x W x 3`` array (any strides) resized to ``height x width``: bilinear, antialiased when
    shrinking (PIL's ``BILINEAR``, torchvision's ``antialias=True``). Returns a C-contiguous array."""
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"resize_rgb needs a uint8 H x W x C array, got {image.dtype} {image.shape}")
    if any(stride < 0 for stride in image.strides):  # torch.from_numpy rejects negative strides (flips)
        image = np.ascontiguousarray(image)
    # An H x W x C array seen as 1 x C x H x W is channels-last: the layout of torch's fast uint8 kernel.
    with warnings.catch_warnings():  # the tensor is only read; a decoded PIL image is a read-only array
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())


def _target_size(width, height, max_size):
    if max_size is None or max(width, height) <= max_size:
        return None
    return _scaled_size(width, height, max_size / max(width, height))


def _scaled_size(width, height, scale):
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def _to_rgb_array(img, notes):
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in _HIGH_BIT_DEPTH_MODES:
        notes.append("16bit" if mode.startswith("I;16") else "high_bit_depth")
        gray = _scale_to_uint8(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        notes.append("rgba")
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        # Compositing onto black hides colour values stored under fully transparent pixels.
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)
        return np.round(rgb).astype(np.uint8)
    notes.append({"L": "grayscale", "1": "grayscale", "P": "palette", "CMYK": "cmyk"}.get(mode, mode.lower()))
    return np.asarray(img.convert("RGB"))


def _scale_to_uint8(values, mode):
    values = values.astype(np.float64)
    if mode == "F":
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if not np.isfinite(low) or not np.isfinite(high):
            raise ValueError("float image with non-finite values")
        if 0.0 <= low and high <= 1.0:
            high, low = 1.0, 0.0
    else:
        # 16-bit files decode as "I;16*" or as 32-bit "I"; both store 0-65535 for 16-bit data.
        low, high = 0.0, 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
    scaled = (np.clip(values, low, high) - low) * (255.0 / max(high - low, 1e-12))
    return np.round(scaled).astype(np.uint8)
