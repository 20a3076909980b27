"""Measuring cost the way docs/design.md defines it: peak live saved bytes, FLOPs, wall time, RSS."""

from __future__ import annotations

import resource
import sys
import time
import warnings
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        return -1


class SavedTensorMeter:
    """Peak live bytes of the tensors autograd saves for backward.

    Every tensor autograd saves goes through ``pack``; it is counted (numel × element size, once per
    tensor even if saved by several ops) until the last packed reference to it is freed — which
    happens when backward releases the graph, or when the graph is dropped. Parameters and the
    input batch are excluded: they exist whatever the learning rule. ``peak`` is the largest total
    seen while the meter was active.

    Use:  ``with SavedTensorMeter(exclude=[*model.parameters(), x]) as meter: ...; meter.peak``
    """

    def __init__(self, exclude=()):
        self._excluded = {_storage_ptr(t) for t in exclude if isinstance(t, torch.Tensor)}
        self._refs: dict[tuple, int] = {}
        self.live = 0
        self.peak = 0

    class _Handle:
        """Packed object: its finaliser releases the tensor's share of the count."""
        __slots__ = ("meter", "key", "tensor")

        def __init__(self, meter, key, tensor):
            self.meter, self.key, self.tensor = meter, key, tensor

        def __del__(self):
            self.meter._release(self.key)

    def _pack(self, t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter) or _storage_ptr(t) in self._excluded:
            return t
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device)
        if key not in self._refs:
            self._refs[key] = 0
            self.live += t.numel() * t.element_size()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        # Hold a detached alias: holding ``t`` itself would tie the handle to the graph that
        # saved it, a reference cycle the collector cannot free when part of the graph is never
        # walked by backward (the count would then grow forever).
        return SavedTensorMeter._Handle(self, key, t.detach())

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, SavedTensorMeter._Handle) else packed

    def _release(self, key) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            _, dtype, shape, _, _ = key
            self.live -= torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """FLOPs of ``fn(*args)`` as counted by ``torch.utils.flop_counter`` (matmuls/convolutions)."""
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timer(device: torch.device):
    """Wall time of the block, with the device synchronised at both ends."""
    box = {}
    synchronize(device)
    start = time.perf_counter()
    yield box
    synchronize(device)
    box["seconds"] = time.perf_counter() - start


def train_batch_memory(learner, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, dict]:
    """Run ``learner.train_batch(x, y)`` once under a ``SavedTensorMeter``.

    Returns ``(saved_peak, state_bytes, stats)``; ``training_memory_bytes`` (docs/design.md) is
    ``saved_peak + state_bytes`` (peak live saved tensors beyond the parameters and the input
    batch, plus the learner's own state). Shared by the harness and ``tsp bench``.
    """
    exclude = [*learner.model.parameters(), *learner.own_parameters(), x]
    with SavedTensorMeter(exclude=exclude) as meter:
        stats = learner.train_batch(x, y)
    return meter.peak, learner.state_bytes, stats


def allocation_peak(fn) -> int:
    """Peak bytes of CPU tensor allocations while ``fn`` runs, above what was live before
    (the profiler's memory events replayed in time order). A cross-check of the saved-tensor
    meter that sees every allocation, not only what autograd saves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "profiler clears events at the end…"
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
