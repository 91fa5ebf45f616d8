"""Which test images the prediction grid shows: wrong and right ones side by side, never only errors."""

from __future__ import annotations

import pytest

from edgeft.train.metrics import grid_order


@pytest.mark.parametrize(
    ("wrong", "right", "n", "shown_wrong", "shown_right"),
    [(7, 3, 8, 5, 3), (2, 20, 8, 2, 6), (20, 20, 8, 4, 4), (0, 5, 8, 0, 5), (9, 0, 4, 4, 0)],
)
def test_the_grid_mixes_wrong_and_right_predictions(wrong, right, n, shown_wrong, shown_right):
    y_true = [0] * (wrong + right)
    y_pred = [1] * wrong + [0] * right
    order = grid_order(y_true, y_pred, n)
    assert len(order) == len(set(order)) == shown_wrong + shown_right
    assert sum(y_true[i] != y_pred[i] for i in order) == shown_wrong
