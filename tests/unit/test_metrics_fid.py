import numpy as np
import pytest
import torch

from components.metrics.fid import (InceptionFeatures, _tf_avg_pool, available, feature_statistics,
                                    fid_from_features, frechet_distance)
from components.metrics.weights import MetricUnavailable

# Names of tensors in pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision's Inception3
# module names, 1008-class fc), with the shapes torchvision's inception.py gives them.
PYTORCH_FID_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.bn.running_mean": (384,),
}


def gaussian_samples(mean, cov, n, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def reference_fid(a, b):
    """FID in float64 numpy, the trace of the root via the symmetric form sqrt(S1)^T S2 sqrt(S1)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def random_cov(dim, seed):
    m = np.random.default_rng(seed).normal(size=(dim, dim))
    return m @ m.T / dim + 0.1 * np.eye(dim)


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    return InceptionFeatures()


def test_fid_of_a_feature_set_with_itself_is_zero():
    features = gaussian_samples(np.zeros(8), random_cov(8, 0), 500, seed=1)
    assert fid_from_features(features, features.copy()) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_an_independent_float64_reference_on_gaussian_sets():
    a = gaussian_samples(np.zeros(8), random_cov(8, 0), 500, seed=1)
    b = gaussian_samples(np.full(8, 0.5), random_cov(8, 1), 500, seed=2)
    expected = reference_fid(a, b)
    assert expected > 1.0
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    as_tensors = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    assert fid_from_features(*as_tensors) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 1.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 + sum (sqrt(var1) - sqrt(var2))^2 = 5 + (4 + 1 + 0)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(10.0, rel=1e-12)


def test_fid_of_samples_approaches_the_population_value():
    mean1, mean2 = np.zeros(8), np.full(8, 0.5)
    cov1, cov2 = np.diag(np.full(8, 1.0)), np.diag(np.full(8, 4.0))
    population = frechet_distance(mean1, cov1, mean2, cov2)  # 8 * 0.25 + 8 * (1 - 2)^2 = 10
    sampled = fid_from_features(gaussian_samples(mean1, cov1, 500, 3), gaussian_samples(mean2, cov2, 500, 4))
    assert population == pytest.approx(10.0)
    assert sampled == pytest.approx(population, rel=0.15)


def test_fid_of_a_shifted_set_is_the_squared_shift():
    a = gaussian_samples(np.zeros(8), random_cov(8, 5), 200, seed=6)
    shift = np.linspace(-1, 1, 8)
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_feature_statistics_need_two_samples_and_matching_dimensions():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 8)))
    with pytest.raises(ValueError, match="means of one length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_tensorflow_average_pool_does_not_darken_the_border():
    pooled = _tf_avg_pool(torch.ones(1, 2, 5, 5))
    assert torch.equal(pooled, torch.ones(1, 2, 5, 5))


def test_inception_features_are_2048_wide_from_a_299_px_resize_of_small_inputs(random_inception):
    seen = {}
    hook = random_inception.Conv2d_1a_3x3.register_forward_pre_hook(
        lambda module, args: seen.update(shape=tuple(args[0].shape), low=args[0].min().item(),
                                         high=args[0].max().item()))
    try:
        features = random_inception(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    assert features.shape == (1, 2048)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert seen["shape"] == (1, 3, 299, 299)
    assert -1.0 <= seen["low"] < -0.9 and 0.9 < seen["high"] <= 1.0  # [0, 1] mapped to [-1, 1]


def test_inception_has_pytorch_fid_key_names_and_shapes(random_inception):
    state = random_inception.state_dict()
    for key, shape in PYTORCH_FID_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(p.numel() for p in random_inception.parameters())
    # torchvision inception_v3: 27,161,264 parameters, less AuxLogits (3,326,696) and fc (2,049,000).
    assert params == 21_785_568


def test_pytorch_fid_weights_file_loads_key_for_key(tmp_path, random_inception):
    generator = torch.Generator().manual_seed(1)
    state = {k: v.clone() for k, v in random_inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["Mixed_7c.branch_pool.bn.running_mean"] = torch.randn(192, generator=generator)
    state["Mixed_5b.branch1x1.conv.weight"] = torch.randn(64, 192, 1, 1, generator=generator)
    state["fc.weight"] = torch.zeros(1008, 2048)  # the TF graph's 1008-class head, ignored for pool3
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    net = InceptionFeatures.from_file(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    loaded = net.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert not any(p.requires_grad for p in net.parameters())


def test_fid_weights_errors_name_the_file_and_the_missing_key(tmp_path, random_inception):
    state = dict(random_inception.state_dict())
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "broken_inception.pth")
    with pytest.raises(ValueError, match=r"broken_inception\.pth.*missing keys Mixed_7c\.branch_pool\.conv\.weight"):
        InceptionFeatures.from_file(tmp_path / "broken_inception.pth")
    (tmp_path / "not_a_state_dict.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not_a_state_dict.pth"):
        InceptionFeatures.from_file(tmp_path / "not_a_state_dict.pth")


def test_fid_without_weights_is_unavailable_not_a_number():
    assert not available(None) and available("pt_inception.pth")
    with pytest.raises(MetricUnavailable, match="FID"):
        InceptionFeatures.from_file(None)


@pytest.mark.parametrize(("block", "channels", "pool"), [
    ("Mixed_5b", 192, "avg"), ("Mixed_6c", 768, "avg"), ("Mixed_7b", 1280, "avg"), ("Mixed_7c", 2048, "max"),
])
def test_pool_branches_follow_the_tensorflow_fid_graph(random_inception, block, channels, pool):
    """pytorch-fid's patches: padding-free 3x3 average pools, and a 3x3 max pool in Mixed_7c."""
    module = getattr(random_inception, block)
    seen = {}
    hook = module.branch_pool.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    x = torch.randn(1, channels, 4, 4, generator=torch.Generator().manual_seed(2))
    try:
        module(x)
    finally:
        hook.remove()
    if pool == "max":
        expected = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    else:
        expected = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert torch.allclose(seen["x"], expected, atol=1e-6)
