"""Synthetic memory tasks, posed as classification, generated offline in milliseconds.

``cue_recall`` — delayed cue recall (one label per sequence).
    Input channels: ``classes`` cue channels, one *cue marker*, one *recall flag*
    (``F = classes + 2``). Step 0 shows the cue: a one-hot on the cue channels together with the
    marker. Then ``delay`` steps of Gaussian noise (std ``noise``) on every channel, with optional
    *distractor* pulses: with probability ``distractors`` per step, a one-hot on a random cue
    channel *without* the marker (so the net must remember the marked cue, not the latest pulse).
    The last step raises the recall flag. Label: the cue. ``T = delay + 2``.
    The information needed at the end is ``delay + 1`` steps back: a direct knob on how far
    credit must travel in time.

``cue_recall_steps`` — the same construction with per-step labels (``label_kind='step'``).
    A sequence is ``episodes`` back-to-back episodes, each ``1 + delay + recall_len`` steps: cue,
    delay, then ``recall_len`` steps with the recall flag on. ``y[n, t]`` is the current
    episode's cue on the recall steps and ``-1`` everywhere else. Every episode has a new cue,
    so the net must overwrite its memory, and the label history of a sample changes over time.

``pulse_count`` — integration over the whole sequence.
    Two channels of sparse unit pulses plus noise. Channel 0 carries ``k`` pulses at distinct
    random steps, ``k`` uniform in ``0..classes-1``; channel 1 carries an independent number of
    distractor pulses that must be ignored. Label: ``k``. A pulse on the very last step changes
    the answer, so no prefix of the sequence suffices; classes are balanced by construction.

Data generation is seeded by ``data_seed`` (fixed by default: every run sees the same data, as
with MNIST-1D); the run ``seed`` only chooses which training samples form the validation split.
The test set is generated from its own stream, independent of the training stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DataError, TaskData, make_task_data, torch_generator

__all__ = [
    "cue_recall_arrays",
    "pulse_count_arrays",
    "build_cue_recall",
    "build_cue_recall_long",
    "build_cue_recall_steps",
    "build_pulse_count",
]



def _check(task, cond, msg):
    if not cond:
        raise DataError(f"task {task!r}: {msg}")


def cue_recall_arrays(
    n: int, *, classes: int, delay: int, episodes: int, recall_len: int, noise: float,
    distractors: float, generator: torch.Generator,
):
    """Generate ``x [n, T, classes+2]`` and per-step labels ``y [n, T]`` (``-1`` off recall).

    ``T = episodes * (1 + delay + recall_len)``. Also returns the cues ``[n, episodes]``.
    """
    ep_len = 1 + delay + recall_len
    T = episodes * ep_len
    marker, flag = classes, classes + 1
    cues = torch.randint(classes, (n, episodes), generator=generator)

    # Position of every step inside its episode: 0 = cue, 1..delay = delay, rest = recall.
    phase = torch.arange(T) % ep_len
    is_cue = phase == 0
    is_delay = (phase >= 1) & (phase <= delay)
    is_recall = phase > delay
    episode_of_step = torch.arange(T) // ep_len

    step_cue = cues[:, episode_of_step]  # [n, T]: the cue of the episode each step belongs to
    x = torch.zeros(n, T, classes + 2)
    x[:, is_cue, :classes] = F.one_hot(step_cue[:, is_cue], classes).float()
    x[:, is_cue, marker] = 1.0
    x[:, is_recall, flag] = 1.0
    if distractors > 0:
        pulse = (torch.rand(n, T, generator=generator) < distractors) & is_delay
        channel = torch.randint(classes, (n, T), generator=generator)
        x[..., :classes] += F.one_hot(channel, classes).float() * pulse[..., None]
    if noise > 0:
        x += noise * torch.randn(x.shape, generator=generator)

    y = torch.where(is_recall, step_cue, torch.full_like(step_cue, -1))
    return x, y, cues


def pulse_count_arrays(n: int, *, length: int, classes: int, noise: float,
                       generator: torch.Generator):
    """Generate ``x [n, length, 2]`` and ``y [n]`` (the number of pulses on channel 0)."""

    def pulses(counts):
        # k distinct random steps per row: rank i.i.d. uniform scores, keep the k smallest.
        scores = torch.rand(n, length, generator=generator)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return (ranks < counts[:, None]).float()

    y = torch.randint(classes, (n,), generator=generator)
    distract = torch.randint(classes, (n,), generator=generator)
    x = torch.stack([pulses(y), pulses(distract)], dim=-1)
    if noise > 0:
        x += noise * torch.randn(x.shape, generator=generator)
    return x, y


def _sizes_ok(task, n_train, n_test, noise, val_fraction):
    _check(task, n_train >= 2, f"n_train must be >= 2, got {n_train}")
    _check(task, n_test >= 1, f"n_test must be >= 1, got {n_test}")
    _check(task, noise >= 0, f"noise must be >= 0, got {noise}")
    _check(task, 0 <= val_fraction < 1, f"val_fraction must be in [0, 1), got {val_fraction}")


def _build_cue(name, *, seed, delay, classes, episodes, recall_len, n_train, n_test, noise,
               distractors, data_seed, val_fraction, per_step) -> TaskData:
    _sizes_ok(name, n_train, n_test, noise, val_fraction)
    _check(name, delay >= 0, f"delay must be >= 0, got {delay}")
    _check(name, classes >= 2, f"classes must be >= 2, got {classes}")
    _check(name, episodes >= 1, f"episodes must be >= 1, got {episodes}")
    _check(name, recall_len >= 1, f"recall_len must be >= 1, got {recall_len}")
    _check(name, 0 <= distractors <= 1, f"distractors must be in [0, 1], got {distractors}")
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y, cues = cue_recall_arrays(
            n, classes=classes, delay=delay, episodes=episodes, recall_len=recall_len,
            noise=noise, distractors=distractors,
            generator=torch_generator(data_seed, name, split),
        )
        splits[split] = (x, y if per_step else cues[:, 0])
    T = x.shape[1]
    if per_step:
        what = (f"{episodes} episodes of cue, {delay}-step delay, {recall_len} recall steps; "
                f"label = current cue on recall steps, -1 elsewhere")
    else:
        what = f"cue at step 0, {delay}-step delay, recall flag at the last step; label = cue"
    return make_task_data(
        name=name, kind="sequence", num_classes=classes,
        label_kind="step" if per_step else "sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=f"delayed cue recall, {classes} classes, T={T}: {what}",
        info=dict(delay=delay, classes=classes, episodes=episodes, recall_len=recall_len,
                  noise=noise, distractors=distractors, data_seed=data_seed),
    )


def build_cue_recall(*, seed=0, data_dir=None, download=False, delay=20, classes=4,
                     n_train=2000, n_test=500, noise=0.1, distractors=0.0, data_seed=0,
                     val_fraction=0.1) -> TaskData:
    """Delayed cue recall with one label per sequence (see the module docstring)."""
    return _build_cue("cue_recall", seed=seed, delay=delay, classes=classes, episodes=1,
                      recall_len=1, n_train=n_train, n_test=n_test, noise=noise,
                      distractors=distractors, data_seed=data_seed, val_fraction=val_fraction,
                      per_step=False)


def build_cue_recall_long(*, seed=0, data_dir=None, download=False, delay=250, classes=4,
                          n_train=2000, n_test=500, noise=0.1, distractors=0.0, data_seed=0,
                          val_fraction=0.1) -> TaskData:
    """``cue_recall`` with a 250-step default delay: credit must travel over 250 steps."""
    return _build_cue("cue_recall_long", seed=seed, delay=delay, classes=classes, episodes=1,
                      recall_len=1, n_train=n_train, n_test=n_test, noise=noise,
                      distractors=distractors, data_seed=data_seed, val_fraction=val_fraction,
                      per_step=False)


def build_cue_recall_steps(*, seed=0, data_dir=None, download=False, delay=10, classes=4,
                           episodes=2, recall_len=3, n_train=2000, n_test=500, noise=0.1,
                           distractors=0.0, data_seed=0, val_fraction=0.1) -> TaskData:
    """Delayed cue recall with per-step labels, ``-1`` off the recall steps."""
    return _build_cue("cue_recall_steps", seed=seed, delay=delay, classes=classes,
                      episodes=episodes, recall_len=recall_len, n_train=n_train, n_test=n_test,
                      noise=noise, distractors=distractors, data_seed=data_seed,
                      val_fraction=val_fraction, per_step=True)


def build_pulse_count(*, seed=0, data_dir=None, download=False, length=30, classes=6,
                      n_train=2000, n_test=500, noise=0.1, data_seed=0,
                      val_fraction=0.1) -> TaskData:
    """Count the pulses on channel 0 over the whole sequence (see the module docstring)."""
    name = "pulse_count"
    _sizes_ok(name, n_train, n_test, noise, val_fraction)
    _check(name, classes >= 2, f"classes must be >= 2, got {classes}")
    _check(name, length >= classes - 1,
           f"length ({length}) must be >= classes - 1 ({classes - 1}) to fit the pulses")
    splits = {
        split: pulse_count_arrays(n, length=length, classes=classes, noise=noise,
                                  generator=torch_generator(data_seed, name, split))
        for split, n in (("train", n_train), ("test", n_test))
    }
    return make_task_data(
        name=name, kind="sequence", num_classes=classes, label_kind="sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=(f"count the pulses on channel 0 over T={length} steps (0..{classes - 1}), "
                     f"ignoring the pulses on channel 1"),
        info=dict(length=length, classes=classes, noise=noise, data_seed=data_seed),
    )
