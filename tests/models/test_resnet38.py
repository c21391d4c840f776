"""ResNet-38 trunk vs SEAM's checkpoint layout (locseg/models/resnet38.py).

The expected keys/shapes are written out here by hand from SEAM's network/resnet38d.py and
network/resnet38_SEAM.py, independently of the model code. Synthetic tensors are stride-0 expansions of
one scalar each, so a ~100M-parameter state dict costs almost no memory or disk.
"""

from __future__ import annotations

import pytest
import torch

from locseg.models.resnet38 import BACKGROUND_KEY, ResNet38, load_seam_weights, seam_key_map

# (name, kind, in, mid, out, projection shortcut)
UNITS = [
    ("b2", "wide", 64, 128, 128, True),
    ("b2_1", "wide", 128, 128, 128, False),
    ("b2_2", "wide", 128, 128, 128, False),
    ("b3", "wide", 128, 256, 256, True),
    ("b3_1", "wide", 256, 256, 256, False),
    ("b3_2", "wide", 256, 256, 256, False),
    ("b4", "wide", 256, 512, 512, True),
    ("b4_1", "wide", 512, 512, 512, False),
    ("b4_2", "wide", 512, 512, 512, False),
    ("b4_3", "wide", 512, 512, 512, False),
    ("b4_4", "wide", 512, 512, 512, False),
    ("b4_5", "wide", 512, 512, 512, False),
    ("b5", "wide", 512, 512, 1024, True),
    ("b5_1", "wide", 1024, 512, 1024, False),
    ("b5_2", "wide", 1024, 512, 1024, False),
    ("b6", "bot", 1024, None, 2048, True),
    ("b7", "bot", 2048, None, 4096, True),
]
HEADS = {  # SEAM's heads: fc8 has 21 rows (background first); PCM convs
    "fc8.weight": (21, 4096, 1, 1),
    "f8_3.weight": (64, 512, 1, 1),
    "f8_4.weight": (128, 1024, 1, 1),
    "f9.weight": (192, 195, 1, 1),
}
SPOT = {  # checked literally, in case the table above and the code share a mistake
    "conv1a.weight": (64, 3, 3, 3),
    "b2.bn_branch2a.running_mean": (64,),
    "b2.conv_branch2a.weight": (128, 64, 3, 3),
    "b2.conv_branch1.weight": (128, 64, 1, 1),
    "b2_1.conv_branch2b1.weight": (128, 128, 3, 3),
    "b3.conv_branch1.weight": (256, 128, 1, 1),
    "b4_5.conv_branch2b1.weight": (512, 512, 3, 3),
    "b4_5.bn_branch2b1.running_var": (512,),
    "b5.conv_branch2a.weight": (512, 512, 3, 3),
    "b5.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b5_2.bn_branch2a.weight": (1024,),
    "b6.conv_branch2a.weight": (512, 1024, 1, 1),
    "b6.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b6.conv_branch2b2.weight": (2048, 1024, 1, 1),
    "b6.bn_branch2b2.bias": (1024,),
    "b7.conv_branch2b1.weight": (2048, 1024, 3, 3),
    "b7.conv_branch1.weight": (4096, 2048, 1, 1),
    "bn7.weight": (4096,),
    "bn7.num_batches_tracked": (),
}


def _bn(prefix, c, counters):
    keys = {f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
    if counters:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def trunk_spec(counters=True) -> dict[str, tuple]:
    spec = {"conv1a.weight": (64, 3, 3, 3)}
    for name, kind, cin, mid, cout, proj in UNITS:
        spec.update(_bn(f"{name}.bn_branch2a", cin, counters))
        if kind == "wide":
            spec[f"{name}.conv_branch2a.weight"] = (mid, cin, 3, 3)
            spec.update(_bn(f"{name}.bn_branch2b1", mid, counters))
            spec[f"{name}.conv_branch2b1.weight"] = (cout, mid, 3, 3)
        else:
            q, h = cout // 4, cout // 2
            spec[f"{name}.conv_branch2a.weight"] = (q, cin, 1, 1)
            spec.update(_bn(f"{name}.bn_branch2b1", q, counters))
            spec[f"{name}.conv_branch2b1.weight"] = (h, q, 3, 3)
            spec.update(_bn(f"{name}.bn_branch2b2", h, counters))
            spec[f"{name}.conv_branch2b2.weight"] = (cout, h, 1, 1)
        if proj:
            spec[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    spec.update(_bn("bn7", 4096, counters))
    return spec


def synthetic(spec: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Key i holds the constant i (+0.5 for floats) everywhere, as a zero-stride view."""
    out = {}
    for i, (key, shape) in enumerate(spec.items()):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7, dtype=torch.long)
        else:
            out[key] = torch.tensor(i + 0.5).expand(shape)
    return out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ResNet38().eval()


def test_hand_spec_spot_checks():
    spec = {**trunk_spec(), **HEADS}
    for key, shape in SPOT.items():
        assert spec[key] == shape, key
    # 1 stem conv + 15 wide units x (2 convs + 2 BNs) + 4 shortcuts + 2 bottlenecks x (4 convs + 3 BNs) + bn7;
    # each BN has weight, bias, running_mean, running_var, num_batches_tracked
    assert len(trunk_spec()) == 1 + 15 * (2 + 10) + 4 + 2 * (4 + 15) + 5 == 228
    assert len(trunk_spec(counters=False)) == 228 - 37
    assert "b2_1.conv_branch1.weight" not in spec and "b5_1.conv_branch1.weight" not in spec


def test_state_dict_matches_seam_trunk(net):
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == trunk_spec()
    for key, shape in SPOT.items():
        assert own[key] == shape, key
    assert net.low_channels == 256 and net.out_channels == 4096
    n_params = sum(p.numel() for p in net.parameters())
    assert 100e6 < n_params < 110e6, n_params  # ResNet-38: ~104M without the head


def test_strides_and_dilations(net):
    assert net.b2.conv_branch2a.stride == (2, 2) and net.b4.conv_branch1.stride == (2, 2)
    assert net.b5.conv_branch2a.stride == (1, 1) and net.b5.conv_branch2a.dilation == (1, 1)
    assert net.b5.conv_branch2b1.dilation == (2, 2) and net.b5_1.conv_branch2a.dilation == (2, 2)
    assert net.b6.conv_branch2b1.dilation == (4, 4) and net.b7.conv_branch2b1.padding == (4, 4)
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_forward_strides(net):
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert feats["low"].shape == (1, 256, 8, 8)
    assert feats["out"].shape == (1, 4096, 4, 4)
    assert feats["out"].min() >= 0 and feats["low"].min() >= 0  # both are post-BN-ReLU


def test_seam_key_map_splits_heads():
    state = synthetic({**trunk_spec(), **HEADS})
    trunk, head = seam_key_map(state)
    assert set(trunk) == set(trunk_spec())
    assert set(head) == {"classifier.weight", BACKGROUND_KEY, "f8_3.weight", "f8_4.weight", "f9.weight"}
    assert head["classifier.weight"].shape == (20, 4096, 1, 1)
    assert head[BACKGROUND_KEY].shape == (1, 4096, 1, 1)
    # PSA layout: 20 foreground rows, no background; DataParallel prefix stripped
    psa = {"module." + k: v for k, v in state.items() if k in trunk_spec() or k == "fc8.weight"}
    psa["module.fc8.weight"] = torch.zeros(20, 4096, 1, 1)
    trunk, head = seam_key_map(psa)
    assert set(trunk) == set(trunk_spec()) and set(head) == {"classifier.weight"}
    with pytest.raises(ValueError, match="fc8.weight"):
        seam_key_map({"fc8.weight": torch.zeros(19, 4096, 1, 1)})


@pytest.mark.parametrize("counters", [True, False])
def test_load_synthetic_checkpoint(net, tmp_path, counters):
    spec = trunk_spec(counters)
    state = synthetic({**spec, **HEADS})
    path = tmp_path / "resnet38_SEAM.pth"
    torch.save(state, path)
    before = int(net.bn7.num_batches_tracked)
    assert path.stat().st_size < 5e6  # zero-stride views stay small on disk
    head = load_seam_weights(net, path)
    assert sorted(head) == sorted(["classifier.weight", BACKGROUND_KEY, "f8_3.weight", "f8_4.weight", "f9.weight"])
    loaded = net.state_dict()
    for key in ("conv1a.weight", "b4_5.conv_branch2b1.weight", "b7.bn_branch2b2.running_var", "bn7.bias"):
        assert torch.all(loaded[key] == state[key]), key
    assert int(loaded["bn7.num_batches_tracked"]) == (7 if counters else before)  # absent: left alone


def _save(tmp_path, state):
    path = tmp_path / "broken_SEAM.pth"
    torch.save(state, path)
    return path


def test_renamed_and_missing_keys_are_named(net, tmp_path):
    state = synthetic({**trunk_spec(), **HEADS})
    state["b4_5.conv_branch2b1.wieght"] = state.pop("b4_5.conv_branch2b1.weight")
    del state["b6.bn_branch2b2.running_mean"]
    path = _save(tmp_path, state)
    with pytest.raises(ValueError) as err:
        load_seam_weights(net, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "2 missing" in msg and "b4_5.conv_branch2b1.weight" in msg and "b6.bn_branch2b2.running_mean" in msg
    assert "1 unexpected" in msg and "b4_5.conv_branch2b1.wieght" in msg


def test_wrong_shape_is_named(net, tmp_path):
    state = synthetic({**trunk_spec(), **HEADS})
    state["b3_1.conv_branch2a.weight"] = torch.zeros(256, 256, 1, 1)
    path = _save(tmp_path, state)
    with pytest.raises(ValueError, match=r"b3_1\.conv_branch2a\.weight \(256, 256, 1, 1\)") as err:
        load_seam_weights(net, path)
    assert str(path) in str(err.value) and "(256, 256, 3, 3)" in str(err.value)


def test_wholly_foreign_file_is_truncated(net, tmp_path):
    path = _save(tmp_path, {f"layer{i}.weight": torch.zeros(1) for i in range(30)})
    with pytest.raises(ValueError) as err:
        load_seam_weights(net, path)
    msg = str(err.value)
    assert "30 unexpected" in msg and "(20 more)" in msg and "more)" in msg.split("unexpected")[0]
