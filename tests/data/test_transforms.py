import torch

from locseg.data.transforms import add_mirrored, fold_flip, multiscale_views


def test_multiscale_views_resize_and_append_the_mirror():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    views = list(multiscale_views(x, (4, 6), [1.0, 0.5], flip=True))
    assert [tuple(v.shape) for v in views] == [(4, 3, 4, 6), (4, 3, 2, 3)]
    assert torch.equal(views[0][:2], x) and torch.equal(views[0][2:], x.flip(-1))
    assert [tuple(v.shape) for v in multiscale_views(x, (4, 6), [1.5], flip=False)] == [(2, 3, 6, 9)]


def test_fold_flip_adds_each_mirrored_map_back_onto_its_image():
    maps = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[10.0, 20.0, 30.0]]]])  # image row, then its mirrored view's
    assert fold_flip(maps, True).tolist() == [[[[31.0, 22.0, 13.0]]]]
    assert fold_flip(maps, False) is maps
    got = add_mirrored(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]]))
    assert got.tolist() == [[31.0, 22.0, 13.0]]
