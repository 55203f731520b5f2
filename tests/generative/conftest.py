"""Fixtures of the generative tests: a tiny digits classifier trained in well under a second."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_classifier(digits):
    """An MLP (64 -> 32 -> 10) on the 8x8 digits, full-batch Adam (~95% test accuracy); eval mode."""
    from robustlab.models import build_model

    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = build_model("mlp", 10, 1, input_size=8, hidden=[32])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()
