import math

import pytest
import torch
from safetensors.torch import save_file

from components.metrics.lpips import LPIPS, available, lpips
from components.metrics.weights import MetricUnavailable

# The official heads file's names (richzhang/PerceptualSimilarity, weights/v0.1/vgg.pth) and
# widths (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16).
OFFICIAL_HEAD_KEYS = [f"lin{k}.model.1.weight" for k in range(5)]
HEAD_WIDTHS = [64, 128, 256, 512, 512]
# torchvision vgg16().features: the indices of its 13 convolutions.
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    net = LPIPS()
    for head in net.heads:
        head.weight.abs_()  # LPIPS heads are non-negative
    return net


def torchvision_vgg16_state(seed=1):
    """A VGG16 state dict as torchvision writes it: `features.<i>.` convs plus `classifier.` keys."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    channels = 3
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    for index, width in zip(VGG16_CONV_INDICES, widths, strict=True):
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.randn(width, generator=generator) * 0.01
        channels = width
    state["classifier.6.weight"] = torch.zeros(10, 4)  # a torchvision head, ignored by LPIPS
    return state


def official_heads_state(seed=2):
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.rand(1, width, 1, 1, generator=generator)
            for key, width in zip(OFFICIAL_HEAD_KEYS, HEAD_WIDTHS, strict=True)}


def test_lpips_of_an_image_with_itself_is_zero(random_lpips):
    x = images()
    distance = lpips(x, x.clone(), random_lpips)
    assert distance.shape == (2,)
    assert torch.equal(distance, torch.zeros(2))


def test_lpips_is_symmetric(random_lpips):
    net = random_lpips
    a, b = images(seed=0), images(seed=1)
    assert torch.allclose(lpips(a, b, net), lpips(b, a, net), rtol=1e-5, atol=0)


def test_lpips_of_different_images_is_positive_and_per_image(random_lpips):
    net = random_lpips
    a = images(seed=0)
    b = a.clone()
    b[1] = images(n=1, seed=5)[0]
    distance = lpips(a, b, net)
    assert distance[0] == 0
    assert distance[1] > 0


def test_lpips_grows_with_the_size_of_the_change(random_lpips):
    net = random_lpips
    a = images(n=1)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    small, large = (lpips(a, (a + s * noise).clamp(0, 1), net).item() for s in (0.02, 0.3))
    assert 0 < small < large


def test_one_layer_contribution_matches_a_hand_computation(tmp_path):
    """Identity first convs, one non-zero head: LPIPS of two flat colours has a closed form."""
    backbone = torchvision_vgg16_state()
    for index in (0, 2):  # relu1_2 = relu(relu(scaled input)) on channels 0..2, zero elsewhere
        weight = torch.zeros_like(backbone[f"features.{index}.weight"])
        for c in range(3):
            weight[c, c, 1, 1] = 1.0
        backbone[f"features.{index}.weight"] = weight
        backbone[f"features.{index}.bias"] = torch.zeros_like(backbone[f"features.{index}.bias"])
    head_weights = [0.1, 0.2, 0.3]
    heads = {key: torch.zeros(1, width, 1, 1) for key, width in zip(OFFICIAL_HEAD_KEYS, HEAD_WIDTHS, strict=True)}
    heads["lin0.model.1.weight"][0, :3, 0, 0] = torch.tensor(head_weights)
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    net = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")

    colour_a, colour_b = (0.9, 0.6, 0.7), (0.7, 0.8, 0.6)
    shift, scale = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)

    def unit_features(colour):
        scaled = [max(0.0, (2 * v - 1 - s) / k) for v, s, k in zip(colour, shift, scale, strict=True)]
        norm = math.sqrt(sum(f * f for f in scaled))
        return [f / (norm + 1e-10) for f in scaled]

    fa, fb = unit_features(colour_a), unit_features(colour_b)
    expected = sum(w * (x - y) ** 2 for w, x, y in zip(head_weights, fa, fb, strict=True))

    flat_a = torch.tensor(colour_a).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    flat_b = torch.tensor(colour_b).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    assert expected > 1e-3
    assert lpips(flat_a, flat_b, net).item() == pytest.approx(expected, rel=1e-4)


def test_torchvision_backbone_and_official_heads_load_from_pth(tmp_path):
    backbone, heads = torchvision_vgg16_state(), official_heads_state()
    torch.save(backbone, tmp_path / "vgg16-397923af.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    net = LPIPS.from_files(str(tmp_path / "vgg16-397923af.pth"), str(tmp_path / "vgg.pth"))
    convs = [layer for layer in net.net.layers if isinstance(layer, torch.nn.Conv2d)]
    for index, conv in zip(VGG16_CONV_INDICES, convs, strict=True):
        assert torch.equal(conv.weight, backbone[f"features.{index}.weight"])
        assert torch.equal(conv.bias, backbone[f"features.{index}.bias"])
    for key, head in zip(OFFICIAL_HEAD_KEYS, net.heads, strict=True):
        assert torch.equal(head.weight, heads[key])
    assert not any(p.requires_grad for p in net.parameters())


def test_safetensors_files_and_the_no_dropout_head_layout_load(tmp_path):
    backbone = {k.removeprefix("features."): v for k, v in torchvision_vgg16_state().items()
                if k.startswith("features.")}  # bare `<i>.weight` keys
    heads = {k.replace(".model.1.", ".model.0."): v for k, v in official_heads_state().items()}
    save_file(backbone, str(tmp_path / "vgg16.safetensors"))
    save_file(heads, str(tmp_path / "heads.safetensors"))
    net = LPIPS.from_files(tmp_path / "vgg16.safetensors", tmp_path / "heads.safetensors")
    assert torch.equal(net.net.layers[28].weight, backbone["28.weight"])
    assert torch.equal(net.heads[4].weight, heads["lin4.model.0.weight"])


def test_lpips_file_errors_name_the_file_and_the_missing_key(tmp_path):
    torch.save(torchvision_vgg16_state(), tmp_path / "vgg16.pth")
    heads = official_heads_state()
    del heads["lin4.model.1.weight"]
    torch.save(heads, tmp_path / "partial_vgg.pth")
    with pytest.raises(ValueError, match=r"partial_vgg\.pth.*missing keys lin4\.model\.1\.weight"):
        LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "partial_vgg.pth")

    negative = official_heads_state()
    negative["lin2.model.1.weight"][0, 0] = -1.0
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match=r"negative\.pth.*negative weights in lin2"):
        LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "negative.pth")

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        LPIPS.from_files(tmp_path / "nowhere.pth", tmp_path / "partial_vgg.pth")


def test_lpips_without_weights_is_unavailable_not_a_number():
    assert not available(None, "vgg.pth")
    assert available("vgg16.pth", "vgg.pth")
    with pytest.raises(MetricUnavailable, match="LPIPS"):
        LPIPS.from_files(None, "vgg.pth")


def test_lpips_stays_frozen_and_float32_under_train_and_autocast(random_lpips):
    net = random_lpips
    net.train()
    assert not net.training
    a, b = images(seed=0), images(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance = lpips(a, b, net)
    assert distance.dtype == torch.float32
    assert torch.allclose(distance, lpips(a, b, net))
