import pytest
import torch

from components.metrics.edges import edge_scores


def maps(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_precision_recall_and_f1_are_counted_inside_the_holes_only():
    pred = maps([1, 1, 0, 0, 1, 1])
    target = maps([1, 0, 1, 0, 0, 0])
    mask = maps([1, 1, 1, 1, 0, 0])  # the last two pixels are known: their agreement does not count
    scores = edge_scores(pred, target, mask)
    # inside: predicted {0, 1}, actual {0, 2}, hit {0}: precision 1/2, recall 1/2
    assert scores["precision"].item() == pytest.approx(0.5)
    assert scores["recall"].item() == pytest.approx(0.5)
    assert scores["f1"].item() == pytest.approx(0.5)


def test_a_hole_with_no_edge_predicted_or_expected_is_perfect_and_a_missed_edge_scores_zero():
    empty = edge_scores(maps([0, 0]), maps([0, 0]), maps([1, 1]))
    missed = edge_scores(maps([0, 0]), maps([1, 0]), maps([1, 1]))
    assert empty["f1"].item() == 1.0 and missed["f1"].item() == 0.0 and missed["precision"].item() == 0.0


def test_edge_scores_reject_maps_of_different_shapes():
    with pytest.raises(ValueError, match="one \\(N, 1, H, W\\) shape"):
        edge_scores(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))
