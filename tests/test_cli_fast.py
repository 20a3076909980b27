"""A command line that answers at once, option ranges declared beside each option, and the
on-disk cache of generated data sets.

- ``--help``, ``tsp tasks`` and every usage error run without importing torch (checked in a fresh
  interpreter: the test process has torch loaded already), and a bad run is refused before any
  data set is built.
- Every method option's range is declared in ``method_options.py`` and refused with exit code 2
  and one line, by the command line and the Python API alike.
- A generated data set is built once and read back (same tensors, generator not called); a
  corrupt entry is rebuilt; ``--no-cache`` neither reads nor writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tasks.mnist1d_task as mnist1d_task
from tasks import cache as data_cache
from tasks import get_task
from tasks.registry import TaskEntry, get_entry
from temporal_sigprop import ConfigError, make_learner, make_model
from temporal_sigprop.cli import field_docs, main
from temporal_sigprop.method_options import (METHOD_OPTIONS, SIGPROP_CHOICES, SigPropOptions,
                                             build_options)
from temporal_sigprop.model_options import MODEL_OPTIONS, check_model_options
from temporal_sigprop.names import METHODS
from temporal_sigprop.registry import learner_class

ROOT = Path(__file__).resolve().parent.parent
TASK = "cue_recall:delay=3,n_train=60,n_test=20"
HEAVY = ("torch", "torchaudio", "numpy", "aeon", "wandb", "mnist1d", "einops")

# One fresh interpreter runs every command; after each it records which heavy modules had been
# imported. A command that needs torch (the last one) is the positive control.
_PROBE = r"""
import contextlib, io, json, sys
from temporal_sigprop.cli import main
HEAVY = %r
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # --help and argparse's own errors
            code = stop.code
    results.append({"argv": argv, "code": code, "err": err.getvalue(), "out": out.getvalue(),
                    "heavy": [m for m in HEAVY if m in sys.modules]})
print(json.dumps(results))
"""

FAST_COMMANDS = [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["tasks"], 0),
    (["tasks", "--json"], 0),
    (["compare", "--help"], 0),
    (["bench", "--help"], 0),
    (["train", "--bogus"], 2),
    (["train", "--method", "sigprob"], 2),
    (["train", "--model", "gruu"], 2),
    (["train", "--task", "mnist1dd"], 2),
    (["train", "--batch-size", "0"], 2),
    (["train", "--method", "eprop", "--model", "gru"], 2),
    (["train", "--method", "sigprop", "--temperature", "0"], 2),
    (["train", "--method", "tbptt", "--k", "0"], 2),
    (["train", "--k", "3"], 2),
    (["train", "--model", "lif", "--model-options", "tau=3"], 2),
    (["train", "--task", "cue_recall:delay=100000000"], 2),
    (["compare", "--preset", "quik"], 2),
    (["compare", "--methods", "sigpro"], 2),
    (["bench", "--model", "grr"], 2),
]


def _probe(commands) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY,), json.dumps(commands)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_help_tasks_and_usage_errors_never_import_torch():
    control = ["train", "--task", TASK, "--hidden", "4", "--layers", "1", "--epochs", "1",
               "--no-progress", "--no-cache"]
    results = _probe([argv for argv, _ in FAST_COMMANDS] + [control])
    for (argv, code), result in zip(FAST_COMMANDS, results):
        assert result["code"] == code, (argv, result["err"])
        assert result["heavy"] == [], (argv, result["heavy"])
        if code == 2:  # one line, no traceback
            lines = result["err"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tsp"), (argv, result["err"])
    # positive control: a command that trains does import torch, and the probe sees it
    assert results[-1]["code"] == 0, results[-1]["err"]
    assert "torch" in results[-1]["heavy"]


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors (unknown flags)
        return stop.code


def test_did_you_mean_for_every_kind_of_name(capsys):
    cases = [
        (["train", "--method", "sigprob"], "'sigprop'"),
        (["train", "--model", "lstn"], "'lstm'"),
        (["train", "--task", "pulse_cont"], "'pulse_count'"),
        (["train", "--method", "sigprop", "--temprature", "1"], "--temperature"),
        (["train", "--model", "lif", "--model-options", "treshold=1"], "'threshold'"),
        (["train", "--method", "sigprop", "--schedule", "every_kk"], "'every_k'"),
        (["compare", "--preset", "smok"], "'smoke'"),
        (["compare", "--models", "gruu"], "'gru'"),
    ]
    for argv, suggestion in cases:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"did you mean {suggestion}" in err, (argv, err)
    # the Python API suggests too
    with pytest.raises(ConfigError, match="did you mean 'tangents'"):
        build_options("fwdgrad", {"tangent": 2})


# ------------------------------------------------------------------------ method option ranges

BAD_OPTIONS = [
    ("sigprop", "--temperature", "0", "> 0"),
    ("sigprop", "--temperature", "-1", "> 0"),
    ("sigprop", "--temperature", "nan", "finite"),
    ("sigprop", "--temperature", "inf", "finite"),
    ("sigprop", "--projection-scale", "0", "> 0"),
    ("sigprop", "--projection-scale", "nan", "finite"),
    ("sigprop", "--update-k", "0", "≥ 1"),
    ("sigprop", "--surrogate-width", "0", "> 0"),
    ("sigprop", "--readout-lr-scale", "0", "> 0"),
    ("sigprop", "--readout-lr-scale", "inf", "finite"),
    ("sigprop", "--target-rows", "rows", "class, sample"),
    ("sigprop", "--loss", "mse", "ce, l2, cosine"),
    ("sigprop", "--step-weight", "square", "uniform, linear"),
    ("tbptt", "--k", "0", "≥ 1"),
    ("tbptt", "--k", "-3", "≥ 1"),
    ("fwdgrad", "--tangents", "0", "≥ 1"),
    ("eprop", "--update-every", "-1", "≥ 0"),
    ("eprop", "--feedback", "randm", "symmetric, random"),
    ("eprop", "--lif-trace", "full", "exact, reset, presynaptic"),
    ("rtrl", "--update-every", "-1", "≥ 0"),
    ("rtrl", "--max-influence-bytes", "0", "≥ 1"),
    ("snap1", "--update-every", "-2", "≥ 0"),
]


@pytest.fixture
def no_data_built(monkeypatch):
    """Fails the test if anything resolves a task builder (i.e. starts building data)."""
    def refuse(self):
        raise AssertionError(f"a data set was built ({self.name}) before the refusal")
    monkeypatch.setattr(TaskEntry, "resolve", refuse)


@pytest.mark.parametrize("method, flag, value, accepted", BAD_OPTIONS)
def test_each_bad_method_option_exits_2_with_one_line(method, flag, value, accepted, capsys,
                                                      no_data_built):
    model = "lif" if method == "eprop" else "gru"
    code = main(["train", "--task", TASK, "--model", model, "--method", method, flag, value,
                 "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsp: error:"), err
    assert flag in lines[0] and accepted in lines[0], lines[0]


@pytest.mark.parametrize("method, flag, value, accepted", BAD_OPTIONS)
def test_the_python_api_refuses_the_same_values(method, flag, value, accepted):
    name = flag[2:].replace("-", "_")
    kind = {f.name: f.type for f in dataclasses.fields(METHOD_OPTIONS[method])}[name]
    parsed = value if kind == "str" else (float(value) if kind == "float" else int(value))
    with pytest.raises(ConfigError, match=flag):
        build_options(method, {name: parsed})
    with pytest.raises(ConfigError, match=flag):  # the dataclass checks itself when built
        METHOD_OPTIONS[method](**{name: parsed})


def test_valid_boundary_values_are_accepted():
    """Positive control: the rules refuse only what they should."""
    assert build_options("tbptt", {"k": 1}).k == 1
    assert build_options("rtrl", {"update_every": 0}).update_every == 0
    assert build_options("sigprop", {"temperature": 1e-3, "projection_scale": 0.01,
                                      "update_k": 1}).temperature == 1e-3
    model = make_model("gru", (5, 3), hidden=4, layers=1, num_classes=3)
    assert make_learner("sigprop", model, temperature=0.5).options.temperature == 0.5
    with pytest.raises(ConfigError, match="--temperature"):
        make_learner("sigprop", model, temperature=0.0)


def test_method_options_are_the_learners_options_and_documented():
    import baselines.bptt
    import temporal_sigprop.sigprop as sigprop

    assert set(METHOD_OPTIONS) == set(METHODS)
    for method, cls in METHOD_OPTIONS.items():
        assert learner_class(method).Options is cls, method
        docs = field_docs(cls)
        assert set(docs) == {f.name for f in dataclasses.fields(cls)}, method  # one line each
    assert baselines.bptt.TBPTTOptions is METHOD_OPTIONS["tbptt"]  # old names still import
    assert sigprop.SigPropOptions is SigPropOptions and sigprop.Options is SigPropOptions
    # the learner's own check of its choices agrees with the declared rules
    assert {k: tuple(v) for k, v in sigprop._CHOICES.items()} == SIGPROP_CHOICES
    for name, choices in SIGPROP_CHOICES.items():
        rule = next(f for f in dataclasses.fields(SigPropOptions) if f.name == name).metadata["rule"]
        assert rule.choices == choices


# ------------------------------------------------------------------------ model options, tasks


def test_declared_model_options_match_the_cells_signatures():
    from temporal_sigprop.models import CELLS
    from temporal_sigprop.models.conv import CONVGRU_OPTION_RULES, build_convgru

    def keyword_defaults(fn):
        return {p.name: p.default for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty}

    for name, options in MODEL_OPTIONS.items():
        target = build_convgru if name == "convgru" else CELLS[name].__init__
        assert {k: o.default for k, o in options.items()} == keyword_defaults(target), name
        for key, option in options.items():
            assert option.kind is type(option.default), (name, key)
    assert CELLS["lif"].option_rules == {k: o.rule for k, o in MODEL_OPTIONS["lif"].items()
                                         if o.rule is not None}
    assert CONVGRU_OPTION_RULES == {k: o.rule for k, o in MODEL_OPTIONS["convgru"].items()}
    assert check_model_options("lif", {"tau_mem": 20}) == {"tau_mem": 20.0}
    with pytest.raises(ConfigError, match="tau_mem must be > 0"):
        check_model_options("lif", {"tau_mem": 0})


@pytest.mark.parametrize("spec, small", [
    ("cue_recall", dict(n_train=40, n_test=10)),
    ("pulse_count", dict(n_train=40, n_test=10)),
    ("cue_recall_steps", dict(n_train=40, n_test=10)),
    ("video_digits", dict(n_train=20, n_test=10)),
])
def test_the_declared_task_table_is_what_the_builder_makes(spec, small):
    """``tsp tasks`` lists the registry's declaration without building anything; what the
    builder makes at the declared default options has the declared shape and classes."""
    entry = get_entry(spec)
    data = get_task(spec, cache=False, **small)  # sizes do not change the shape
    assert data.kind == entry.kind and data.source == entry.source
    assert data.input_shape == tuple(entry.input_shape) and data.num_classes == entry.classes


def test_tasks_listing_has_column_headers(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["TASK", "KIND", "SHAPE", "(T×...)", "CLASSES"]
    assert lines[1].split()[0] == "mnist1d"


# ------------------------------------------------------------------------ the data cache


def _small_video(**extra):
    return get_task("video_digits", frames=8, size=16, n_train=12, n_test=6, **extra)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt")) if folder.exists() else []


def _all_tensors(data):
    return [t for split in (data.train, data.val, data.test) for t in split.tensors]


@pytest.fixture
def counted_mnist1d(monkeypatch):
    """MNIST-1D's generator replaced by a small, counted stand-in (the real one takes seconds);
    the in-process memo is cleared so each build goes to the disk cache."""
    calls = []

    def fake(data_seed):
        calls.append(data_seed)
        g = torch.Generator().manual_seed(data_seed)
        return {"x": torch.randn(50, 40, generator=g), "y": torch.arange(50) % 10,
                "x_test": torch.randn(20, 40, generator=g), "y_test": torch.arange(20) % 10}

    monkeypatch.setattr(mnist1d_task, "_generate", fake)
    mnist1d_task.mnist1d_arrays.cache_clear()
    yield calls
    mnist1d_task.mnist1d_arrays.cache_clear()


def test_second_build_reads_the_cache_and_gives_identical_tensors(tmp_path, counted_mnist1d):
    first = get_task("mnist1d", seed=0, cache_dir=tmp_path)
    assert counted_mnist1d == [42] and len(_entries(tmp_path)) == 1
    mnist1d_task.mnist1d_arrays.cache_clear()
    second = get_task("mnist1d", seed=0, cache_dir=tmp_path)
    assert counted_mnist1d == [42]  # the generator was not called again
    assert all(torch.equal(a, b) for a, b in zip(_all_tensors(first), _all_tensors(second)))
    # the run seed only picks the validation carve: the same entry serves another seed
    mnist1d_task.mnist1d_arrays.cache_clear()
    get_task("mnist1d", seed=3, cache_dir=tmp_path)
    assert counted_mnist1d == [42] and len(_entries(tmp_path)) == 1
    # another generation option is another entry
    get_task("mnist1d", seed=0, data_seed=7, cache_dir=tmp_path)
    assert counted_mnist1d == [42, 7] and len(_entries(tmp_path)) == 2


def test_cached_video_equals_a_fresh_build(tmp_path):
    fresh = _small_video(cache=False)
    built = _small_video(cache_dir=tmp_path)
    read = _small_video(cache_dir=tmp_path)
    assert len(_entries(tmp_path)) == 1
    for a, b, c in zip(_all_tensors(fresh), _all_tensors(built), _all_tensors(read)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_no_cache_neither_reads_nor_writes(tmp_path, counted_mnist1d):
    get_task("mnist1d", cache=False, cache_dir=tmp_path)
    assert _entries(tmp_path) == [] and counted_mnist1d == [42]
    mnist1d_task.mnist1d_arrays.cache_clear()
    get_task("mnist1d", cache_dir=tmp_path)  # writes the entry
    (entry,) = _entries(tmp_path)
    before = entry.stat().st_mtime_ns
    mnist1d_task.mnist1d_arrays.cache_clear()
    get_task("mnist1d", cache=False, cache_dir=tmp_path)
    assert counted_mnist1d == [42, 42, 42]  # not read: generated again
    assert entry.stat().st_mtime_ns == before  # not written


def test_the_environment_turns_the_cache_off_and_moves_it(tmp_path, monkeypatch, counted_mnist1d):
    monkeypatch.setenv(data_cache.ENV_DIR, str(tmp_path / "env"))
    get_task("mnist1d")
    assert len(_entries(tmp_path / "env")) == 1
    monkeypatch.setenv(data_cache.ENV_OFF, "1")
    mnist1d_task.mnist1d_arrays.cache_clear()
    get_task("mnist1d", cache_dir=tmp_path / "off")
    assert _entries(tmp_path / "off") == [] and counted_mnist1d == [42, 42]
    monkeypatch.delenv(data_cache.ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache.cache_folder() == tmp_path / "xdg" / "temporal_sigprop" / "generated"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong key"])
def test_a_corrupt_entry_is_rebuilt_not_fatal(tmp_path, counted_mnist1d, capsys, damage):
    good = get_task("mnist1d", cache_dir=tmp_path)
    (entry,) = _entries(tmp_path)
    if damage == "garbage":
        entry.write_bytes(b"not a torch file")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    else:  # a valid file under another entry's name
        torch.save({"key": "0" * 64, "tensors": {"x": torch.zeros(1)}}, entry)
    mnist1d_task.mnist1d_arrays.cache_clear()
    again = get_task("mnist1d", cache_dir=tmp_path)
    assert counted_mnist1d == [42, 42]  # rebuilt
    assert all(torch.equal(a, b) for a, b in zip(_all_tensors(good), _all_tensors(again)))
    err = capsys.readouterr().err
    assert "unreadable" in err and "building it again" in err and len(err.splitlines()) == 1
    mnist1d_task.mnist1d_arrays.cache_clear()
    get_task("mnist1d", cache_dir=tmp_path)  # the rewritten entry reads back
    assert counted_mnist1d == [42, 42]


def test_an_unwritable_cache_costs_the_cache_not_the_run(tmp_path, counted_mnist1d, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    data = get_task("mnist1d", cache_dir=blocker / "cache")
    assert len(data.train) > 0
    assert "could not write the data cache entry" in capsys.readouterr().err


def test_train_and_compare_flags_reach_the_cache(tmp_path, capsys):
    base = ["train", "--task", "video_digits:frames=8,size=16,n_train=12,n_test=6",
            "--model", "gru", "--hidden", "4", "--layers", "1", "--epochs", "2", "--batch-size",
            "6", "--no-progress", "--cache-dir", str(tmp_path / "c")]
    assert main(base + ["--no-cache"]) == 0
    assert _entries(tmp_path / "c") == []
    assert main(base) == 0
    assert len(_entries(tmp_path / "c")) == 1
    # one line per epoch on stderr, with validation and test accuracy
    epoch_lines = [line for line in capsys.readouterr().err.splitlines()
                   if line.startswith("epoch ")]
    assert len(epoch_lines) == 4 and epoch_lines[-1].startswith("epoch 2/2")
    assert " val " in epoch_lines[-1] and " test " in epoch_lines[-1]
    # compare's --no-cache / --cache-dir reach its worker processes through the environment,
    # and are undone afterwards
    from temporal_sigprop.subcommands import _data_cache_environment
    before = {k: os.environ.get(k) for k in (data_cache.ENV_OFF, data_cache.ENV_DIR)}
    with _data_cache_environment(False, str(tmp_path / "d")):
        assert os.environ[data_cache.ENV_OFF] == "1"
        assert os.environ[data_cache.ENV_DIR] == str(tmp_path / "d")
        assert not data_cache.cache_enabled()
    assert {k: os.environ.get(k) for k in before} == before


def test_cache_and_cache_dir_do_not_change_a_compare_runs_key():
    from temporal_sigprop.compare import run_key
    from temporal_sigprop.config import TrainConfig

    a = TrainConfig(task=TASK)
    b = TrainConfig(task=TASK, cache=False, cache_dir="/elsewhere")
    assert run_key(a, {}) == run_key(b, {})
    assert run_key(a, {}) != run_key(TrainConfig(task=TASK, seed=1), {})


# ------------------------------------------------------------------------ wandb


def test_wandb_is_started_without_the_deprecated_boolean_reinit(monkeypatch, tmp_path):
    import wandb

    from temporal_sigprop.config import TrainConfig
    from temporal_sigprop.harness import _WandbLogger

    real = inspect.signature(wandb.init).parameters["reinit"]  # the installed wandb's keyword
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", fake_init)
    with pytest.raises(RuntimeError, match="stop here"):
        _WandbLogger(TrainConfig(task=TASK, wandb="offline", out=str(tmp_path)))
    assert isinstance(seen["reinit"], str) and repr(seen["reinit"]) in str(real.annotation)


@pytest.mark.slow
def test_wandb_offline_prints_no_deprecation_warning(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "temporal_sigprop.cli", "train", "--task", TASK, "--hidden", "4",
         "--layers", "1", "--epochs", "1", "--no-progress", "--wandb", "offline", "--out",
         str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert "offline" in done.stderr  # wandb did run (positive control)
    assert "deprecated" not in done.stderr.lower(), done.stderr
