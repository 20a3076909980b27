"""Each learning method's own settings (its ``Options`` dataclass), declared without torch.

Every field is a ``tsp train`` flag (``--snake-case``; its help the one-line docstring under the
field, read by ``cli.field_docs``), accepted only with a method that has it, and a keyword of
``make_learner``. What a field accepts is declared beside it with ``checked(...)``
(``validation.py``), so the command line, the Python API, presets and checkpoints refuse the same
bad values with the same message — and the command line does so before torch is imported.

The learners take their ``Options`` from here (``SigProp.Options is SigPropOptions``); the old
names stay importable from the learner modules. ``METHOD_OPTIONS`` maps each built-in method to
its class; a method registered at run time (``names.METHODS``) is asked for its ``Options`` by
importing its learner.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .errors import ConfigError
from .validation import checked, flag_name, validate


class _Checked:
    """Options are checked when they are built (as ``TrainConfig`` is), whoever builds them."""

    def __post_init__(self):
        method = _METHOD_OF.get(type(self))
        validate(self, label=(lambda name: f"{method} {flag_name(name)}") if method else None)


# ---------------------------------------------------------------------------------- sigprop

#: Values of sigprop's choice options (``sigprop._CHOICES`` is this same table; a test keeps them
#: in step).
SIGPROP_CHOICES = {
    "target_rows": ("class", "sample"),
    "loss": ("ce", "l2", "cosine"),
    "projection": ("learned", "fixed"),
    "schedule": ("every_step", "every_k", "sequence"),
    "prediction": ("readout", "nearest"),
    "spike_mode": ("voltage", "surrogate"),
    "local_steps": ("every", "placement"),
    "step_weight": ("uniform", "linear"),
}


@dataclass
class SigPropOptions(_Checked):
    target_rows: str = checked("sample", choices=SIGPROP_CHOICES["target_rows"])
    """Target rows: 'sample' (one per sample, follows its label; computed as C class rows for sequence labels) or 'class' (one per class; sequence labels only)."""
    loss: str = checked("ce", choices=SIGPROP_CHOICES["loss"])
    """Local loss: 'ce' (class-embedding CE with class rows, multi-positive batch-similarity CE with sample rows), 'l2' or 'cosine' (these two need --detach-target)."""
    # logits are h·sᵀ/τ: τ ≤ 0 flips or breaks them
    temperature: float = checked(2.0, gt=0)
    """Temperature τ of the similarity logits h·sᵀ/τ (and of nearest-row prediction); 2 was steadier than 1 with an update at every step."""
    normalize: bool = False
    """L2-normalise each row of h and s (per row and position; rows never mix) before comparing them (then try --temperature 0.1)."""
    detach_target: bool = False
    """Stop the gradient on the target side s of the local loss (required for l2/cosine)."""
    projection: str = checked("learned", choices=SIGPROP_CHOICES["projection"])
    """Projection P of the target into the first layer's drive: 'learned' (trained by layer 1's loss) or 'fixed' (random)."""
    # a standard deviation; 0 would give every class the same (zero) target drive
    projection_scale: float = checked(1.0, gt=0)
    """Standard deviation of P's random initialisation."""
    schedule: str = checked("every_step", choices=SIGPROP_CHOICES["schedule"])
    """When layers update: 'every_step', 'every_k' (every --update-k steps) or 'sequence' (once, local gradients summed over the sequence)."""
    update_k: int = checked(10, ge=1)
    """Steps between updates for schedule 'every_k'."""
    prediction: str = checked("nearest", choices=SIGPROP_CHOICES["prediction"])
    """Prediction at every step: 'nearest' (the most similar class target row, run through the same layers) or 'readout' (the learner's linear readout on the top layer)."""
    spike_mode: str = checked("voltage", choices=SIGPROP_CHOICES["spike_mode"])
    """lif only: the local loss acts on the membrane potential ('voltage') or on σ((v−θ)/width) beside the spike ('surrogate')."""
    # divides v − θ inside the sigmoid
    surrogate_width: float = checked(0.5, gt=0)
    """Width of the surrogate compartment σ((v−θ)/width) (spike_mode 'surrogate')."""
    local_steps: str = checked("every", choices=SIGPROP_CHOICES["local_steps"])
    """Steps where local losses are scored: 'every' labelled step (default, whatever --loss-at) or 'placement' (only where --loss-at scores)."""
    step_weight: str = checked("uniform", choices=SIGPROP_CHOICES["step_weight"])
    """Weight of step t's local losses: 'uniform', or 'linear' (2(t+1)/(T+1): late steps, which have seen more of the sequence, count more; mean weight 1)."""
    traces: bool = False
    """Per-layer SnAp-1 eligibility traces of each layer's own parameters: local losses credit earlier steps (O(B·p) per layer)."""
    # a multiple of --lr, which must itself be > 0
    readout_lr_scale: float = checked(1.0, gt=0)
    """The readout's learning rate as a multiple of --lr (the layers update at every step; the readout only where --loss-at scores)."""
    single_optimizer: bool = False
    """One optimizer over all layers instead of one per layer (the same update for Adam; fewer kernel launches)."""
    fused_optimizer: bool = True
    """Use the fused Adam/SGD kernels (faster per step than foreach on CPU)."""
    per_layer_backward: bool = False
    """Backpropagate each layer's loss as soon as it is computed (memory: one step of one layer) instead of one backward of the summed losses per step (faster)."""


# ---------------------------------------------------------------------------------- baselines


@dataclass
class NoOptions(_Checked):
    """This method has no options of its own."""


@dataclass
class TBPTTOptions(_Checked):
    k: int = checked(10, ge=1)
    """Truncation length: credit reaches at most k steps back."""
    update_every_chunk: bool = True
    """Apply an optimizer step after every chunk of k steps (online); else once per sequence."""


#: e-prop's learning-signal feedback and LIF eligibility variants.
FEEDBACK_KINDS = ("symmetric", "random")
LIF_TRACES = ("exact", "reset", "presynaptic")


@dataclass
class EPropOptions(_Checked):
    feedback: str = checked("symmetric", choices=FEEDBACK_KINDS)
    """Learning-signal feedback: 'symmetric' (B = readout weightᵀ) or 'random' (fixed random B)."""
    lif_trace: str = checked("exact", choices=LIF_TRACES)
    """LIF eligibility: 'exact' (own reset differentiated), 'reset' (paper: spike as constant), 'presynaptic' (filtered input only)."""
    # a step count; 0 is the documented "once per sequence"
    update_every: int = checked(0, ge=0)
    """Apply the accumulated update every k steps during the sequence (online e-prop); 0 = once per sequence."""


@dataclass
class ForwardGradientOptions(_Checked):
    tangents: int = checked(1, ge=1)
    """Number of random tangents k per batch (the estimate's variance falls as 1/k)."""
    vectorize: bool = True
    """Carry the k tangents in one pass with vmap; false loops over them (less memory)."""


GiB = 1024 ** 3


@dataclass
class RTRLOptions(_Checked):
    update_every: int = checked(0, ge=0)
    """Apply the gradient every k steps during the sequence (online); 0 = once per sequence."""
    max_influence_bytes: int = checked(2 * GiB, ge=1)
    """Refuse (IncompatibleError) when the influence B·n·p would need more bytes than this."""


@dataclass
class SnAp1Options(_Checked):
    update_every: int = checked(0, ge=0)
    """Apply the gradient every k steps during the sequence (online); 0 = once per sequence."""


#: method name -> its Options class (the built-in methods of ``names.METHODS``).
METHOD_OPTIONS: dict[str, type] = {
    "bptt": NoOptions,
    "tbptt": TBPTTOptions,
    "rtrl": RTRLOptions,
    "snap1": SnAp1Options,
    "eprop": EPropOptions,
    "fwdgrad": ForwardGradientOptions,
    "sigprop": SigPropOptions,
}
_METHOD_OF = {cls: method for method, cls in METHOD_OPTIONS.items()}


def options_class(method: str) -> type:
    """The ``Options`` dataclass of ``method`` (unknown method: ConfigError with a suggestion)."""
    from .names import METHODS

    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {method!r}{hint}; choose one of: "
                          f"{', '.join(METHODS)}")
    if method in METHOD_OPTIONS:
        return METHOD_OPTIONS[method]
    from .registry import learner_class  # registered at run time: ask its learner
    return learner_class(method).Options


def option_owners(methods) -> dict[str, list[str]]:
    """option name → the methods (of ``methods``) that have it."""
    owners: dict[str, list[str]] = {}
    for method in methods:
        for f in dataclasses.fields(options_class(method)):
            owners.setdefault(f.name, []).append(method)
    return owners


def build_options(method: str, options: dict, options_cls: type | None = None):
    """``Options(**options)`` of ``method``, refusing unknown keys (with a suggestion and the list
    of valid ones) and values outside each field's declared rule."""
    cls = options_cls or options_class(method)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"method {method!r} has no option(s) {', '.join(unknown)}{hint}; "
                          f"its options are: {valid}")
    try:
        chosen = cls(**options)
    except TypeError as err:  # e.g. a non-string key
        raise ConfigError(f"method {method!r}: bad options {options!r} ({err})") from None
    # types, finiteness and the range declared beside each field (validation.py); the built-in
    # classes checked themselves already, a class registered at run time may not have
    validate(chosen, label=lambda name: f"{method} {flag_name(name)}")
    return chosen
