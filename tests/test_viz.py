import math

import numpy as np
import pytest
from PIL import Image

from locseg import viz


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _mask(h=40, w=60):
    m = np.zeros((h, w), np.uint8)
    m[10:20, 10:30] = 1
    m[25:35, 35:55] = 15
    m[0:3, :] = 255
    return m


def _png_ok(path):
    assert path.exists() and path.stat().st_size > 0
    assert not path.with_name(path.name + ".tmp").exists()
    assert not list(path.parent.glob("*.tmp"))
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 0 and im.size[1] > 0
        return im.size


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _count(pixels, rgb, tol=0):
    return int((np.abs(pixels - np.array(rgb)).max(axis=2) <= tol).sum())


def _columns_of(pixels, rgb, tol=0):
    return np.nonzero((np.abs(pixels - np.array(rgb)).max(axis=2) <= tol).any(axis=0))[0]


TAB_BLUE, TAB_ORANGE, TAB_RED = (31, 119, 180), (255, 127, 14), (214, 39, 40)


def test_colorize_voc_colours():
    mask = np.array([[0, 1], [255, 15]], np.uint8)
    rgb = viz.colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert tuple(rgb[0, 1]) == (128, 0, 0)
    assert tuple(rgb[1, 0]) == (224, 224, 192)
    assert tuple(rgb[1, 1]) == (192, 128, 128)  # person


def test_colorize_rejects_float_and_out_of_range():
    with pytest.raises(ValueError):
        viz.colorize(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        viz.colorize(np.full((2, 2), 300, np.int32))


def test_blend_keeps_background_and_tints_objects():
    img, mask = _image(), _mask()
    out = viz.blend(img, mask, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    bg = mask == 0
    assert np.array_equal(out[bg], img[bg])
    obj = mask == 1
    expected = np.rint(0.5 * img[obj].astype(np.float32) + 0.5 * np.array([128, 0, 0], np.float32))
    assert np.array_equal(out[obj], expected.astype(np.uint8))
    ign = mask == 255
    expected = np.rint(0.5 * img[ign].astype(np.float32) + 0.5 * np.array([224, 224, 192], np.float32))
    assert np.array_equal(out[ign], expected.astype(np.uint8))
    # alpha 1 shows the pure class colour on objects
    assert np.all(viz.blend(img, mask, alpha=1.0)[obj] == [128, 0, 0])
    assert np.array_equal(img, _image())  # input not modified


def test_blend_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected the same"):
        viz.blend(_image(), np.zeros((10, 10), np.uint8))


def test_heatmap_hot_and_cold_differ():
    img = np.full((20, 30, 3), 128, np.uint8)
    cam = np.zeros((20, 30), np.float32)
    cam[:, 15:] = 1.0
    out = viz.heatmap(img, cam, alpha=0.6)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    cold, hot = out[5, 5].astype(int), out[5, 25].astype(int)
    assert cold[2] > cold[0]  # jet: low -> blue
    assert hot[0] > hot[2]  # jet: high -> red
    assert np.abs(hot - cold).sum() > 100
    # alpha 0 returns the image; NaN and out-of-range values do not break it
    assert np.array_equal(viz.heatmap(img, cam, alpha=0.0), img)
    cam[0, 0], cam[0, 1] = np.nan, 7.0
    viz.heatmap(img, cam)


def test_save_image_roundtrip(tmp_path):
    img = _image()
    p = tmp_path / "a" / "img.png"
    viz.save_image(p, img)
    _png_ok(p)
    assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), img)
    with pytest.raises(ValueError):
        viz.save_image(tmp_path / "bad.png", img.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()


def _grid_rows():
    a, m = _image(40, 60), _mask(40, 60)
    b = _image(80, 50, seed=1)
    mb = np.zeros((80, 50), np.uint8)
    mb[20:60, 10:40] = 7
    return [
        [a, viz.blend(a, m), viz.colorize(m)],
        [b, viz.heatmap(b, np.linspace(0, 1, 80 * 50).reshape(80, 50)), None],
    ]


def test_save_grid_writes_png(tmp_path):
    p = tmp_path / "grid.png"
    viz.save_grid(p, _grid_rows(), ["image", "overlay", "mask"], ["2007_000032", "2007_000039"])
    w, h = _png_ok(p)
    assert w >= 3 * 150  # readable: roughly 200 px per panel
    viz.save_grid(tmp_path / "g2.png", _grid_rows(), ["image", "overlay", "mask"])
    _png_ok(tmp_path / "g2.png")


def test_save_grid_shows_each_panel_in_its_cell(tmp_path):
    """Solid panels: each colour lands in its own column, left to right, as large as a panel is drawn;
    a None cell stays blank."""
    red, green = np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)
    red[..., 0], green[..., 1] = 255, 255
    p = tmp_path / "grid.png"
    viz.save_grid(p, [[red, green], [green, None]], ["a", "b"], ["first", "second"])
    px = _pixels(p)
    n_red, n_green = _count(px, (255, 0, 0)), _count(px, (0, 255, 0))
    assert n_red > 100 * 100  # a panel is drawn about 200 px wide
    assert n_green == pytest.approx(2 * n_red, rel=0.05)  # two green panels, one red, none in the blank cell
    assert _columns_of(px, (255, 0, 0)).max() < _columns_of(px, (0, 255, 0)).max()


def test_save_grid_validates_shape(tmp_path):
    with pytest.raises(ValueError, match="row 0"):
        viz.save_grid(tmp_path / "g.png", [[_image()]], ["a", "b"])
    with pytest.raises(ValueError, match="row titles"):
        viz.save_grid(tmp_path / "g.png", [[_image()]], ["a"], ["x", "y"])
    assert not list(tmp_path.iterdir())


PER_CLASS = {"background": 0.85, "aeroplane": 0.61, "bicycle": math.nan, "bird": 0.0, "boat": 0.42}


def test_plot_per_class_with_nan(tmp_path):
    p = tmp_path / "per_class.png"
    viz.plot_per_class(p, PER_CLASS, "pseudo masks, train")
    _png_ok(p)


def test_plot_per_class_bar_lengths_follow_the_scores(tmp_path):
    """Bar area is proportional to the score (same axis range, same number of classes); a NaN class has no
    bar at all, where a wrong 0 fill would still draw none but a wrong 1 fill would draw a full one."""
    def blue_area(scores):
        path = tmp_path / f"bars_{len(list(tmp_path.iterdir()))}.png"
        viz.plot_per_class(path, scores, "t")
        return _count(_pixels(path), TAB_BLUE, tol=2)

    quarter = blue_area({"a": 0.25, "b": 1.0})
    full = blue_area({"a": 1.0, "b": 1.0})
    missing = blue_area({"a": math.nan, "b": 1.0})
    assert quarter == pytest.approx(0.625 * full, rel=0.05)  # (0.25 + 1) / 2
    assert missing == pytest.approx(0.5 * full, rel=0.05)


def test_plot_per_class_series(tmp_path):
    p = tmp_path / "cmp.png"
    series = {"CAM": {**PER_CLASS, "boat": 0.2}, "pseudo": PER_CLASS, "extra": {"cat": 0.5}}
    viz.plot_per_class(p, PER_CLASS, "CAM vs pseudo", series=series)
    _png_ok(p)
    px = _pixels(p)  # one colour per run: both the CAM and the pseudo bars are drawn
    assert _count(px, TAB_BLUE, tol=2) > 500 and _count(px, TAB_ORANGE, tol=2) > 500


def test_plot_curve(tmp_path):
    p = tmp_path / "curve.png"
    xs = np.linspace(0.05, 0.6, 12)
    ys = -((xs - 0.3) ** 2)
    ys[3] = np.nan
    viz.plot_curve(p, xs, ys, "bg threshold", "mIoU", "CAM sweep")
    _png_ok(p)
    # the best point is marked where the maximum is: a peak at the right puts the red star further right
    left, right = tmp_path / "left.png", tmp_path / "right.png"
    viz.plot_curve(left, [0.1, 0.2, 0.3, 0.4, 0.5], [5, 1, 1, 1, 1], "x", "y", "t")
    viz.plot_curve(right, [0.1, 0.2, 0.3, 0.4, 0.5], [1, 1, 1, 1, 5], "x", "y", "t")
    star_left, star_right = _columns_of(_pixels(left), TAB_RED, 2), _columns_of(_pixels(right), TAB_RED, 2)
    assert star_left.size and star_right.size
    assert star_left.min() < star_right.min() - 100
    viz.plot_curve(tmp_path / "plain.png", [0.1, 0.2], [1, 2], "x", "y", "t", best=False)
    assert _count(_pixels(tmp_path / "plain.png"), TAB_RED, 2) == 0
    viz.plot_curve(tmp_path / "c2.png", [1, 2], [math.nan, math.nan], "x", "y", "all nan")
    _png_ok(tmp_path / "c2.png")
    with pytest.raises(ValueError):
        viz.plot_curve(tmp_path / "c3.png", [1, 2], [1], "x", "y", "t")


def test_outputs_are_byte_identical(tmp_path):
    def make(d):
        viz.save_grid(d / "grid.png", _grid_rows(), ["image", "overlay", "mask"], ["a", "b"])
        viz.plot_per_class(d / "bars.png", PER_CLASS, "t", series={"CAM": PER_CLASS, "pseudo": PER_CLASS})
        viz.plot_curve(d / "curve.png", [0.1, 0.2, 0.3], [0.4, 0.5, 0.45], "x", "y", "t")
        viz.save_image(d / "img.png", _image())

    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    make(tmp_path / "1")
    make(tmp_path / "2")
    for name in ["grid.png", "bars.png", "curve.png", "img.png"]:
        a = (tmp_path / "1" / name).read_bytes()
        b = (tmp_path / "2" / name).read_bytes()
        assert a == b, name
        assert b"matplotlib" not in a.lower()  # no version tag in the PNG text chunks
