import functools

import pytest
import torch
from safetensors.torch import save_file

from components.losses.perceptual import (PERCEPTUAL_LAYER_WEIGHTS, STYLE_LAYERS, PerceptualLoss, StyleLoss,
                                          VGG19Features, gram_matrix)

# torchvision's vgg19().features: (index, in, out) of each 3x3 conv; pools at 4, 9, 18, 27, 36.
TORCHVISION_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                     (14, 256, 256), (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512),
                     (25, 512, 512), (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512)]


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG19Features()


@functools.cache
def _torchvision_convs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    state = {}
    for i, c_in, c_out in TORCHVISION_CONVS:
        state[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) * 0.01
        state[f"features.{i}.bias"] = torch.randn(c_out, generator=generator) * 0.01
    return state


def torchvision_state(with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """A state dict keyed like torchvision's `vgg19().state_dict()` (random values, made once)."""
    state = dict(_torchvision_convs())
    if with_classifier:
        state["classifier.0.weight"] = torch.zeros(4, 8)
        state["classifier.0.bias"] = torch.zeros(4)
    return state


def test_features_are_the_sixteen_named_relus_at_halving_resolutions(vgg):
    out = vgg(torch.rand(1, 3, 32, 32))
    assert len(out) == 16
    assert out["relu1_1"].shape == (1, 64, 32, 32)
    assert out["relu2_2"].shape == (1, 128, 16, 16)
    assert out["relu3_4"].shape == (1, 256, 8, 8)
    assert out["relu4_1"].shape == (1, 512, 4, 4)
    assert out["relu5_4"].shape == (1, 512, 2, 2)
    assert all((f >= 0).all() for f in out.values())


def test_relu_indices_follow_torchvisions_layout(vgg):
    assert vgg.relu_index["relu1_1"] == 1 and vgg.relu_index["relu2_2"] == 8
    assert vgg.relu_index["relu3_4"] == 17 and vgg.relu_index["relu4_4"] == 26
    assert vgg.relu_index["relu5_1"] == 29 and vgg.relu_index["relu5_4"] == 35
    assert len(vgg.layers) == 37


def test_features_are_frozen_and_computed_in_float32_under_bf16_autocast(vgg):
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vgg(torch.rand(1, 3, 32, 32), layers=["relu2_1"])
    assert list(out) == ["relu2_1"] and out["relu2_1"].dtype == torch.float32


def test_unknown_layer_is_rejected_by_name(vgg):
    with pytest.raises(ValueError, match="relu6_1"):
        PerceptualLoss(vgg, {"relu6_1": 1.0})


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise(vgg):
    loss = PerceptualLoss(vgg)
    assert loss.layer_weights == PERCEPTUAL_LAYER_WEIGHTS
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, torch.rand(2, 3, 16, 16)).item() > 0.0


def test_perceptual_loss_is_the_weighted_sum_of_per_layer_l1(vgg):
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    fx, fy = vgg(x), vgg(y)
    weights = {"relu1_1": 2.0, "relu3_1": 0.5}
    expected = sum(w * (fx[k] - fy[k]).abs().mean() for k, w in weights.items())
    assert PerceptualLoss(vgg, weights)(x, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_perceptual_and_style_gradients_reach_the_prediction_only(vgg):
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    target = torch.rand(1, 3, 16, 16, requires_grad=True)
    (PerceptualLoss(vgg)(pred, target) + StyleLoss(vgg)(pred, target)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


def test_gram_matrix_matches_a_hand_computation():
    # one sample, C=2, H=1, W=2: rows a=(1, 2), b=(3, 4); Gram = [[a.a, a.b], [b.a, b.b]] / (C H W)
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    assert torch.allclose(gram_matrix(features), expected)


def test_style_loss_is_zero_for_identical_images_and_sums_gram_l1_over_edgeconnects_layers(vgg):
    loss = StyleLoss(vgg)
    assert loss.layers == STYLE_LAYERS == ("relu2_2", "relu3_4", "relu4_4", "relu5_2")
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert loss(x, x.clone()).item() == 0.0
    fx, fy = vgg(x), vgg(y)
    expected = sum((gram_matrix(fx[k]) - gram_matrix(fy[k])).abs().mean() for k in STYLE_LAYERS)
    assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(x, y).item() > 0.0


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_keyed_state_dict_loads_from_pth_and_safetensors(tmp_path, suffix):
    state = torchvision_state(with_classifier=suffix == ".pth")
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    vgg = VGG19Features(path)
    assert torch.equal(vgg.layers[0].weight, state["features.0.weight"])
    assert torch.equal(vgg.layers[34].bias, state["features.34.bias"])


def test_keys_without_the_features_prefix_load_too(tmp_path):
    state = {k.removeprefix("features."): v for k, v in torchvision_state(with_classifier=False).items()}
    path = tmp_path / "vgg19_features.safetensors"
    save_file(state, str(path))
    assert torch.equal(VGG19Features(path).layers[10].weight, state["10.weight"])


def test_a_file_with_missing_keys_is_rejected_naming_the_file_and_keys(tmp_path):
    state = torchvision_state()
    del state["features.34.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"broken\.pth.*missing keys 34\.weight"):
        VGG19Features(path)


def test_a_file_with_unexpected_keys_is_rejected_naming_them(tmp_path):
    state = torchvision_state()
    state["features.40.weight"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"extra\.safetensors.*unexpected keys 40\.weight"):
        VGG19Features(path)


def test_a_missing_file_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        VGG19Features(tmp_path / "nowhere.pth")
