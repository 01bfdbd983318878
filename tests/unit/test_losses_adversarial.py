import math

import pytest
import torch

from components.losses.adversarial import AdversarialLoss

# Logits chosen so each loss is easy to work out by hand.
NSGAN_LOGITS = torch.tensor([0.0, 2.0])
LSGAN_LOGITS = torch.tensor([0.5, -1.0])
HINGE_LOGITS = torch.tensor([0.5, -2.0, 3.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_nsgan_is_binary_cross_entropy_on_logits_for_real_fake_and_generator():
    loss = AdversarialLoss("nsgan")
    real = (softplus(-0.0) + softplus(-2.0)) / 2  # -log(sigmoid(x)) = softplus(-x)
    fake = (softplus(0.0) + softplus(2.0)) / 2  # -log(1 - sigmoid(x)) = softplus(x)
    assert loss(NSGAN_LOGITS, True).item() == pytest.approx(real, rel=1e-6)
    assert loss(NSGAN_LOGITS, False).item() == pytest.approx(fake, rel=1e-6)
    assert loss(NSGAN_LOGITS, True, for_discriminator=False).item() == pytest.approx(real, rel=1e-6)


def test_lsgan_is_mean_squared_distance_of_logits_to_one_or_zero():
    loss = AdversarialLoss("lsgan")
    assert loss(LSGAN_LOGITS, True).item() == pytest.approx((0.25 + 4.0) / 2)
    assert loss(LSGAN_LOGITS, False).item() == pytest.approx((0.25 + 1.0) / 2)
    assert loss(LSGAN_LOGITS, True, for_discriminator=False).item() == pytest.approx((0.25 + 4.0) / 2)


def test_hinge_discriminator_pays_margins_and_generator_pays_minus_mean_logit():
    loss = AdversarialLoss("hinge")
    assert loss(HINGE_LOGITS, True).item() == pytest.approx((0.5 + 3.0 + 0.0) / 3)
    assert loss(HINGE_LOGITS, False).item() == pytest.approx((1.5 + 0.0 + 4.0) / 3)
    assert loss(HINGE_LOGITS, True, for_discriminator=False).item() == pytest.approx(-1.5 / 3)


def test_hinge_generator_loss_refuses_a_fake_target():
    with pytest.raises(ValueError, match="target_is_real=True"):
        AdversarialLoss("hinge")(HINGE_LOGITS, False, for_discriminator=False)


def test_loss_method_equals_calling_the_module():
    loss = AdversarialLoss("lsgan")
    assert torch.equal(loss.loss(LSGAN_LOGITS, False), loss(LSGAN_LOGITS, False))


@pytest.mark.parametrize("kind", ["nsgan", "lsgan", "hinge"])
def test_bf16_logits_give_a_float32_scalar_that_backpropagates(kind):
    logits = torch.randn(2, 1, 3, 3).to(torch.bfloat16).requires_grad_()
    out = AdversarialLoss(kind)(logits, True)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_nsgan_stays_finite_on_saturated_logits():
    logits = torch.tensor([-200.0, 200.0])
    loss = AdversarialLoss("nsgan")
    assert math.isfinite(loss(logits, True).item()) and loss(logits, True).item() == pytest.approx(100.0)


def test_unknown_kind_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="'wgan'"):
        AdversarialLoss("wgan")  # type: ignore[arg-type]
