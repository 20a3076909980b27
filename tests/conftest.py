"""Tests run with one intra-op thread (the suite's budget is measured that way) and no progress bars."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

try:  # hypothesis profiles (tests/test_fuzz.py): HYPOTHESIS_PROFILE=long for thousands of cases
    from hypothesis import HealthCheck, settings
except ImportError:  # the dev extra is not installed: the fuzz tests are skipped there
    pass
else:
    _FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    # fast: what CI runs, the same cases every time (derandomized, no example database on disk)
    settings.register_profile("fast", derandomize=True, database=None, deadline=None,
                              max_examples=100, suppress_health_check=_FUZZ_HEALTH)
    # long: fresh random cases on every run; a failure prints the blob that reproduces it
    settings.register_profile("long", derandomize=False, database=None, deadline=None,
                              max_examples=1000, suppress_health_check=_FUZZ_HEALTH,
                              print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session", autouse=True)
def _data_cache_in_tmp(tmp_path_factory):
    """Generated data sets are cached in a folder of this session (shared by its tests and the
    processes they start), never in the user's ~/.cache (tasks/cache.py)."""
    os.environ["TSP_CACHE_DIR"] = str(tmp_path_factory.mktemp("data-cache"))
    os.environ.pop("TSP_NO_CACHE", None)


@pytest.fixture
def rng():
    """A fresh, unseeded generator: correctness tests see new random inputs each run."""
    g = torch.Generator()
    g.seed()
    return g
