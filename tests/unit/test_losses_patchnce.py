import math

import pytest
import torch
import torch.nn.functional as F

from components.losses.patchnce import PatchNCELoss, PatchProjection, gather_patches, sample_locations


def test_patchnce_equals_the_hand_computed_cross_entropy_on_three_patches():
    query = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    key = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]])
    t = 0.5
    # dot products q_i . k_j, written out: row i = query i, column j = key j
    dots = [[0.8, 0.0, 1.0],
            [0.6, 1.0, 0.0],
            [0.96, 0.8, 0.6]]
    per_query = [-math.log(math.exp(row[i] / t) / sum(math.exp(d / t) for d in row)) for i, row in enumerate(dots)]
    expected = sum(per_query) / 3
    actual = PatchNCELoss(temperature=t).loss(query, key)
    assert actual.dtype == torch.float32 and actual.ndim == 0
    assert actual.item() == pytest.approx(expected, rel=1e-6)


def test_negatives_come_only_from_the_same_image():
    torch.manual_seed(0)
    first = F.normalize(torch.randn(1, 5, 4), dim=-1)
    second = F.normalize(torch.randn(1, 5, 4), dim=-1)
    loss = PatchNCELoss(0.07)
    together = loss(torch.cat([first, second]), torch.cat([first, second]))
    apart = (loss(first, first) + loss(second, second)) / 2
    assert together.item() == pytest.approx(apart.item(), rel=1e-6)


def test_aligned_patches_score_lower_than_shuffled_ones():
    torch.manual_seed(0)
    keys = F.normalize(torch.randn(2, 16, 8), dim=-1)
    loss = PatchNCELoss(0.07)
    aligned = loss(keys, keys)
    shuffled = loss(keys[:, torch.randperm(16)], keys)
    assert aligned < 0.5 < shuffled
    assert aligned < math.log(16) < shuffled  # log(P) is the loss of a query that cannot tell its key apart


def test_the_key_side_gets_no_gradient_and_the_query_side_does():
    query = F.normalize(torch.randn(1, 6, 4), dim=-1).requires_grad_()
    key = F.normalize(torch.randn(1, 6, 4), dim=-1).requires_grad_()
    PatchNCELoss().loss(query, key).backward()
    assert key.grad is None
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_patchnce_rejects_mismatched_shapes_and_a_nonpositive_temperature():
    with pytest.raises(ValueError, match="one shape"):
        PatchNCELoss()(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="temperature"):
        PatchNCELoss(0.0)


def test_sampled_locations_are_distinct_capped_at_the_map_size_and_shared_by_query_and_key():
    torch.manual_seed(0)
    big, small = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 2, 3)
    locations = sample_locations([big, small], num_patches=10)
    assert [len(ids) for ids in locations] == [10, 6]
    assert all(len(set(ids.tolist())) == len(ids) for ids in locations)
    patches = gather_patches(big, locations[0])
    assert patches.shape == (2, 10, 3)
    row, col = divmod(int(locations[0][3]), 8)
    assert torch.equal(patches[1, 3], big[1, :, row, col])
    # the same locations applied to a second map pick the same positions there
    assert torch.equal(gather_patches(big * 2, locations[0]), patches * 2)


def test_projection_head_gives_unit_vectors_per_layer_with_two_linear_layers_of_256():
    head = PatchProjection([3, 5])
    assert [tuple(layer.weight.shape) for layer in head.mlps[0] if isinstance(layer, torch.nn.Linear)] == \
        [(256, 3), (256, 256)]
    features = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    locations = sample_locations(features, num_patches=4)
    out = head(features, locations)
    assert [tuple(o.shape) for o in out] == [(2, 4, 256), (2, 4, 256)]
    for o in out:
        assert o.dtype == torch.float32
        assert torch.allclose(o.norm(dim=-1), torch.ones(2, 4), atol=1e-5)


def test_projection_head_refuses_a_feature_list_of_the_wrong_length():
    head = PatchProjection([3, 5], dim=8)
    with pytest.raises(ValueError, match="2 layers"):
        head([torch.randn(1, 3, 2, 2)], [torch.tensor([0])])
