import numpy as np
import pytest
from PIL import Image

from locseg.data.voc import (VOC_CLASSES, VocLayout, image_size, read_image, read_mask, read_split, voc_palette,
                             write_mask)


def test_classes():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_palette_values():
    p = voc_palette()
    assert len(p) == 768
    rgb = lambda i: tuple(p[3 * i:3 * i + 3])  # noqa: E731
    assert rgb(0) == (0, 0, 0)
    assert rgb(1) == (128, 0, 0)
    assert rgb(2) == (0, 128, 0)
    assert rgb(15) == (192, 128, 128)
    assert rgb(255) == (224, 224, 192)


def test_read_split_plain_and_deeplab_lines(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("2007_000032\n\n2007_000039\n")
    assert read_split(f) == ["2007_000032", "2007_000039"]
    f.write_text("/JPEGImages/a_1.jpg /SegmentationClassAug/a_1.png\n/JPEGImages/b.jpg /SegmentationClassAug/b.png\n")
    assert read_split(f) == ["a_1", "b"]


def test_read_split_rejects_duplicates_and_empty(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"s\.txt.*'a'"):
        read_split(f)
    f.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty split"):
        read_split(f)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_split(tmp_path / "nope.txt")


def test_layout_ids_lists_missing_images(tmp_path):
    layout = VocLayout(tmp_path)
    layout.split_file("train").parent.mkdir(parents=True)
    layout.split_file("train").write_text("x1\nx2\nx3\n")
    layout.image_path("x1").parent.mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(layout.image_path("x1"))
    assert layout.image_path("x1") == tmp_path / "JPEGImages" / "x1.jpg"
    assert layout.mask_path("x1") == tmp_path / "SegmentationClass" / "x1.png"
    with pytest.raises(FileNotFoundError, match=r"train\.txt: 2 of 3 images missing.*x2, x3"):
        layout.ids("train")
    for i in ("x2", "x3"):
        Image.new("RGB", (4, 3)).save(layout.image_path(i))
    assert layout.ids("train") == ["x1", "x2", "x3"]


def test_mask_round_trip_is_palette(tmp_path):
    mask = np.array([[0, 1, 2], [20, 255, 0]], dtype=np.uint8)
    path = tmp_path / "m.png"
    write_mask(path, mask)
    img = Image.open(path)
    assert img.mode == "P"
    assert img.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(path, 21, expected_hw=(2, 3)), mask)
    assert not list(tmp_path.glob("*.tmp"))


def test_write_mask_rejects_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mask(tmp_path / "m.png", np.zeros((2, 2), dtype=np.int64))
    assert not (tmp_path / "m.png").exists()


def test_grayscale_mask_accepted(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.array([[0, 3], [255, 1]], dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(read_mask(path, 4), [[0, 3], [255, 1]])


def test_rgb_mask_rejected(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2), (128, 0, 0)).save(path)
    with pytest.raises(ValueError, match=r"rgb\.png.*colour-encoded.*palette"):
        read_mask(path, 21)


def test_out_of_range_value_rejected(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, np.array([[0, 5, 7]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"m\.png.*\[5, 7\]"):
        read_mask(path, 5)


def test_size_mismatch_rejected(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"m\.png.*\(2, 3\).*\(3, 2\)"):
        read_mask(path, 21, expected_hw=(3, 2))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK"])
def test_image_modes_convert_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode).save(path)
    img = read_image(path)
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert image_size(path) == (4, 5)


def test_sixteen_bit_image_scaled(tmp_path):
    path = tmp_path / "d.png"
    Image.fromarray(np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)).save(path)
    img = read_image(path)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:, :, 0], [[0, 255], [100, 200]])


def test_truncated_jpeg_names_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        read_image(path)


def test_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg"):
        read_image(tmp_path / "gone.jpg")
