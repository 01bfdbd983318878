import pytest
import torch

from components.metrics.identity import IdentityNet, available, identity_similarity
from components.metrics.weights import MetricUnavailable
from tests.unit.method_checks import face_batch

# Tensor names in insightface's arcface_torch backbone.pth (backbones/iresnet.py module names).
INSIGHTFACE_KEYS_R50 = {
    "conv1.weight": (64, 3, 3, 3),
    "prelu.weight": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer2.0.downsample.1.running_var": (128,),
    "layer3.13.bn3.weight": (256,),
    "layer3.13.prelu.weight": (256,),
    "layer4.2.conv2.weight": (512, 512, 3, 3),
    "bn2.bias": (512,),
    "fc.weight": (512, 512 * 7 * 7),
    "features.running_mean": (512,),
}


def tiny_net(seed=0, depth=18):
    """iresnet layout at width 8 and a 32-d embedding, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = IdentityNet(depth=depth, width=8, embedding_dim=32)
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in net.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return net


@pytest.fixture(scope="module")
def net():
    return tiny_net()


def faces(n=2, size=64, seed=0):
    return face_batch(n, size, columns=("hq",), seed=seed)["hq"]


def test_similarity_of_a_face_with_itself_is_one(net):
    x = faces()
    similarity = identity_similarity(x, x.clone(), net)
    assert similarity.shape == (2,)
    assert torch.allclose(similarity, torch.ones(2), atol=1e-5)


def test_similarity_of_different_faces_is_below_one_and_within_range(net):
    a, b = faces(seed=0), faces(seed=1)
    similarity = identity_similarity(a, b, net)
    assert similarity.shape == (2,)
    assert (similarity >= -1).all() and (similarity <= 1).all()
    assert (similarity < 0.9999).all()


def test_similarity_is_symmetric_and_reads_any_face_size(net):
    a, b = faces(size=48, seed=0), faces(size=48, seed=1)
    assert torch.allclose(identity_similarity(a, b, net), identity_similarity(b, a, net), atol=1e-6)


def test_embeddings_come_from_112_px_faces_normalised_to_minus_one_one(net):
    seen = {}
    hook = net.conv1.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    try:
        embedding = net(torch.full((1, 3, 64, 64), 0.75))
    finally:
        hook.remove()
    assert embedding.shape == (1, 32)
    assert seen["x"].shape == (1, 3, 112, 112)
    assert torch.allclose(seen["x"], torch.full_like(seen["x"], 0.5))  # (0.75 - 0.5) / 0.5


def test_iresnet50_has_insightface_key_names_and_shapes():
    state = IdentityNet(depth=50).state_dict()
    for key, shape in INSIGHTFACE_KEYS_R50.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer3.14.bn1.weight" not in state  # iresnet50 stage 3 has 14 blocks
    assert "dropout" not in " ".join(state)


def test_insightface_backbone_file_round_trips(tmp_path, net):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.randn(state["fc.weight"].shape, generator=torch.Generator().manual_seed(4)) * 0.01
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "backbone.pth")  # as a DDP run saves it
    loaded = IdentityNet.from_file(tmp_path / "backbone.pth", depth=18, width=8, embedding_dim=32)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = faces(n=1)
    torch.manual_seed(0)
    expected = tiny_net()
    expected.load_state_dict(state)
    assert torch.allclose(loaded(x), expected(x), atol=1e-6)


def test_a_file_of_another_depth_fails_naming_the_file_and_keys(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "r18_backbone.pth")
    with pytest.raises(ValueError, match=r"iresnet50.*r18_backbone\.pth.*missing keys layer1\.2\."):
        IdentityNet.from_file(tmp_path / "r18_backbone.pth", depth=50, width=8, embedding_dim=32)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        IdentityNet.from_file(tmp_path / "absent.pth", depth=18)
    with pytest.raises(ValueError, match="depth must be one of"):
        IdentityNet(depth=42)


def test_identity_similarity_without_weights_is_unavailable_not_a_number():
    assert not available(None) and available("backbone.pth")
    with pytest.raises(MetricUnavailable, match="identity similarity"):
        IdentityNet.from_file(None)
