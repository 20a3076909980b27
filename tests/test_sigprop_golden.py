"""Golden values of sigprop training: any change of the numbers a training step produces fails.

Each configuration trains a tiny model for 3 batches (cosine lr factor, fixed seeds) and is
fingerprinted by its parameters, its optimizer state, the per-batch ``loss``/``local_loss`` stats,
the ``predict`` logits and one ``gradient`` call afterwards. The fixture
(tests/fixtures/sigprop_golden.json) was recorded from the code *before* the per-step speed work
(issue 15, benchmarks/sigprop_speed.md) with

    python tests/test_sigprop_golden.py --record

What is compared:

- float32 and float64: the SHA-256 of every fingerprinted tensor's bytes (bit for bit), where
  this machine's kernels round as the recording machine's did (``platform_probe``: a hash of the
  kernels a training step uses on fixed inputs); elsewhere the hash cannot be compared;
- float64, everywhere: per-tensor sums and index-weighted sums, to rel 1e-9.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop.learner import cosine_lr_factor

FIXTURE = Path(__file__).parent / "fixtures" / "sigprop_golden.json"

#: name -> (model, layers, LearnerConfig kwargs, SigProp options, per-step labels)
RUNS = {
    # the bench's configuration (1 layer, sample rows computed as class rows, nearest, every)
    "gru1_defaults_every": ("gru", 1, dict(loss_at="every"), {}, False),
    "gru2_defaults_last_wd": ("gru", 2, dict(loss_at="last", weight_decay=0.05), {}, False),
    "gru2_every_k_readout_lr": ("gru", 2, dict(loss_at="every"),
                                dict(schedule="every_k", update_k=2, readout_lr_scale=2.0), False),
    "gru2_sequence_sgd": ("gru", 2, dict(loss_at="every", optimizer="sgd", lr=0.1),
                          dict(schedule="sequence"), False),
    "gru2_linear_placement": ("gru", 2, dict(loss_at="last"),
                              dict(step_weight="linear", local_steps="placement"), False),
    "gru2_single_foreach": ("gru", 2, dict(loss_at="every"),
                            dict(single_optimizer=True, fused_optimizer=False), False),
    "gru2_per_layer_backward": ("gru", 2, dict(loss_at="every"),
                                dict(per_layer_backward=True), False),
    "gru2_traces": ("gru", 2, dict(loss_at="every"), dict(traces=True), False),
    "lstm2_class_readout_clip": ("lstm", 2, dict(loss_at="last", grad_clip=0.1),
                                 dict(target_rows="class", prediction="readout"), False),
    "lstm1_normalize": ("lstm", 1, dict(loss_at="every"),
                        dict(normalize=True, temperature=0.1), False),
    "rnn2_step_labels_every_k": ("rnn", 2, dict(loss_at="every"),
                                 dict(schedule="every_k", update_k=2), True),
    "rnn2_l2_fixed": ("rnn", 2, dict(loss_at="every"),
                      dict(loss="l2", detach_target=True, projection="fixed"), False),
    "rnn1_cosine_class": ("rnn", 1, dict(loss_at="last"),
                          dict(loss="cosine", detach_target=True, projection="fixed",
                               target_rows="class", prediction="readout"), False),
    "lif2_voltage": ("lif", 2, dict(loss_at="every"), {}, False),
    "lif2_surrogate_last": ("lif", 2, dict(loss_at="last"), dict(spike_mode="surrogate"), False),
    "discrete2_every": ("discrete", 2, dict(loss_at="every"), {}, False),
}

STEPS, BATCH, FEATURES, HIDDEN, CLASSES = 5, 6, 3, 6, 3


def train_run(name: str, dtype: torch.dtype):
    """The tensors of one golden run, in a fixed order."""
    model_name, layers, cfg, options, per_step = RUNS[name]
    torch.manual_seed(2024)
    model = make_model(model_name, (STEPS, FEATURES), hidden=HIDDEN, layers=layers,
                       num_classes=CLASSES).to(dtype)
    cfg = {"lr": 1e-2, **cfg}
    learner = make_learner("sigprop", model, LearnerConfig(**cfg), **options)
    g = torch.Generator().manual_seed(7)
    tensors = []
    for batch in range(3):
        learner.set_lr_factor(cosine_lr_factor(batch, 3))
        scale = 3.0 if model_name == "lif" else 1.0  # make the spiking units spike
        x = scale * torch.randn(BATCH, STEPS, FEATURES, generator=g, dtype=dtype)
        y = torch.randint(-1 if per_step else 0, CLASSES, (BATCH, STEPS) if per_step else (BATCH,),
                          generator=g)
        stats = learner.train_batch(x, y)
        tensors += [torch.as_tensor(stats["loss"]).detach().to(dtype).reshape(1),
                    torch.as_tensor(stats["local_loss"]).detach().to(dtype).reshape(1)]
    tensors += [p.detach() for p in [*model.parameters(), *learner.own_parameters()]]
    tensors += [v for opt in learner.optimizers().values() for s in opt.state.values()
                for v in s.values() if torch.is_tensor(v)]
    tensors.append(learner.predict(x))
    tensors += list(learner.gradient(x, y).values())
    return tensors


def fingerprint(tensors):
    digest = hashlib.sha256(b"".join(t.detach().contiguous().cpu().numpy().tobytes()
                                     for t in tensors))
    sums = []
    for t in tensors:
        flat = t.detach().double().flatten()
        sums += [float(flat.sum()),
                 float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())]
    return digest.hexdigest(), sums


def platform_probe() -> str:
    """A hash of the kernels a training step uses (matmul, bmm, sigmoid, tanh, log-softmax, linear,
    the fused AdamW step) on fixed inputs, in float32 and float64."""
    parts = []
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(14, 9, generator=g, dtype=dtype)
        b = torch.randn(9, 18, generator=g, dtype=dtype)
        z = a @ b
        p = torch.randn(18, generator=g, dtype=dtype)
        opt = torch.optim.AdamW([p], lr=1e-2, fused=True)
        p.grad = z[0].clone()
        opt.step()
        parts += [z, torch.sigmoid(z), torch.tanh(z), torch.log_softmax(z, -1),
                  F.linear(a, b.T, b[0]), torch.bmm(a[None], b[None]), p.detach()]
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in parts)).hexdigest()


def record() -> dict:
    runs = {}
    for name in RUNS:
        hash32, _ = fingerprint(train_run(name, torch.float32))
        hash64, sums64 = fingerprint(train_run(name, torch.float64))
        runs[name] = {"float32_sha256": hash32, "float64_sha256": hash64, "float64_sums": sums64}
    return {"probe": platform_probe(), "torch": torch.__version__, "runs": runs}


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(RUNS))
def test_training_is_bit_identical_to_the_recorded_run(name):
    want = _fixture()
    run = want["runs"][name]
    hash64, sums64 = fingerprint(train_run(name, torch.float64))
    assert sums64 == pytest.approx(run["float64_sums"], rel=1e-9, abs=1e-12)
    if platform_probe() != want["probe"]:
        pytest.skip("this machine's kernels round differently from the recording machine's: "
                    "float64 checked to rel 1e-9 only")
    assert hash64 == run["float64_sha256"], "float64 training differs from the recorded bits"
    hash32, _ = fingerprint(train_run(name, torch.float32))
    assert hash32 == run["float32_sha256"], "float32 training differs from the recorded bits"


def test_every_configuration_is_recorded():
    assert set(_fixture()["runs"]) == set(RUNS)


def test_the_fingerprint_sees_a_one_ulp_change():
    """Positive controls: one parameter entry one ulp off changes the hash; 1e-7 relative off
    moves the sums outside the tolerance."""
    tensors = [t.clone() for t in train_run("gru1_defaults_every", torch.float64)]
    hash_before, sums_before = fingerprint(tensors)
    first_parameter = tensors[6].view(-1)  # after the 3 batches' (loss, local_loss)
    original = first_parameter[0].clone()
    first_parameter[0] = torch.nextafter(original, torch.tensor(float("inf"), dtype=torch.float64))
    assert fingerprint(tensors)[0] != hash_before
    first_parameter[0] = original * (1 + 1e-7)
    assert fingerprint(tensors)[1] != pytest.approx(sums_before, rel=1e-9, abs=1e-12)


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(record(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
