"""scripts/gradient_agreement.py: its distance is 0 for an exact method and not for SnAp-1."""

import importlib.util
from pathlib import Path

import pytest
import torch

from temporal_sigprop import get_task

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gradient_agreement.py"
spec = importlib.util.spec_from_file_location("gradient_agreement", SCRIPT)
gradient_agreement = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gradient_agreement)


def test_agreement_measures_distance_and_cosine():
    ref = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    assert gradient_agreement.agreement(ref, ref) == pytest.approx((0.0, 1.0))
    flipped = {k: -v for k, v in ref.items()}
    assert gradient_agreement.agreement(ref, flipped) == pytest.approx((2.0, -1.0))
    with pytest.raises(ValueError, match="lacks parameters"):
        gradient_agreement.agreement(ref, {"a": ref["a"]})


def test_rtrl_matches_bptt_and_snap1_does_not():
    task = get_task("cue_recall:delay=4,n_train=40,n_test=20", seed=0, cache=False)
    grads = gradient_agreement.gradients(task, "gru", ["rtrl", "snap1", "eprop"], hidden=8,
                                         layers=2, loss_at="last", batch=16, seed=0)
    rtrl_dist, rtrl_cos = gradient_agreement.agreement(grads["bptt"], grads["rtrl"])
    snap_dist, _ = gradient_agreement.agreement(grads["bptt"], grads["snap1"])
    assert rtrl_dist < 1e-4 and rtrl_cos > 0.9999
    assert snap_dist > 1e-2  # SnAp-1 drops the off-diagonal trace: not BPTT's gradient
    assert "cannot train gru" in grads["eprop"]  # an impossible pair is reported, not fatal


def test_main_prints_a_table(capsys):
    assert gradient_agreement.main(["--task", "cue_recall:delay=4,n_train=40,n_test=20",
                                    "--hidden", "8", "--layers", "1", "--batch", "8",
                                    "--methods", "rtrl"]) == 0
    assert "| 1 | rtrl | 0.0000 |" in capsys.readouterr().out
