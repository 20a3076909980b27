"""What the UCR/UEA archive tasks are, as plain data: the two archives and the sets that ship
offline with their shapes and published reference accuracies.

Kept apart from ``tasks.archive`` (which reads the files and needs numpy and torch) so that the
registry, ``tsp tasks`` and a check of a task spec import nothing heavy. ``tasks.archive``'s
builders read these same tables; a test checks the shapes against the built data.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Archive", "ARCHIVES", "OFFLINE_SETS", "DEFAULT_OPTIONS"]


@dataclass(frozen=True)
class Archive:
    """One of the two archives: its task prefix and where its sets live on disk."""

    prefix: str
    """Task-name prefix: ``uea`` or ``ucr``."""
    title: str
    """How the archive is called in messages."""
    folder: str
    """Sub-folder of the data root that holds one folder per set (the bulk zip's top folder)."""
    bulk_zip: str
    """The archive's all-sets zip whose layout the data folder follows."""


ARCHIVES = {
    "uea": Archive("uea", "UEA multivariate archive", "Multivariate_ts", "Multivariate2018_ts.zip"),
    "ucr": Archive("ucr", "UCR univariate archive", "Univariate_ts", "Univariate2018_ts.zip"),
}

# --------------------------------------------------------------------------------------------
# The sets that ship inside aeon's wheel (checked file by file in aeon 1.3.0 and 1.6.0).
# ``input_shape`` is (longest case over both splits, channels); the registry lists these values
# without reading a file, and a test checks them against the built data.
#
# Reference accuracies on the official train/test split, each with its source:
_UCR_SUMMARY = ("UCR Time Series Archive 2018, DataSummary.csv (Dau et al., 'The UCR time "
                "series archive', IEEE/CAA J. Autom. Sinica 6(6), 2019): 1 - published error")
_TSML_UNI = ("tsml-eval results/classification/Univariate/ROCKET_accuracy.csv, fold 0 = the "
             "archive's split (Middlehurst, Schaefer & Bagnall, 'Bake off redux', 2024)")
_TSML_MULTI = ("tsml-eval results/classification/Multivariate/{}_accuracy.csv, fold 0 = the "
               "archive's split (Ruiz et al., 'The great multivariate time series "
               "classification bake off', DMKD 35, 2021)")


def _ref(method: str, accuracy: float, source: str) -> dict:
    return {"method": method, "accuracy": accuracy, "source": source}


def _ucr_refs(ed_error: float, dtw_error: float, rocket: float | None = None) -> tuple:
    refs = [_ref("1-NN Euclidean", round(1 - ed_error, 4), _UCR_SUMMARY),
            _ref("1-NN DTW, window learned on train", round(1 - dtw_error, 4), _UCR_SUMMARY)]
    if rocket is not None:
        refs.append(_ref("ROCKET", rocket, _TSML_UNI))
    return tuple(refs)


OFFLINE_SETS = {
    "uea:JapaneseVowels": dict(
        input_shape=(29, 12), classes=9, sizes=(270, 370),
        description="UEA JapaneseVowels: which of 9 male speakers said /ae/, from 12 LPC "
                    "cepstrum coefficients per frame; 7-29 frames, left-padded to 29",
        # No published figure on this split that could be attributed was found.
        reference=()),
    "uea:BasicMotions": dict(
        input_shape=(100, 6), classes=4, sizes=(40, 40),
        description="UEA BasicMotions: standing, walking, running or badminton, from a "
                    "smartwatch's 3-axis accelerometer and gyroscope; 10 s at 10 Hz",
        reference=(_ref("1-NN DTW (dependent)", 0.975, _TSML_MULTI.format("1NN-DTW-D")),
                   _ref("ROCKET", 1.0, _TSML_MULTI.format("ROCKET")))),
    "ucr:GunPoint": dict(
        input_shape=(150, 1), classes=2, sizes=(50, 150),
        description="UCR GunPoint: drawing a gun vs pointing a finger, from the x-coordinate "
                    "of the actor's hand; 150 steps",
        reference=_ucr_refs(0.0867, 0.0867, 1.0)),
    "ucr:ArrowHead": dict(
        input_shape=(251, 1), classes=3, sizes=(36, 175),
        description="UCR ArrowHead: three kinds of arrowhead, from the outline of the point "
                    "as an angle series; 251 steps",
        reference=_ucr_refs(0.2000, 0.2000, 0.8229)),
    "ucr:ItalyPowerDemand": dict(
        input_shape=(24, 1), classes=2, sizes=(67, 1029),
        description="UCR ItalyPowerDemand: winter or summer day, from 24 hourly values of "
                    "Italy's electricity demand",
        reference=_ucr_refs(0.0447, 0.0447, 0.9699)),
    "ucr:OSULeaf": dict(
        input_shape=(427, 1), classes=6, sizes=(200, 242),
        description="UCR OSULeaf: six leaf species, from the leaf's outline as a 1-D series; "
                    "427 steps",
        reference=_ucr_refs(0.4793, 0.3884, 0.9421)),
    "ucr:ACSF1": dict(
        input_shape=(1460, 1), classes=10, sizes=(100, 100),
        description="UCR ACSF1: ten kinds of home appliance, from their power consumption; "
                    "1460 steps",
        reference=_ucr_refs(0.4600, 0.3800, 0.88)),
    "ucr:PickupGestureWiimoteZ": dict(
        input_shape=(361, 1), classes=10, sizes=(50, 50),
        description="UCR PickupGestureWiimoteZ: ten gestures, from a Wii remote's z "
                    "acceleration; 29-361 steps, left-padded to 361",
        reference=_ucr_refs(0.4400, 0.3400)),
}

DEFAULT_OPTIONS = dict(val_fraction=0.2, normalize=True)
