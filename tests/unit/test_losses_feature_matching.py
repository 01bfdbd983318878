import pytest
import torch

from components.losses.feature_matching import feature_matching_loss


def features(seed: int, requires_grad: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, s, s, generator=generator).requires_grad_(requires_grad)
            for c, s in ((4, 8), (8, 4), (1, 2))]


def test_identical_features_match_at_zero():
    real = features(0)
    assert feature_matching_loss(real, [f.clone() for f in real]).item() == 0.0


def test_loss_is_the_mean_over_layers_of_each_layers_l1_and_sum_on_request():
    real, fake = features(0), features(1)
    per_layer = [(f - r).abs().mean().item() for r, f in zip(real, fake)]
    assert feature_matching_loss(real, fake).item() == pytest.approx(sum(per_layer) / 3, rel=1e-6)
    assert feature_matching_loss(real, fake, reduction="sum").item() == pytest.approx(sum(per_layer), rel=1e-6)


def test_gradient_reaches_only_the_fake_features():
    real, fake = features(0, requires_grad=True), features(1, requires_grad=True)
    feature_matching_loss(real, fake).backward()
    assert all(r.grad is None for r in real)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fake)


def test_bf16_features_give_a_float32_loss():
    real, fake = features(0), features(1)
    out = feature_matching_loss([r.bfloat16() for r in real], [f.bfloat16() for f in fake])
    assert out.dtype == torch.float32


def test_mismatched_layer_counts_are_rejected():
    with pytest.raises(ValueError, match="3 real and 2 fake"):
        feature_matching_loss(features(0), features(1)[:2])
