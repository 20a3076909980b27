"""Tests run with one intra-op thread (the suite's budget is measured that way) and no progress bars."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def rng():
    """A fresh, unseeded generator: correctness tests see new random inputs each run."""
    g = torch.Generator()
    g.seed()
    return g
