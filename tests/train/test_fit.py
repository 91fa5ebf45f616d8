"""The fit loop on its own: schedules of any length."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeft.train.fit import FitConfig, fit


def test_a_fit_of_ten_optimizer_steps_runs():
    # 5 epochs x 2 batches: OneCycleLR's 10% warm-up would be exactly one step, where it divides by zero
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.tensor([0, 1] * 4)
    train = DataLoader(TensorDataset(x, y), batch_size=4)
    model = torch.nn.Linear(3, 2)
    hist = fit(model, train, DataLoader(TensorDataset(x, y), batch_size=8), list(model.parameters()), FitConfig(5))
    assert len(hist.epochs) == 5
