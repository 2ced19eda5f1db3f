"""The fast image primitives of the mappers: ``resize_rgb`` and reduced-size decoding (``min_scale``)."""
import numpy as np
import pytest
from PIL import Image

from objpretrain.data.image_io import read_image_rgb, resize_rgb


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:96, 0:128]
    image = np.stack([xs * 2, ys * 2, (xs + ys) % 256], axis=2) + rng.normal(0, 10, (96, 128, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(40, 56), (96, 128), (150, 200), (224, 224)])
def test_resize_rgb_computes_pil_bilinear(photo, size):
    expected = np.asarray(Image.fromarray(photo).resize(size[::-1], Image.BILINEAR))
    resized = resize_rgb(photo, *size)
    assert resized.shape == (*size, 3) and resized.dtype == np.uint8 and resized.flags.c_contiguous
    assert np.abs(resized.astype(int) - expected).max() <= 1


def test_resize_rgb_takes_crops_flips_and_read_only_arrays(photo):
    crop = photo[10:70, 20:100]
    flipped = photo[:, ::-1]
    read_only = photo.copy()
    read_only.flags.writeable = False
    for image in (crop, flipped, read_only):
        expected = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((32, 32), Image.BILINEAR))
        assert np.abs(resize_rgb(image, 32, 32).astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="uint8"):
        resize_rgb(photo.astype(np.float32), 32, 32)


def test_min_scale_decodes_jpegs_at_the_smallest_dct_scale_that_keeps_it(tmp_path):
    pixels = np.zeros((768, 1024, 3), np.uint8)
    pixels[..., 0] = np.arange(1024)[None, :] // 4
    pixels[..., 1] = np.arange(768)[:, None] // 3
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    path = str(tmp_path / "big.jpg")

    full, size = read_image_rgb(path)
    assert full.shape == (768, 1024, 3) and size == (768, 1024)
    for min_scale, shape in [(1.0, (768, 1024)), (0.6, (768, 1024)), (0.3, (384, 512)), (0.25, (192, 256)),
                             (0.1, (96, 128))]:
        image, size = read_image_rgb(path, min_scale=min_scale)
        assert image.shape[:2] == shape and size == (768, 1024), min_scale
    # The reduced decode shows the same picture: it equals the full decode shrunk, to a few grey levels.
    half, _ = read_image_rgb(path, min_scale=0.5)
    assert np.abs(half.astype(int) - resize_rgb(full, 384, 512)).mean() < 1.5
    # Only JPEGs have DCT scales; other formats decode at full size.
    assert read_image_rgb(str(tmp_path / "big.png"), min_scale=0.1)[0].shape == (768, 1024, 3)
    with pytest.raises(ValueError, match="not both"):
        read_image_rgb(path, max_size=100, min_scale=0.5)
