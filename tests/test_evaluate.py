"""smallnets.core.evaluation and `smallnets evaluate`: labelled folders, the split, intervals, real models.

Folders are built from the scikit-image photos under real synset names; the test on real ImageNet photos reads
$SMALLNETS_EVAL_DIR and skips (saying so) when it is not set.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.cli import main
from smallnets.core.evaluation import compare_paired, evaluate
from smallnets.core.intervals import paired_difference_interval, wilson_interval
from smallnets.core.labelled import (
    EVAL_DIR_ENV,
    EvaluationDataError,
    eval_dir_setting,
    provenance,
    read_labelled_folder,
    sample_evenly,
)
from smallnets.core.split import Part, SplitFractions, choose_photos, part_of, split_folders
from smallnets.core.targets import RUNTIMES

SYNSETS = tuple(f"n{index:08d}" for index in range(0, 1000, 10))  # a made-up class list, sorted like ImageNet's


@pytest.fixture
def labelled(tmp_path: Path, photos: dict[str, Image.Image]) -> Path:
    """Six photos in three synset folders (plus one byte-identical copy), JPEG like ImageNet's."""
    root = tmp_path / "labelled"
    names = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
    for index, name in enumerate(names):
        folder = root / SYNSETS[3 * (index % 3)]
        folder.mkdir(parents=True, exist_ok=True)
        photos[name].save(folder / f"{name}.JPEG")
    shutil.copy(root / SYNSETS[0] / "chelsea.JPEG", root / SYNSETS[0] / "zz-copy-of-chelsea.JPEG")
    return root


def test_labels_are_positions_of_the_synset_in_the_class_list(labelled: Path) -> None:
    folder = read_labelled_folder(labelled, SYNSETS)
    assert len(folder) == 6 and folder.duplicates == 1
    by_name = {image.path.stem: image.label for image in folder.images}
    assert by_name["chelsea"] == 0 and by_name["coffee"] == 3 and by_name["astronaut"] == 6
    assert all(len(image.digest) == 64 for image in folder.images)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("flat", "not in a class sub-folder"),
        ("named", "not a WordNet synset id"),
        ("unknown", "not one of the model's"),
        ("empty", "no images found"),
        ("missing", "not a folder"),
    ],
)
def test_unlabelled_folders_get_a_clear_error(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "photos"
    picture = Image.new("RGB", (32, 32), (10, 20, 30))
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        picture.save(root / "a.jpg")
    elif layout in ("named", "unknown"):
        (root / ("cats" if layout == "named" else "n99999999")).mkdir()
        picture.save(root / ("cats" if layout == "named" else "n99999999") / "a.jpg")
    with pytest.raises(EvaluationDataError, match=message) as error:
        read_labelled_folder(root, SYNSETS)
    if layout != "unknown":
        assert "DIR/SYNSET/photo.JPEG" in str(error.value), "the error shows the expected layout"


def test_wilson_interval_matches_the_textbook() -> None:
    """Newcombe (1998), Statistics in Medicine 17:857, table I (method 3, Wilson score without correction)."""
    assert wilson_interval(81, 263).to_list() == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert wilson_interval(15, 148).to_list() == pytest.approx([0.0624, 0.1605], abs=1e-4)
    assert wilson_interval(0, 20).to_list() == pytest.approx([0.0, 0.1611], abs=1e-4)


def test_paired_interval_is_honest_with_no_flips() -> None:
    """Zero discordant pairs among n photos: Tango's upper end is z^2 / (n + z^2), not zero."""
    z2 = 1.959963984540054**2
    interval = paired_difference_interval(0, 0, 250)
    assert interval.high == pytest.approx(z2 / (250 + z2), rel=1e-6) and interval.low == pytest.approx(-interval.high)
    assert paired_difference_interval(5, 1, 250).low > paired_difference_interval(1, 5, 250).low
    wide, narrow = paired_difference_interval(2, 1, 250), paired_difference_interval(20, 10, 2500)
    assert narrow.high - narrow.low < wide.high - wide.low


def brute_force_tango(broken: int, fixed: int, images: int, grid: np.ndarray) -> tuple[float, float]:
    """Tango's interval by brute force: for every difference d on ``grid`` the nuisance p(fixed) is found by
    maximising the multinomial likelihood over a fine grid (no closed form), and d is kept when its score
    statistic |b - c - n d| / sqrt(n (2 q + d (1 - d))) is at most z."""
    kept = []
    for difference in grid:
        low = max(0.0, -difference) + 1e-9
        fixed_rate = np.linspace(low, (1.0 - difference) / 2 - 1e-9, 20001)
        broken_rate, same_rate = fixed_rate + difference, 1.0 - 2 * fixed_rate - difference
        loglik = sum(
            count * np.log(np.maximum(rate, 1e-300))
            for count, rate in ((broken, broken_rate), (fixed, fixed_rate), (images - broken - fixed, same_rate))
            if count
        )
        q = fixed_rate[int(np.argmax(loglik))]
        score = (broken - fixed - images * difference) / np.sqrt(images * (2 * q + difference * (1 - difference)))
        if abs(score) <= 1.959963984540054:
            kept.append(difference)
    return 100 * min(kept), 100 * max(kept)


@pytest.mark.parametrize(
    ("broken", "fixed", "images", "published"),
    [(2, 2, 248, (-2.18, 2.18)), (5, 2, 500, (-0.56, 1.97)), (3, 0, 248, (-0.33, 3.50)), (0, 0, 250, None)],
)
def test_tango_interval_matches_a_brute_force_inversion(
    broken: int, fixed: int, images: int, published: tuple[float, float] | None
) -> None:
    """Issue 20's values (Lite0/Lite2 report parts, 5 broken / 2 fixed of 500) and an independent inversion of the
    score statistic. The asymmetric cases fail a mutant that swaps broken and fixed, and a Wald interval
    (+-1.58 for 2/2 of 248)."""
    low, high = (100 * end for end in paired_difference_interval(broken, fixed, images).to_list())
    if published is not None:
        assert (low, high) == pytest.approx(published, abs=0.006)
    grid = np.arange(-0.06, 0.06, 0.00005)
    assert (low, high) == pytest.approx(brute_force_tango(broken, fixed, images, grid), abs=0.01)


@pytest.mark.parametrize(("broken", "fixed"), [(0, 0), (0, 40), (40, 0), (0, 7), (7, 0)])
def test_tango_interval_edge_cases(broken: int, fixed: int) -> None:
    """No flips, every photo fixed, every photo broken (a math domain error once), and few flips of one kind."""
    images = 40
    interval = paired_difference_interval(broken, fixed, images)
    estimate = (broken - fixed) / images
    assert -1.0 <= interval.low <= estimate <= interval.high <= 1.0
    mirrored = paired_difference_interval(fixed, broken, images)
    assert (interval.low, interval.high) == pytest.approx((-mirrored.high, -mirrored.low), abs=1e-9)
    if broken == images:
        assert interval.high == pytest.approx(1.0) and interval.low > 0.5
    if broken == fixed == 0:
        z2 = 1.959963984540054**2
        assert interval.high == pytest.approx(z2 / (images + z2), rel=1e-6)
    if 0 < max(broken, fixed) < images:
        grid = np.arange(-0.6, 0.6, 0.0005)
        low, high = brute_force_tango(broken, fixed, images, grid)
        assert (100 * interval.low, 100 * interval.high) == pytest.approx((low, high), abs=0.1)


def test_paired_interval_covers_the_truth_95_percent_of_the_time() -> None:
    """Simulated fp32/int8 pairs with a known drop (2% broken, 1% fixed, n=250): coverage near 95%."""
    rng = np.random.default_rng(0)
    truth, images, covered = 0.01, 250, 0
    trials = 1000
    for _ in range(trials):
        outcome = rng.choice(3, size=images, p=[0.02, 0.01, 0.97])
        interval = paired_difference_interval(int(np.sum(outcome == 0)), int(np.sum(outcome == 1)), images)
        covered += interval.low <= truth <= interval.high
    assert 0.93 <= covered / trials <= 0.98, covered / trials


def test_paired_comparison_counts_flips() -> None:
    labels = [0, 1, 2, 3]
    reference = np.eye(5, dtype=np.float32)[[0, 1, 4, 4]]  # right, right, wrong, wrong
    candidate = np.eye(5, dtype=np.float32)[[0, 4, 2, 4]]  # right, broken, fixed, still wrong
    paired = compare_paired(reference, candidate, labels)
    assert (paired.broken, paired.fixed, paired.agreeing) == (1, 1, 2)
    assert paired.drop_points == 0.0 and paired.reference.top1 == paired.candidate.top1 == 0.5


def test_split_is_disjoint_deterministic_and_content_addressed(labelled: Path, tmp_path: Path) -> None:
    folder = read_labelled_folder(labelled, SYNSETS)
    split = split_folders(folder, None, calibration_limit=100)
    again = split_folders(read_labelled_folder(labelled, SYNSETS), None, calibration_limit=100)
    assert split.to_dict()["counts"] == again.to_dict()["counts"] and split.report == again.report
    assert split.to_dict()["disjoint"] and sum(split.to_dict()["counts"].values()) == len(folder)
    # A renamed copy of the folder splits the same way: the part depends on the bytes only.
    renamed = tmp_path / "renamed"
    shutil.copytree(labelled, renamed)
    for path in list(renamed.rglob("*.JPEG")):
        path.rename(path.with_name("x-" + path.name))
    moved = split_folders(read_labelled_folder(renamed, SYNSETS), None, calibration_limit=100)
    assert [i.digest for i in moved.report] == [i.digest for i in split.report]


def test_overlapping_calibration_folder_is_deduplicated(labelled: Path, tmp_path: Path) -> None:
    """--calib-dir and --eval-dir the same folder (the issue-11 command): parts stay disjoint, sharing is counted."""
    folder = read_labelled_folder(labelled, SYNSETS)
    same = split_folders(folder, labelled, calibration_limit=100)
    assert same.shared_between_folders == len(folder) and same.to_dict()["disjoint"]
    assert sum(same.to_dict()["counts"].values()) == len(folder)
    extra = tmp_path / "calib"
    shutil.copytree(labelled, extra)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(extra / "only-for-calibration.png")
    mixed = split_folders(folder, extra, calibration_limit=100)
    calibration_names = {path.name for path in mixed.calibration}
    assert "only-for-calibration.png" in calibration_names and mixed.to_dict()["disjoint"]
    evaluated = {image.digest for image in (*mixed.selection, *mixed.report)}
    assert len(evaluated) + len(calibration_names) - 1 == len(folder)


def test_part_fractions_hold_on_many_digests() -> None:
    import hashlib

    from smallnets.core.split import SplitFractions, part_of

    digests = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(5000)]
    parts = [part_of(digest, SplitFractions()) for digest in digests]
    assert abs(parts.count(Part.CALIBRATION) / 5000 - 0.15) < 0.02
    assert abs(parts.count(Part.SELECTION) / 5000 - 0.35) < 0.02


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """80 distinct small photos in 8 synset folders (a labelled folder big enough for a three-way split)."""
    root = tmp_path / "many"
    rng = np.random.default_rng(0)
    for index in range(80):
        folder = root / SYNSETS[index % 8]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    return root


def test_limit_draws_evenly_from_every_part(many: Path) -> None:
    """--limit once kept the first N photos in hash order: all of them calibration photos."""
    folder = read_labelled_folder(many, SYNSETS)
    parts = [part_of(image.digest, SplitFractions()) for image in sample_evenly(folder.images, 20)]
    everywhere = [part_of(image.digest, SplitFractions()) for image in folder.images]
    for part in Part:
        assert abs(parts.count(part) / 20 - everywhere.count(part) / 80) <= 0.1, (part, parts)
    assert len({image.label for image in read_labelled_folder(many, SYNSETS, limit=20).images}) == 8


def test_on_the_models_own_folder_limit_draws_from_its_report_part(many: Path, tmp_path: Path) -> None:
    folder = read_labelled_folder(many, SYNSETS)
    split = split_folders(folder, None, calibration_limit=100)
    report = {image.digest for image in split.report}
    choice = choose_photos(folder, 10, split.to_dict())
    assert len(choice.images) == 10 and {image.digest for image in choice.images} <= report
    assert f"of the {len(report)} report-part photos" in choice.description and choice.subset
    assert choice.notes == (
        "photos of many calibrated this model and chose its recipe: these photos come from its "
        "report part, which neither saw",
    )
    whole = choose_photos(folder, None, split.to_dict())
    assert len(whole.images) == 80 and "report-part photos only" in whole.notes[0]
    other = tmp_path / "other"
    shutil.copytree(many, other)
    elsewhere = choose_photos(read_labelled_folder(other, SYNSETS), 10, split.to_dict())
    assert "of the 80 photos" in elsewhere.description and not elsewhere.notes
    # A model calibrated on a separate folder and judged on another: only the calibration folder is named.
    separate = split_folders(read_labelled_folder(other, SYNSETS), many, calibration_limit=100).to_dict()
    calibrated = choose_photos(folder, None, separate)
    assert calibrated.notes and "calibrated this model" in calibrated.notes[0] and "recipe" not in calibrated.notes[0]


def test_provenance_names_the_folder_and_its_caveat() -> None:
    assert provenance("/data/my-photos", 12) == "my-photos, 12 photos"
    assert "training split" in provenance("../shared/imagenet-dev", 248) and "248 photos" in provenance("x", 248)


def test_evaluate_a_real_model_and_say_random_weights(labelled: Path, exported: Callable[..., Path]) -> None:
    """A random-weight export on a folder of its own synsets: figures computed, status says unvalidated."""
    from smallnets.core.runtime import OnnxClassifier

    model = exported("squeezenet1_1")
    classifier = OnnxClassifier(model)
    synsets = classifier.card.synsets
    root = labelled.parent / "imagenet-like"
    for index, path in enumerate(read_labelled_folder(labelled, SYNSETS).images):
        target = root / synsets[2 * index] / path.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path.path, target)
    result = evaluate(classifier, root)
    truth = [synsets.index(path.parent.name) for path in sorted(root.rglob("*.JPEG"))]
    assert result.accuracy.images == 6 and list(result.labels) == truth
    assert result.accuracy.top1_correct == int(np.sum(result.logits.argmax(axis=1) == np.asarray(result.labels)))
    low, high = result.accuracy.top1_interval.to_list()
    assert low <= result.accuracy.top1 <= high and high > 0.3, "six photos give a wide interval"
    assert result.to_dict()["status"] == "unvalidated (random weights)" and "random weights" in result.summary()


def test_cli_errors_are_one_line(labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (16, 16)).save(flat / "a.jpg")
    model = tmp_path / "missing.onnx"
    assert main(["evaluate", str(model), "--eval-dir", str(flat)]) != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "missing.onnx" in error


def test_eval_dir_setting_reads_flag_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(EVAL_DIR_ENV, raising=False)
    assert eval_dir_setting() is None
    monkeypatch.setenv(EVAL_DIR_ENV, str(tmp_path))
    assert eval_dir_setting() == tmp_path and eval_dir_setting(tmp_path / "flag") == tmp_path / "flag"


def test_cli_without_any_folder_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, exported: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(EVAL_DIR_ENV, raising=False)
    assert main(["evaluate", str(exported("squeezenet1_1"))]) != 0
    assert EVAL_DIR_ENV in capsys.readouterr().err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cli_on_labelled_imagenet_photos(
    exported: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """Real Lite0 weights on real labelled photos, on each runtime: the JSON figures, and no progress bar when not
    on a terminal."""
    folder = eval_dir_setting()
    if folder is None or not folder.is_dir():
        pytest.skip(f"needs labelled ImageNet photos: set {EVAL_DIR_ENV} (CI: ../shared/imagenet-dev)")
    model = exported("efficientnet_lite0", weights="imagenet")
    assert main(["evaluate", str(model), "--limit", "48", "--json", "--runtime", runtime]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["runtime"] == runtime
    assert result["images"] == 48 and result["top1"] > 0.7 and result["top5"] >= result["top1"]
    assert len(result["files"]) == 48 and "evenly spaced" in result["photos"], "says which photos"
    assert result["provenance"].startswith(f"{folder.name}, 48 photos")
    assert result["top1_interval"][0] < result["top1"] < result["top1_interval"][1]
    assert "evaluate" not in captured.err, "progress bars stay off when stderr is not a terminal"
