"""read_image_rgb and the proposal job on every kind of bad image, all generated here."""
import io

import numpy as np
import pytest
from PIL import Image

from objpretrain.data.image_io import BadImageError, read_image_rgb
from objpretrain.data.proposals import get_recipe, load_proposal_file, resolve_inputs, run_proposal_job

EXIF_ORIENTATION = 0x0112


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=2).astype(np.uint8)


def make_bad_images(folder):
    """One file per kind; returns {stem: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _gradient(64, 96)
    Image.fromarray(rgb).save(folder / "good.png")
    (folder / "not_an_image.jpg").write_bytes(b"this is not a JPEG at all")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(rgb[:, :, 0]).save(folder / "grayscale.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(folder / "sixteen_bit.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    Image.fromarray(_gradient(20, 20)).save(folder / "tiny.png")
    Image.fromarray(_gradient(40, 8100)).save(folder / "huge.png")
    return {
        "good": "ok",
        "not_an_image": "unreadable",
        "truncated": "unreadable",
        "grayscale": "grayscale",
        "rgba": "rgba",
        "cmyk": "cmyk",
        "sixteen_bit": "16bit",
        "exif_rotated": "exif_rotated",
        "tiny": "tiny",
        "huge": "huge",
    }


def test_read_image_rgb_converts_orients_and_rejects(tmp_path):
    make_bad_images(tmp_path)
    for name in ("not_an_image.jpg", "truncated.jpg", "missing.png"):
        with pytest.raises(BadImageError) as info:
            read_image_rgb(str(tmp_path / name))
        assert info.value.path == str(tmp_path / name) and info.value.reason

    for name, note in [("grayscale.png", "grayscale"), ("rgba.png", "rgba"), ("cmyk.jpg", "cmyk"),
                       ("sixteen_bit.png", "16bit")]:
        notes = []
        image, size = read_image_rgb(str(tmp_path / name), notes=notes)
        assert image.dtype == np.uint8 and image.shape == (64, 96, 3) and size == (64, 96)
        assert notes == [note]

    sixteen, _ = read_image_rgb(str(tmp_path / "sixteen_bit.png"))
    np.testing.assert_array_equal(sixteen[:, :, 1], _gradient(64, 96)[:, :, 0])  # 257*v scales back to v
    rgba, _ = read_image_rgb(str(tmp_path / "rgba.png"))
    np.testing.assert_allclose(rgba.astype(float), _gradient(64, 96) * (128 / 255.0), atol=0.51)

    notes = []
    rotated, size = read_image_rgb(str(tmp_path / "exif_rotated.jpg"), notes=notes)
    assert rotated.shape == (96, 64, 3) and size == (96, 64) and notes == ["exif_rotated"]
    # Orientation 6: the stored image's left column becomes the displayed top row.
    assert abs(int(rotated[0, 0, 0]) - 0) < 20 and abs(int(rotated[0, -1, 1]) - 0) < 20


def test_reduced_decoding_keeps_the_original_size(tmp_path):
    Image.fromarray(_gradient(600, 1000)).save(tmp_path / "big.jpg")
    image, size = read_image_rgb(str(tmp_path / "big.jpg"), max_size=100)
    assert image.shape == (60, 100, 3) and size == (600, 1000)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 8
    Image.fromarray(_gradient(600, 1000)).save(tmp_path / "big_rot.jpg", exif=exif.tobytes())
    image, size = read_image_rgb(str(tmp_path / "big_rot.jpg"), max_size=100)
    assert image.shape == (100, 60, 3) and size == (1000, 600)


def test_decompression_bomb_limit_becomes_bad_image_error(tmp_path, monkeypatch):
    Image.fromarray(_gradient(100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="MAX_IMAGE_PIXELS"):
        read_image_rgb(str(tmp_path / "bomb.png"))


def test_job_records_bad_images_with_zero_proposals_and_counts_them(tmp_path):
    kinds = make_bad_images(tmp_path / "imgs")
    items = resolve_inputs(str(tmp_path / "imgs"))
    list_file = tmp_path / "list.txt"
    list_file.write_text("\n".join(p for _, p in items) + "\n" + str(tmp_path / "imgs" / "gone.png") + "\n")
    items = resolve_inputs(str(list_file), root=str(tmp_path / "imgs"))
    out = str(tmp_path / "p.pkl")
    # Filters off: the 8100 x 40 image has no box of a SoCo aspect ratio.
    recipe = get_recipe("opencv_single").replace(
        filters={"min_size_ratio": None, "max_size_ratio": None, "min_aspect_ratio": None, "max_aspect_ratio": None}
    )
    meta = run_proposal_job(items, out, recipe, workers=1, progress=False)
    proposals = load_proposal_file(out)
    assert proposals["ids"] == [i for i, _ in items]
    by_id = dict(zip(proposals["ids"], proposals["boxes"]))
    summary = meta["summary"]
    assert summary["images"] == 11
    assert summary["unreadable"] == 3  # not_an_image, truncated, gone
    assert summary["tiny"] == 1
    assert summary["ok"] == 7
    for note in ("grayscale", "rgba", "cmyk", "16bit", "exif_rotated", "huge"):
        assert summary["converted"][note] == 1, note
    for stem in ("not_an_image", "truncated", "gone", "tiny"):
        assert by_id[stem].shape == (0, 4)
        assert stem in meta["bad_images"]
    for stem, kind in kinds.items():
        if kind not in ("unreadable", "tiny"):
            assert len(by_id[stem]) > 0, stem
    exif_boxes = by_id["exif_rotated"]
    assert exif_boxes[:, 2].max() <= 64 and exif_boxes[:, 3].max() <= 96
    assert by_id["huge"][:, 2].max() > 4000  # boxes in original pixels of the 8100 px wide image
