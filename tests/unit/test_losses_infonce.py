import math

import pytest
import torch
import torch.nn.functional as F

from components.losses.infonce import contrastive_logits, info_nce


def test_info_nce_equals_the_hand_computed_cross_entropy_with_the_positive_first():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.8, -0.6]])
    temperature = 0.5
    # query 0: q.k+ = 0.6, q.negatives = 0, -1, 0.8; query 1: q.k+ = 1, q.negatives = 1, 0, -0.6
    first = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(-2.0) + math.exp(1.6)))
    second = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(2.0) + math.exp(0.0) + math.exp(-1.2)))
    loss = info_nce(query, positive, negatives, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_info_nce_is_log_of_1_plus_k_when_every_key_is_equally_similar():
    query = F.normalize(torch.ones(3, 4), dim=1)
    negatives = query[:1].expand(7, 4)
    assert info_nce(query, query, negatives, 0.07).item() == pytest.approx(math.log(8), rel=1e-6)


def test_info_nce_falls_as_the_query_turns_to_its_positive_and_away_from_the_negatives():
    positive = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    losses = []
    for angle in (1.2, 0.6, 0.0):
        query = torch.tensor([[math.cos(angle), math.sin(angle)]])
        losses.append(info_nce(query, positive, negatives, 0.1).item())
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 1e-3


def test_info_nce_gives_float32_and_gradients_to_bf16_queries():
    query = F.normalize(torch.randn(4, 8), dim=1).bfloat16().requires_grad_()
    keys = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    loss = info_nce(query, keys, F.normalize(torch.randn(16, 8), dim=1), 0.07)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_contrastive_logits_put_the_positive_in_column_0_then_one_column_per_negative():
    query = torch.tensor([[1.0, 0.0]])
    logits = contrastive_logits(query, torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(logits, torch.tensor([[0.5, 0.0, -1.0, 1.0]]))


@pytest.mark.parametrize("query, positive, negatives", [
    (torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(5, 4)),
    (torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(5, 3)),
    (torch.zeros(4), torch.zeros(4), torch.zeros(5, 4)),
])
def test_info_nce_rejects_mismatched_shapes_naming_them(query, positive, negatives):
    with pytest.raises(ValueError, match="info_nce needs query and positive_key"):
        info_nce(query, positive, negatives, 0.07)


def test_info_nce_rejects_a_temperature_that_is_not_positive():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        info_nce(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0)
