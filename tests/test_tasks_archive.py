"""UCR/UEA archive tasks: the .ts parser, preparation, the from-disk layout, the download and
missing-data paths, the registry's ``uea:``/``ucr:`` families and the sets that ship with aeon."""
from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import DataError, get_task, list_tasks, parse_task_spec
from tasks import archive, registry
from tasks.archive import OFFLINE_SETS, prepare, read_ts, stratified_split

# --------------------------------------------------------------------------------------------
# Fixture files in the archive's format

EQUAL_UNI = """\
# a comment line
#and another, with odd characters: Jože
@problemName ToyUni
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true 1 2
@data
1.0,2.0,3.0,4.0:1
2.0,3.0,4.0,5.0:2
0.5,0.5,0.5,0.5:1

-1,0,1,2e0:2
"""

UNEQUAL_MULTI = """\
@problemname ToyMulti
@timestamps false
@univariate false
@dimensions 2
@equallength false
@classlabel true Standing Running Walking
@data
1,2,3:10,20,30:Standing
4,5:40,50:Running
6,7,8,9,10:60,70,80,90,100:Walking
1,1:2,2:Running
"""

MISSING = """\
@problemName ToyMissing
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
?,2,?,4,?:?,?,30,40,?:a
1,2,3:4,5,6:b
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def toy_set(root: Path, name="Toy", folder="Multivariate_ts", n_per_class=6, seed=0,
            lengths=(5, 9)) -> Path:
    """A small multivariate set (3 channels, 2 string classes, variable length) in the archive
    layout; the class is in the sign of channel 0's last value."""
    rng = np.random.RandomState(seed)

    def cases(n):
        lines = []
        for i in range(n):
            label = ("up", "down")[i % 2]
            length = rng.randint(lengths[0], lengths[1] + 1)
            x = rng.randn(3, length)
            x[0, -1] = 3.0 if label == "up" else -3.0
            dims = [",".join(f"{v:.6f}" for v in row) for row in x]
            lines.append(":".join(dims) + f":{label}")
        return "\n".join(lines)

    header = (f"@problemName {name}\n@timeStamps false\n@univariate false\n@dimensions 3\n"
              f"@equalLength false\n@classLabel true up down\n@data\n")
    folder_path = root / folder / name if folder else root / name
    write(folder_path / f"{name}_TRAIN.ts", header + cases(2 * n_per_class) + "\n")
    write(folder_path / f"{name}_TEST.ts", header + cases(8) + "\n")
    return folder_path


# --------------------------------------------------------------------------------------------
# Parser


def test_parse_equal_length_univariate(tmp_path):
    f = read_ts(write(tmp_path / "a.ts", EQUAL_UNI))
    assert f.problem_name == "ToyUni"
    assert f.class_labels == ("1", "2")
    assert f.labels == ["1", "2", "1", "2"]
    assert f.channels == 1 and f.lengths == [4, 4, 4, 4]
    np.testing.assert_array_equal(f.series[3], [[-1.0, 0.0, 1.0, 2.0]])
    assert f.header["serieslength"] == "4"


def test_parse_unequal_length_multivariate_string_labels(tmp_path):
    f = read_ts(write(tmp_path / "b.ts", UNEQUAL_MULTI))
    assert f.class_labels == ("Standing", "Running", "Walking")
    assert f.channels == 2 and f.lengths == [3, 2, 5, 2]
    np.testing.assert_array_equal(f.series[2][1], [60, 70, 80, 90, 100])
    assert f.labels[2] == "Walking"


def test_parse_missing_values_are_nan(tmp_path):
    f = read_ts(write(tmp_path / "c.ts", MISSING))
    s = f.series[0]
    assert np.isnan(s[0, [0, 2, 4]]).all() and s[0, 1] == 2 and s[0, 3] == 4
    assert np.isnan(s[1, [0, 1, 4]]).all() and s[1, 2] == 30
    assert not np.isnan(f.series[1]).any()


def test_parse_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.ts"
    path.write_bytes(EQUAL_UNI.replace("\n", "\r\n").encode())
    assert read_ts(path).lengths == [4, 4, 4, 4]


HEAD = "@problemName X\n@univariate false\n@dimensions 2\n@classLabel true a b\n@data\n"


@pytest.mark.parametrize("text, line, what", [
    (HEAD + "1,2:3,4:a\n1,x:3,4:b\n", 7, "'x' is not a number"),
    (HEAD + "1,2:3,4:a\n1,,2:3,4,5:b\n", 7, "an empty value"),
    (HEAD + "1,2:3,4:a\n1,2:b\n", 7, "1 dimension(s), but @dimensions says 2"),
    (HEAD + "1,2:3,4:c\n", 6, "class label 'c' is not in the @classLabel list"),
    (HEAD + "1,2,3:3,4:a\n", 6, "different lengths [3, 2]"),
    (HEAD + "1,2:3,inf:a\n", 6, "infinite value"),
    (HEAD + "1,2:3,4:\n", 6, "empty class label"),
    (HEAD + "1,2\n", 6, "at least one dimension and a class label"),
    ("@problemName X\n@equalLength true\n@seriesLength 3\n@classLabel true a\n@data\n"
     "1,2,3:a\n1,2:a\n", 7, "length 2, but @equalLength true with @seriesLength 3"),
    ("@problemName X\n@timeStamps true\n@data\n(0,1),(1,2):a\n", 2, "time-stamped"),
    ("@problemName X\n@classLabel false\n@data\n1,2\n", 2, "no class labels"),
    ("@problemName X\n@targetLabel true\n@data\n1,2:0.5\n", 2, "regression"),
    ("@problemName X\n@classLabel true a a\n@data\n1:a\n", 2, "lists a label twice"),
    ("@problemName X\n@dimensions two\n@data\n1:a\n", 2, "whole number"),
    ("@problemName X\n@univariate maybe\n@data\n1:a\n", 2, "true or false"),
    ("@problemName X\n1,2:a\n", 2, "expected a header tag"),
    ("@problemName X\n@univariate true\n@classLabel true a\n@data\n1,2:3,4:a\n", 5,
     "@univariate true says 1"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, line, what):
    path = write(tmp_path / "bad.ts", text)
    with pytest.raises(DataError) as info:
        read_ts(path)
    msg = str(info.value)
    assert str(path) in msg and f"line {line}" in msg and what in msg, msg


@pytest.mark.parametrize("text, what", [
    ("@problemName X\n@classLabel true a\n", "no @data line"),
    ("@problemName X\n@classLabel true a\n@data\n\n# nothing\n", "no cases after @data"),
    ("@problemName X\n@equalLength true\n@data\n1,2:a\n1:a\n", "cases differ in length"),
])
def test_malformed_whole_file(tmp_path, text, what):
    path = write(tmp_path / "bad.ts", text)
    with pytest.raises(DataError, match=what) as info:
        read_ts(path)
    assert str(path) in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_ts(tmp_path / "nope.ts")


# --------------------------------------------------------------------------------------------
# From parsed files to tensors


def test_prepare_left_pads_and_maps_string_labels(tmp_path):
    f = read_ts(write(tmp_path / "m.ts", UNEQUAL_MULTI))
    splits, facts = prepare(f, f, spec="uea:ToyMulti", seed=0, val_fraction=0.0,
                            normalize=False)
    x, y = splits["test"]
    assert x.shape == (4, 5, 2) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 1]  # the @classLabel order: Standing, Running, Walking
    assert facts["classes"] == ["Standing", "Running", "Walking"]
    assert facts["length_range"] == [2, 5]
    # the final step is every case's real last observation; zeros before a short one
    assert x[:, -1].tolist() == [[3, 30], [5, 50], [10, 100], [1, 2]]
    assert x[0, :2].abs().sum() == 0 and x[0, 2:].tolist() == [[1, 10], [2, 20], [3, 30]]
    assert x[1, :3].abs().sum() == 0


def test_prepare_missing_values(tmp_path):
    f = read_ts(write(tmp_path / "m.ts", MISSING))
    splits, facts = prepare(f, f, spec="uea:ToyMissing", seed=0, val_fraction=0.0,
                            normalize=False)
    x, _ = splits["test"]
    assert facts["missing_values"] == 2 * 6  # six in the file, read as train and as test
    # case 0: the last step is missing in both channels -> cut, length 4, one padding step
    assert x.shape == (2, 4, 2)
    assert x[0, :, 0].tolist() == [0, 2, 2, 4]  # leading NaN -> 0 (the mean), then carried
    assert x[0, :, 1].tolist() == [0, 0, 30, 40]
    assert x[1].tolist() == [[0, 0], [1, 4], [2, 5], [3, 6]]
    assert torch.isfinite(x).all()


def test_prepare_normalises_with_training_statistics_only(tmp_path):
    root = tmp_path
    toy_set(root, n_per_class=20)
    folder = root / "Multivariate_ts" / "Toy"
    train_f, test_f = read_ts(folder / "Toy_TRAIN.ts"), read_ts(folder / "Toy_TEST.ts")
    splits, facts = prepare(train_f, test_f, spec="uea:Toy", seed=0, val_fraction=0.25,
                            normalize=True)
    x, _ = splits["train"]
    lengths = [int((row.abs().sum(-1) > 0).sum()) for row in x]  # steps that are not padding
    observed = torch.cat([row[-n:] for row, n in zip(x, lengths)]).double()
    assert torch.allclose(observed.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(observed.std(0, unbiased=False), torch.ones(3, dtype=torch.float64),
                          atol=1e-4)
    # positive control: validation and test data were not part of the statistics
    xv, _ = splits["val"]
    lv = [int((row.abs().sum(-1) > 0).sum()) for row in xv]
    val_obs = torch.cat([row[-n:] for row, n in zip(xv, lv)]).double()
    assert not torch.allclose(val_obs.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    mean = np.asarray(facts["normalization"]["mean"])
    raw_train = np.concatenate([s for s in train_f.series], axis=1)
    assert not np.allclose(mean, raw_train.mean(axis=1))  # not the stats of the whole file


def test_stratified_split_per_class_and_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    mask = stratified_split(labels, 0.2, (0, "t", "val"))
    assert [int(mask[labels == c].sum()) for c in range(4)] == [2, 1, 1, 0]
    assert (mask == stratified_split(labels, 0.2, (0, "t", "val"))).all()
    others = [stratified_split(labels, 0.2, (s, "t", "val")) for s in range(1, 6)]
    assert any((m != mask).any() for m in others)
    assert not stratified_split(labels, 0.0, (0, "t", "val")).any()
    with pytest.raises(DataError, match="val_fraction"):
        stratified_split(labels, 1.0, (0, "t", "val"))


def test_test_label_unknown_to_training_file(tmp_path):
    train = read_ts(write(tmp_path / "tr.ts", "@classLabel true a b\n@data\n1,2:a\n3,4:b\n"))
    test = read_ts(write(tmp_path / "te.ts", "@classLabel true a c\n@data\n1,2:c\n"))
    with pytest.raises(DataError, match=r"class label\(s\) \['c'\]") as info:
        prepare(train, test, spec="ucr:X", seed=0, val_fraction=0.0, normalize=True)
    assert str(tmp_path / "te.ts") in str(info.value)


# --------------------------------------------------------------------------------------------
# Registry: spec parsing, families, listing


@pytest.mark.parametrize("spec, want", [
    ("uea:JapaneseVowels", ("uea:JapaneseVowels", {})),
    ("uea:JapaneseVowels:val_fraction=0.3", ("uea:JapaneseVowels", {"val_fraction": 0.3})),
    (" ucr : GunPoint : normalize=false ", ("ucr:GunPoint", {"normalize": False})),
    ("ucr:Anything", ("ucr:Anything", {})),
])
def test_parse_family_specs(spec, want):
    assert parse_task_spec(spec) == want


@pytest.mark.parametrize("spec", ["uea:", "uea", "uea:val_fraction=0.2", "ucr::x=1"])
def test_family_spec_without_a_name(spec):
    with pytest.raises(DataError, match="needs a data set name"):
        get_task(spec)


@pytest.mark.parametrize("spec", ["uea:../etc", "ucr:a/b", "uea:.hidden"])
def test_family_refuses_names_that_are_not_set_names(spec, tmp_path):
    with pytest.raises(DataError, match="not an archive set name"):
        get_task(spec, data_dir=tmp_path)


def test_family_options_are_checked():
    with pytest.raises(DataError, match="val_fraction"):
        get_task("uea:BasicMotions:val_fractoin=0.2")
    with pytest.raises(DataError, match="normalize"):
        get_task("uea:BasicMotions:normalize=3")


def test_offline_sets_are_listed_with_metadata(monkeypatch):
    def boom(self):
        raise AssertionError(f"listing resolved the builder of {self.name}")

    monkeypatch.setattr(registry.TaskEntry, "resolve", boom)
    rows = {r["name"]: r for r in list_tasks()}
    json.dumps(list(rows.values()))
    for spec, meta in OFFLINE_SETS.items():
        row = rows[spec]
        assert row["kind"] == "sequence" and row["source"] == "offline"
        assert row["input_shape"] == list(meta["input_shape"])
        assert row["classes"] == meta["classes"] and row["description"]
        entry = registry.get_entry(spec)
        for ref in entry.extra["reference"]:
            assert set(ref) == {"method", "accuracy", "source"}
            assert 0 < ref["accuracy"] <= 1 and ref["source"]
    assert "uea:NAME" in registry._valid_names_text()


def test_unknown_member_gets_an_entry_on_the_fly():
    entry = registry.get_entry("ucr:SomeOtherSet")
    assert entry.kind == "sequence" and entry.source == "download"
    assert entry.options == archive.DEFAULT_OPTIONS and entry.member == "SomeOtherSet"


def test_register_task_keeps_colons_for_family_sets():
    with pytest.raises(ValueError, match="family"):
        registry.register_task(registry.TaskEntry(
            "zzz:thing", "sequence", "m:f", (1, 1), 2, "offline", "d"))
    with pytest.raises(ValueError, match="family"):
        registry.register_task(registry.TaskEntry(
            "uea:Thing", "sequence", "m:f", (1, 1), 2, "offline", "d"))  # member not given


# --------------------------------------------------------------------------------------------
# From disk: layout, missing-data message, download


@pytest.mark.parametrize("folder", ["Multivariate_ts", ""])
def test_set_from_data_dir(tmp_path, folder):
    toy_set(tmp_path, folder=folder)
    data = get_task("uea:Toy:val_fraction=0.5", data_dir=tmp_path, seed=1)
    assert data.name == "uea:Toy" and data.source == "download"
    assert data.input_shape[1] == 3 and data.num_classes == 2
    assert data.sizes() == {"train": 6, "val": 6, "test": 8}  # half of each class's 6
    assert data.info["origin"] == "data folder"
    assert data.info["files"][0].endswith(str(Path(folder) / "Toy" / "Toy_TRAIN.ts"))
    assert data.info["classes"] == ["up", "down"]
    # the class is in the final step's channel 0: left padding keeps it there for every case
    x, y = data.test.tensors
    assert ((x[:, -1, 0] > 0).long() == (y == 0).long()).all()


def test_data_dir_via_environment(tmp_path, monkeypatch):
    toy_set(tmp_path, name="EnvToy", folder="Univariate_ts")
    monkeypatch.setenv("TSP_DATA_DIR", str(tmp_path))
    assert get_task("ucr:EnvToy").info["origin"] == "data folder"


def test_missing_set_names_files_folder_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as info:
        get_task("uea:Absent", data_dir=tmp_path)
    msg = str(info.value)
    folder = tmp_path / "Multivariate_ts" / "Absent"
    for part in ("Absent_TRAIN.ts", "Absent_TEST.ts", str(folder), "--download",
                 "tsp train --task uea:Absent",
                 "https://timeseriesclassification.com/aeon-toolkit/Absent.zip",
                 "Multivariate2018_ts.zip", "uea:JapaneseVowels"):
        assert part in msg, part
    with pytest.raises(DataError) as info:
        get_task("ucr:Absent", data_dir=tmp_path)
    assert str(tmp_path / "Univariate_ts" / "Absent") in str(info.value)


def test_only_one_file_present_is_missing_data(tmp_path):
    folder = toy_set(tmp_path)
    (folder / "Toy_TEST.ts").unlink()
    with pytest.raises(DataError, match="Toy_TEST.ts"):
        get_task("uea:Toy", data_dir=tmp_path)


def test_wrong_case_or_archive_suggests_the_offline_set(tmp_path):
    with pytest.raises(DataError, match="Did you mean 'uea:JapaneseVowels'"):
        get_task("ucr:JapaneseVowels", data_dir=tmp_path)
    with pytest.raises(DataError, match="Did you mean 'ucr:GunPoint'"):
        get_task("ucr:gunpoint", data_dir=tmp_path)


def test_offline_set_without_aeon_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "aeon_data_folder", lambda: None)
    with pytest.raises(DataError) as info:
        get_task("uea:BasicMotions", data_dir=tmp_path)
    msg = str(info.value)
    assert "aeon package, which is not installed" in msg and "pip install" in msg
    assert "BasicMotions_TRAIN.ts" in msg and "--download" in msg


def test_data_dir_copy_wins_over_aeon(tmp_path):
    toy_set(tmp_path, name="BasicMotions")  # same name, different (toy) content
    data = get_task("uea:BasicMotions", data_dir=tmp_path)
    assert data.info["origin"] == "data folder" and data.num_classes == 2


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def zip_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_download_keeps_the_two_files(tmp_path, monkeypatch):
    src = toy_set(tmp_path / "src", name="Dl")
    payload = zip_bytes({"Dl/Dl_TRAIN.ts": (src / "Dl_TRAIN.ts").read_text(),
                         "Dl/Dl_TEST.ts": (src / "Dl_TEST.ts").read_text(),
                         "Dl/Dl_TRAIN.arff": "ignored"})
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(archive.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="not found"):  # without --download: nothing fetched
        get_task("uea:Dl", data_dir=root)
    assert asked == []
    data = get_task("uea:Dl", data_dir=root, download=True)
    assert asked == ["https://timeseriesclassification.com/aeon-toolkit/Dl.zip"]
    folder = root / "Multivariate_ts" / "Dl"
    assert sorted(p.name for p in folder.iterdir()) == ["Dl_TEST.ts", "Dl_TRAIN.ts"]
    assert data.sizes()["test"] == 8
    get_task("uea:Dl", data_dir=root, download=True)  # present now: not fetched again
    assert len(asked) == 1


@pytest.mark.parametrize("case, what", [
    ("html", "did not return a zip file"),
    ("incomplete", "has no Dl_TEST.ts"),
    ("offline", "could not download"),
])
def test_download_failures_are_data_errors(tmp_path, monkeypatch, case, what):
    def fake_urlopen(url, timeout):
        if case == "offline":
            raise OSError("network is unreachable")
        if case == "html":
            return FakeResponse(b"<html>not found</html>")
        return FakeResponse(zip_bytes({"Dl_TRAIN.ts": "@data\n1:a\n"}))

    monkeypatch.setattr(archive.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match=what) as info:
        get_task("uea:Dl", data_dir=tmp_path, download=True)
    assert "Dl.zip" in str(info.value)
    folder = tmp_path / "Multivariate_ts" / "Dl"
    assert not any(p.suffix == ".ts" for p in folder.iterdir())  # nothing half-written


# --------------------------------------------------------------------------------------------
# The real sets that ship with aeon


def test_offline_sets_come_from_aeon_without_importing_it():
    assert archive.aeon_data_folder() is not None, "aeon is a dependency: pip install -c " \
                                                   "requirements.lock -e ."
    data = get_task("uea:JapaneseVowels")
    assert data.info["origin"] == "aeon package data"
    assert "aeon" not in sys.modules and "numba" not in sys.modules


@pytest.mark.parametrize("spec", list(OFFLINE_SETS))
def test_offline_set_matches_its_listed_metadata(spec):
    meta = OFFLINE_SETS[spec]
    data = get_task(spec, seed=0)
    assert data.input_shape == meta["input_shape"] and data.num_classes == meta["classes"]
    assert data.info["official_sizes"] == {"train": meta["sizes"][0], "test": meta["sizes"][1]}
    assert len(data.train) + len(data.val) == meta["sizes"][0]
    assert len(data.test) == meta["sizes"][1]
    for split in (data.train, data.val, data.test):
        x, y = split.tensors
        assert torch.isfinite(x).all()
        assert set(y.unique().tolist()) <= set(range(meta["classes"]))
    assert set(data.train.tensors[1].unique().tolist()) == set(range(meta["classes"]))
    assert data.info["reference"] == list(meta["reference"])


def test_japanese_vowels():
    data = get_task("uea:JapaneseVowels", seed=0)
    assert data.input_shape == (29, 12) and data.num_classes == 9
    assert len(data.train) + len(data.val) == 270 and len(data.test) == 370
    assert data.info["length_range"] == [7, 29]
    x, y = data.test.tensors
    assert set(y.tolist()) == set(range(9))
    # left padding: every case's final step is a real frame, short cases start with zeros
    assert (x[:, -1].abs().sum(-1) > 0).all()
    padded = (x.abs().sum(-1) == 0).sum(1)
    assert padded.min() == 0 and padded.max() == 29 - 7
    # validation: stratified, 20 % of each speaker's 30 utterances
    assert torch.bincount(data.val.tensors[1], minlength=9).tolist() == [6] * 9


def test_basic_motions():
    data = get_task("uea:BasicMotions", seed=0)
    assert data.input_shape == (100, 6) and data.num_classes == 4
    assert len(data.train) + len(data.val) == 40 and len(data.test) == 40
    assert data.info["classes"] == ["Standing", "Running", "Walking", "Badminton"]
    assert torch.bincount(data.test.tensors[1]).tolist() == [10, 10, 10, 10]


def test_offline_sets_are_deterministic_given_the_seed():
    a = get_task("uea:JapaneseVowels", seed=3)
    b = get_task("uea:JapaneseVowels", seed=3)
    c = get_task("uea:JapaneseVowels", seed=4)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])  # another validation carve
    # the same test cases whatever the seed (only the normalisation statistics move with it)
    assert torch.equal(a.test.tensors[1], c.test.tensors[1])
    a.train.tensors[0][0, 0, 0] = 1e6  # handed-out tensors do not alias a cache
    assert get_task("uea:JapaneseVowels", seed=3).train.tensors[0][0, 0, 0] != 1e6


def test_normalize_option_changes_the_scale():
    raw = get_task("uea:BasicMotions:normalize=false")
    assert raw.info["normalization"] is None
    norm = get_task("uea:BasicMotions")
    assert not torch.allclose(raw.train.tensors[0], norm.train.tensors[0])
    assert abs(float(norm.train.tensors[0].mean())) < 0.05


def test_tiny_training_run_on_an_archive_task(tmp_path):
    from temporal_sigprop import train

    summary = train(task="uea:BasicMotions", model="gru", method="bptt", hidden=16, layers=1,
                    epochs=1, batch_size=8, progress=False, out=str(tmp_path / "run"))
    assert summary["task"] == "uea:BasicMotions"
    assert 0.0 <= summary["test_accuracy_at_best_val"] <= 1.0
    assert math.isfinite(summary["time_per_step_ms"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "uea:BasicMotions"
