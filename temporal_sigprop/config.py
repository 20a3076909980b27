"""The settings of one training run (``TrainConfig``) and of ``tsp bench`` (``BenchConfig``),
checked when they are built.

Every field is a ``tsp train`` flag (``--snake-case``, its help the docstring under the field) and
a keyword of ``temporal_sigprop.train``; presets build the same dataclass. What each field accepts
is declared beside it (``checked(...)``, see ``validation.py``), so the command line, the Python
API and presets refuse the same bad values with the same message, before any data is built.

This module imports no torch: the command line checks a run's settings and prints its help
without paying for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field

from .errors import ConfigError
from .names import (LOSS_PLACEMENTS, LR_SCHEDULES, METHOD_NAMES, METHODS, MODEL_NAMES, OPTIMIZERS,
                    WANDB_MODES)
from .validation import MAX_SEED, Rule, check_value, checked, validate

#: Settings a method may recommend (``Learner.recommended``) for a run that leaves them unset,
#: and the values used when it does not.
METHOD_DEFAULTS = {"lr_schedule": "constant", "weight_decay": 0.0}

#: TrainConfig fields a resumed run may change (a larger --epochs extends a finished run). Any
#: other difference from the checkpoint's config is refused: its optimizer state, RNG state and
#: lr curve belong to the settings it was trained with.
RESUMABLE_CHANGES = ("epochs", "device", "eager", "threads", "data_dir", "download", "out",
                     "wandb", "wandb_project", "wandb_group", "resume", "overwrite",
                     "eval_batch_size", "progress", "dist_timeout", "cache", "cache_dir")

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class TrainConfig:
    task: str = "mnist1d"
    """Task name (see `tsp tasks`), `name:key=value,...` for task options, or `file:PATH.npz`."""
    model: str = checked("gru", choices=MODEL_NAMES)
    """Model: rnn, gru, lstm, lif, discrete, mlp, convgru."""
    method: str = "bptt"
    """Learning method: bptt, tbptt, rtrl, snap1, eprop, fwdgrad, sigprop."""
    hidden: int = checked(128, ge=1, le=65536)
    """Units (or channels, for convgru) per recurrent layer."""
    layers: int = checked(2, ge=1, le=64)
    """Number of stacked recurrent layers."""
    epochs: int = checked(10, ge=1, le=1_000_000)
    """Passes over the training split."""
    batch_size: int = checked(100, ge=1, le=10_000_000)
    """Sequences per training batch."""
    lr: float = checked(1e-3, gt=0)
    """Learning rate (the initial one under --lr-schedule cosine)."""
    lr_schedule: str | None = checked(None, choices=LR_SCHEDULES + (None,))
    """Learning-rate schedule over all training batches: 'cosine' (decays towards 0 by the last batch) or 'constant' (unset: the method's recommendation — cosine for sigprop, else constant)."""
    seed: int = checked(0, ge=0, le=MAX_SEED)
    """Seed for everything: data split and order, initialisation, the learner's randomness."""
    loss_at: str = checked("last", choices=LOSS_PLACEMENTS)
    """Loss placement for every method: 'last' (final step) or 'every' (every step)."""
    optimizer: str = checked("adam", choices=OPTIMIZERS)
    """Optimizer: adam (AdamW, foreach) or sgd."""
    weight_decay: float | None = checked(None, ge=0)
    """Decoupled weight decay (unset: the method's recommendation — 0.05 for sigprop, else 0)."""
    grad_clip: float = checked(0.0, ge=0)
    """Clip each update's gradient norm to this value (0 = off)."""
    device: str = "cpu"
    """Device: cpu or cuda (cuda:N for one of several GPUs)."""
    eager: bool = False
    """Disable the CUDA-graph fast path on --device cuda."""
    threads: int = checked(1, ge=0)
    """Intra-op CPU threads (1 measured fastest for small per-step matrices; 0 = torch default; at most the usable cores)."""
    data_dir: str | None = None
    """Folder with real data sets (default: $TSP_DATA_DIR or ~/.cache/temporal_sigprop)."""
    download: bool = False
    """Download a missing real data set where its licence allows."""
    cache: bool = True
    """Keep generated data sets (mnist1d, video_digits, audio_keywords) on disk and read them back on later runs; --no-cache neither reads nor writes the cache."""
    cache_dir: str | None = None
    """Folder of the generated-data cache (default: $TSP_CACHE_DIR, else $XDG_CACHE_HOME/temporal_sigprop/generated, else ~/.cache/temporal_sigprop/generated)."""
    out: str | None = None
    """Output folder: config.json, metrics.jsonl, summary.json, checkpoint.pt."""
    overwrite: bool = False
    """Start afresh in an --out folder that holds another run (its files are replaced)."""
    wandb: str | None = checked(None, choices=WANDB_MODES + (None,))
    """Log to Weights & Biases: 'offline' or 'online' (off by default; imported only when set)."""
    wandb_project: str = "temporal_sigprop"
    """wandb project name."""
    wandb_group: str | None = None
    """wandb group (e.g. one compare run)."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt if it exists."""
    max_batches: int = checked(0, ge=0)
    """Train on at most this many batches per epoch (0 = all): for smoke runs."""
    eval_batch_size: int = checked(500, ge=1, le=10_000_000)
    """Sequences per evaluation batch."""
    progress: bool = True
    """Show progress bars (automatically off when stderr is not a terminal)."""
    dp_mode: str = checked("allreduce", choices=("allreduce", "local_sgd"))
    """Under torchrun: 'allreduce' (every update uses the mean gradient of all ranks' shards, as one process on the whole batch) or 'local_sgd' (each rank steps on its own shard; parameters averaged every --local-sgd-every updates and at each epoch end)."""
    local_sgd_every: int = checked(8, ge=1)
    """--dp-mode local_sgd: updates between parameter averages."""
    dist_timeout: float = checked(300.0, gt=0)
    """Under torchrun: seconds a collective waits for the other ranks before the job stops with an error (a dead or stuck rank)."""
    layer_parallel: bool = False
    """Under torchrun, sigprop only: one rank per layer group, each step's rows streamed forward from rank to rank, instead of data parallel."""
    layer_parallel_chunk: int = checked(1, ge=1)
    """--layer-parallel: time steps whose rows travel in one message between layer groups (fewer, larger messages; the pipeline fills in (groups − 1)·K steps instead of groups − 1)."""
    options: dict = field(default_factory=dict)
    """The method's own options (e.g. {'k': 5} for tbptt); see `tsp train --help`."""
    model_options: dict = field(default_factory=dict)
    """Extra keyword arguments for the model's cells (e.g. {'tau_mem': 20.0} for lif)."""

    def __post_init__(self):
        validate(self)
        if self.method not in METHODS:  # looked up now: a method can be registered at run time
            close = difflib.get_close_matches(str(self.method), list(METHODS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown --method {self.method!r}{hint}; choose one of: "
                              f"{', '.join(METHODS)}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"unknown --device {self.device!r}; choose one of: cpu, cuda, "
                              "cuda:N")
        cores = usable_cores()
        if self.threads > cores:
            raise ConfigError(f"--threads {self.threads} is more than the {cores} usable CPU "
                              f"core(s) of this machine; use at most {cores} (or 0 for torch's "
                              "default)")
        for name in ("out", "data_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                # An empty path would mean "nowhere" to some callers and "here" to others.
                raise ConfigError(f"--{name.replace('_', '-')} is empty; give a folder (or leave "
                                  "the flag out)")
        for name in ("options", "model_options"):
            bad = [k for k in getattr(self, name) if not isinstance(k, str) or not k]
            if bad:
                raise ConfigError(f"{name}: option names must be non-empty strings, got {bad}")

    def resolved(self) -> "TrainConfig":
        """A copy with every unset (None) field in ``METHOD_DEFAULTS`` filled in: the method's
        own recommendation (``Learner.recommended``), else the harness's fallback."""
        unset = [name for name in METHOD_DEFAULTS if getattr(self, name) is None]
        if not unset:
            return self
        from .registry import learner_class
        recommended = {**METHOD_DEFAULTS, **learner_class(self.method).recommended}
        return dataclasses.replace(self, **{name: recommended[name] for name in unset})

    def learner_config(self):
        """The ``LearnerConfig`` of this run (the method's recommendations filled in)."""
        from .learner import LearnerConfig
        cfg = self.resolved()
        return LearnerConfig(lr=cfg.lr, loss_at=cfg.loss_at, optimizer=cfg.optimizer,
                             weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def check_before_loading(cfg: TrainConfig) -> None:
    """Refuse what can be refused about a run without torch or data: the method × model pair,
    the method's options (names and ranges), the model's options and the task spec (name,
    options, limits). The harness checks the same again; the command line calls this first so
    that a usage error answers at once."""
    from tasks.registry import check_task_spec

    from .method_options import build_options
    from .model_options import check_model_options
    from .registry import check_pair

    check_pair(cfg.method, cfg.model)
    check_task_spec(cfg.task)
    build_options(cfg.method, cfg.options)
    check_model_options(cfg.model, cfg.model_options)


@dataclass
class BenchConfig:
    model: str = checked("gru", choices=MODEL_NAMES)
    """Model whose cost is measured (every method trains the same architecture)."""
    hidden: int = checked(32, ge=1, le=65536)
    """Hidden size for the sequence-length sweep."""
    layers: int = checked(1, ge=1, le=64)
    """Recurrent layers."""
    batch_size: int = checked(8, ge=1, le=1_000_000)
    """Sequences per batch."""
    input_size: int = checked(8, ge=1, le=1_000_000)
    """Features per step of the random input."""
    classes: int = checked(10, ge=2, le=100_000)
    """Classes of the random labels."""
    methods: list = field(default_factory=lambda: list(METHOD_NAMES))
    """Methods to measure (default: every registered method)."""
    lengths: list = field(default_factory=lambda: [16, 64, 256, 1024, 4096])
    """Sequence lengths of the length sweep (hidden = --hidden)."""
    hiddens: list = field(default_factory=lambda: [16, 32, 64, 128, 256])
    """Hidden sizes of the width sweep (T = --hidden-length)."""
    hidden_length: int = checked(64, ge=1, le=10_000_000)
    """Sequence length of the width sweep."""
    loss_at: str = checked("every", choices=LOSS_PLACEMENTS)
    """Loss placement (every method the same)."""
    repeats: int = checked(3, ge=1, le=1000)
    """Timed train_batch calls per point (median taken); fewer if the time budget runs out."""
    time_budget: float = checked(20.0, gt=0)
    """Seconds one train_batch may take; longer (measured or predicted) is marked 'too slow'."""
    memory_budget_gb: float = checked(4.0, gt=0)
    """Training memory a point may be predicted to need; more is marked 'oom' without running."""
    device: str = "cpu"
    """Device: cpu or cuda."""
    threads: int = checked(1, ge=0)
    """Intra-op CPU threads (stated in the output; compare ratios, not absolute times)."""
    seed: int = checked(0, ge=0, le=MAX_SEED)
    """Seed of the random model and data."""
    method_options: dict = field(default_factory=dict)
    """Per-method options, e.g. {'tbptt': {'k': 10}}."""

    def __post_init__(self):
        validate(self)
        # the sweeps and the device follow the same rules as a training run's settings
        for name, values, largest in (("lengths", self.lengths, 10_000_000),
                                      ("hiddens", self.hiddens, 65536)):
            if not isinstance(values, list) or not values:
                raise ConfigError(f"--{name} must be a non-empty list of positive integers")
            for value in values:
                check_value(name, value, int, Rule(ge=1, le=largest))
        for method in self.methods:
            TrainConfig(method=method)
        TrainConfig(device=self.device, threads=self.threads)

    def key(self) -> dict:
        return dataclasses.asdict(self)
