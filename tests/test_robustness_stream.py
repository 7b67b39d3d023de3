"""Streamed robustness runs and slices: the cells and the clean images through the real path, equal to the
offline evaluation prediction by prediction; per-slice figures that add up to the run; the report's sections;
the new flags refused before anything starts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_train import mains_in_one_process
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from results.robustness import CLEAN, cell_id, outcomes_of, parse_cell_id
from results.run import Answers, Counters, DatasetIdentity, ModelIdentity, RunInfo, RunResult
from results.slices import NOT_IN_CSV, SliceError, join_slices, read_slices
from streamer.robustness_report import TOO_WIDE, robustness_part, slices_part
from tests.conftest import REPO, SHIPPED_MODEL


# ------------------------------------------------------------------ ids, slices CSV
def test_cell_ids_round_trip_and_other_ids_are_not_cells():
    for source in ("0", "9999", "Coat/0042.png", "a|b"):
        for corruption, severity in ((CLEAN, 0), ("fog", 5)):
            assert parse_cell_id(cell_id(source, corruption, severity)) == (source, corruption, severity)
    for other in ("17", "Coat/0042.png", "1|fog", "1|fog|x"):
        assert parse_cell_id(other) is None


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "empty"),
        ("lighting,index\nday,1\n", "header must start with"),
        ("index\n1\n", "header must start with"),
        ("index,a,a\n1,x,y\n", "distinct"),
        ("index,a\n1,x,extra\n", "line 2 has 3 fields"),
        ("index,a\n-1,x\n", "not a whole number"),
        ("index,a\n1,x\n01,y\n", "appears twice"),
        ("index,a\n", "no rows"),
        ("index,a\n" + "".join(f"{i},v{i}\n" for i in range(101)), "at most 100"),
    ],
)
def test_a_bad_slices_file_is_refused_in_one_line(tmp_path, text, complaint):
    with pytest.raises(SliceError, match=complaint) as err:
        read_slices(write_csv(tmp_path / "s.csv", text))
    assert "\n" not in str(err.value)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("index,file,image\n\r\"' 0123abc|/-\x00é")), max_size=80))
def test_any_slices_text_is_read_or_refused_with_a_slice_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("slices") / "s.csv"
    path.write_text(text, encoding="utf-8")
    try:
        table = read_slices(path)
    except SliceError as err:
        assert "\n" not in str(err)
        return
    assert table.key in ("index", "file", "image") and table.columns and table.rows


def test_slices_join_by_index_or_by_file_name(tmp_path):
    table = read_slices(write_csv(tmp_path / "i.csv", "index,half\n0,first\n2,second\n7,second\n"))
    columns, unmatched = join_slices(table, ["0", "1", "2"])
    assert columns == {"half": ["first", NOT_IN_CSV, "second"]} and unmatched == 1
    files = ["Coat/1.png", "Coat/2.png", "Bag/2.png"]
    table = read_slices(write_csv(tmp_path / "f.csv", "file,light\n1.png,day\nBag/2.png,night\nx/y/Coat/2.png,day\n"))
    columns, unmatched = join_slices(table, files)
    assert columns == {"light": ["day", "day", "night"]} and unmatched == 0
    ambiguous = read_slices(write_csv(tmp_path / "a.csv", "file,light\n2.png,day\n"))
    with pytest.raises(SliceError, match="2 class folders"):
        join_slices(ambiguous, files)
    with pytest.raises(SliceError, match="'file', not 'index'"):
        join_slices(read_slices(tmp_path / "i.csv"), files)
    with pytest.raises(SliceError, match="none of its 1 rows"):
        join_slices(read_slices(write_csv(tmp_path / "n.csv", "index,a\n99,x\n")), ["0", "1"])


# ------------------------------------------------------------------ the report sections, without a broker
def robustness_run(correct: dict[tuple[str, int], list[int]], identity: str, sources=None) -> RunResult:
    """A finished robustness run: {(corruption, severity): per-source 0/1} -> a RunResult with cell ids."""
    n_sources = len(next(iter(correct.values())))
    sources = sources or [str(i) for i in range(n_sources)]
    ids, labels, predictions, confidences = [], [], [], []
    for (corruption, severity), values in correct.items():
        for source, right in zip(sources, values):
            ids.append(cell_id(source, corruption, severity))
            labels.append(int(source) % 10)
            predictions.append(int(source) % 10 if right else (int(source) + 1) % 10)
            confidences.append(0.9 if right else 0.6)
    n = len(ids)
    families = {c: "weather" if c == "fog" else "geometric" for c, _ in correct if c != CLEAN}
    return RunResult(
        run=RunInfo(run_id="r", content_type="raw", robustness={"families": families, "severities": [1, 2], "seed": 0}),
        model=ModelIdentity(identity, (identity,)),
        dataset=DatasetIdentity("toy+corruptions", "d" * 64, n),
        class_names=tuple(str(i) for i in range(10)),
        answers=Answers.of(np.arange(n), ids, labels, predictions, confidences),
        counters=Counters(sent=n),
    )


def test_robustness_and_slices_sections_of_two_models(tmp_path):
    rng = np.random.default_rng(0)
    cells = [(CLEAN, 0), ("fog", 1), ("fog", 2), ("rotate", 1), ("rotate", 2)]
    p_a = {CLEAN: 0.95, "fog": 0.6, "rotate": 0.8}
    p_b = {CLEAN: 0.9, "fog": 0.8, "rotate": 0.5}
    a = robustness_run({cell: (rng.random(300) < p_a[cell[0]]).astype(int).tolist() for cell in cells}, "a" * 16)
    b = robustness_run({cell: (rng.random(300) < p_b[cell[0]]).astype(int).tolist() for cell in cells}, "b" * 16)
    # A request of source 7 left unanswered by B: source 7 is left out of every cell, for both models.
    keep = np.array([parse_cell_id(i) != ("7", "fog", 2) for i in b.answers.image])
    b.answers = Answers.of(
        *(np.asarray(getattr(b.answers, k))[keep] for k in ("index", "image", "label", "prediction", "confidence"))
    )
    part = robustness_part(a, b, worst=3)
    f = part.figures
    assert f["sources"] == 299 and f["incomplete_sources"] == 1
    assert all(c["n"] == 299 and c["judged"] for c in f["model"]["cells"])
    errors = f["corruption_errors_of_b"]
    fog = errors["corruptions"]["fog"]
    assert fog["ce"] < 1 < errors["corruptions"]["rotate"]["ce"]  # B errs less than A under fog, more under rotate
    assert fog["ce_interval"][0] <= fog["ce"] <= fog["ce_interval"][1]
    compared = {(row["corruption"], row["severity"]): row for row in f["cells_b_against_a"]}
    assert compared[("fog", 1)]["significant"] and compared[("fog", 1)]["difference"] > 0
    assert compared[("rotate", 1)]["significant"] and compared[("rotate", 1)]["difference"] < 0
    written = part.write_plots(tmp_path)
    assert sorted(p.name for p in written) == ["heatmap-b.png", "heatmap.png"]
    for path in written:
        with Image.open(path) as png:
            assert png.size[0] > 300
    text = "\n".join(str(block) for _, blocks in part.sections for block in blocks)
    assert "mCE of B" in text and "Holm" in text

    slices = slices_part(a, b, {"half": {str(i): "first" if i < 150 else "second" for i in range(300)}})
    for column, rows in slices.figures["columns"].items():
        assert sum(row["n"] for row in rows) == len(a.answers), column
    assert [row["value"] for row in slices.figures["columns"]["severity"]] == ["0", "1", "2"]
    paired = slices.figures["b_against_a"]["half"]
    assert sum(row["n"] for row in paired) == len(b.answers)  # the requests both models answered


def test_slices_of_a_plain_run_add_up_and_name_what_the_csv_left_out():
    n = 50
    run = RunResult(
        run=RunInfo(run_id="plain"),
        model=ModelIdentity("m", ("m",)),
        dataset=DatasetIdentity("toy", "e" * 64, n),
        class_names=tuple(str(i) for i in range(10)),
        answers=Answers.of(
            np.arange(n), [str(i) for i in range(n)], np.arange(n) % 10, np.arange(n) % 7, np.full(n, 0.8)
        ),
        counters=Counters(sent=n),
    )
    part = slices_part(run, None, {"light": {str(i): "day" if i % 3 else "night" for i in range(40)}})
    rows = {row["value"]: row for row in part.figures["columns"]["light"]}
    assert list(part.figures["columns"]) == ["light"]
    assert {k: v["n"] for k, v in rows.items()} == {"day": 26, "night": 14, NOT_IN_CSV: 10}
    day = [i for i in range(40) if i % 3]
    assert rows["day"]["correct"] == sum(i % 10 == i % 7 for i in day)
    assert robustness_part(run) is None


def test_a_cell_too_small_to_judge_says_so():
    small = robustness_run({(CLEAN, 0): [1] * 19 + [0], ("fog", 1): [1] * 10 + [0] * 10}, "a" * 16)
    part = robustness_part(small)
    assert not part.figures["model"]["cells"][0]["judged"]
    assert any(TOO_WIDE in line for line in part.terminal)
    assert outcomes_of(small)[0].sources == 20


# ------------------------------------------------------------------ flags
def test_bad_robustness_and_slices_flags_exit_2_with_one_line_before_jax_loads(tmp_path):
    bad_csv = write_csv(tmp_path / "bad.csv", "lighting\nday\n")
    cases = [
        ["--corruptions", "snow"],
        ["--corruptions", "all", "--severities", "0-5"],
        ["--corruptions", "all", "--per-cell", "0"],
        ["--corruptions", "all", "--per-cell", "many"],
        ["--corruptions", "fog", "--seed", "-1"],
        ["--severities", "3"],
        ["--corruptions", "fog", "--index", "3"],
        ["--slices", str(tmp_path / "missing.csv")],
        ["--slices", str(bad_csv)],
        ["--slices", str(write_csv(tmp_path / "i.csv", "index,a\n1,x\n")), "--dataset", "folder:/somewhere"],
    ]
    results, heavy = mains_in_one_process("streamer.__main__", cases, ("jax", "flax", "orbax", "google"))
    assert heavy == []
    for argv, (code, err) in zip(cases, results):
        assert code == 2, argv
        assert re.match(r"(python -m streamer: )?error: ", err) and err.count("\n") == 1, (argv, err)


# ------------------------------------------------------------------ PNG: what the server decodes
def test_png_robustness_set_is_what_load_image_decodes():
    """Fog at severity 5 lifts some backgrounds above the garment: the server's decoding inverts those, and
    the set's `seen` images (the offline check's) are exactly load_image of the PNG bytes sent."""
    from streamer.datasets import robustness_set
    from streamer.stream import png_bytes
    from train.data import load_fashion_mnist, load_image

    data = load_fashion_mnist("test", 40)
    raw = robustness_set(data, ["fog"], [5], 20, 0, "raw")
    png = robustness_set(data, ["fog"], [5], 20, 0, "png")
    assert raw.seen is raw.streamed and raw.info["inverted"] is None
    assert png.streamed.ids == raw.streamed.ids and png.streamed.digest == png.seen.digest
    np.testing.assert_array_equal(png.streamed.images, raw.streamed.images)
    for sent, seen in zip(png.streamed.images, png.seen.images):
        np.testing.assert_array_equal(seen, load_image(png_bytes(sent), sent.shape))
    inverted = [k for k, (s, v) in enumerate(zip(png.streamed.images, png.seen.images)) if np.array_equal(v, 255 - s)]
    assert png.info["inverted"] == len(inverted) > 0 and min(inverted) >= 20  # corrupted ones only
    assert [parse_cell_id(i)[1] for i in png.streamed.ids[:20]] == [CLEAN] * 20


# ------------------------------------------------------------------ the streamed run
@pytest.fixture(scope="module")
def folder_model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped model under folder-safe class names ("T-shirt/top" cannot name a folder), and 40 test
    images as PNG files in DIR/test/<class>/<index>.png."""
    if not (SHIPPED_MODEL / "metadata.json").is_file():
        pytest.skip("the shipped model is not there")
    from train.data import load_fashion_mnist

    root = tmp_path_factory.mktemp("robust")
    model = root / "model"
    shutil.copytree(SHIPPED_MODEL, model)
    meta = json.loads((model / "metadata.json").read_text())
    meta["class_names"] = [name.replace("/", "-") for name in meta["class_names"]]
    (model / "metadata.json").write_text(json.dumps(meta))
    data = load_fashion_mnist("test", 40)
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = root / "images" / "test" / meta["class_names"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")
    return model, root / "images"


@pytest.mark.emulator
@pytest.mark.timeout(240)
def test_streamed_robustness_run_with_slices_equals_offline_prediction_by_prediction(
    emulator, suffix, folder_model_and_data, tmp_path
):
    """2 corruptions x 2 severities x 20 source images and the 20 clean ones, as PNG through the broker and
    the server's decoding; sliced by a CSV that names images by class/file or bare file, and leaves some out."""
    from streamer.datasets import load_dataset, robustness_set
    from train.checkpoint import load_metadata
    from train.evaluate import evaluate_model

    model, images = folder_model_and_data
    files = sorted(p.relative_to(images / "test").as_posix() for p in (images / "test").glob("*/*.png"))
    rows = [f"{f if k % 2 else f.split('/')[1]},{'first' if k < 20 else 'second'}" for k, f in enumerate(files[:30])]
    slices = write_csv(tmp_path / "slices.csv", "file,half\n" + "\n".join(rows) + "\n")
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [
            sys.executable, "-m", "streamer", "--dataset", f"folder:{images}", "--model", str(model),
            "--content-type", "png", "--corruptions", "fog,rotate", "--severities", "1,5", "--per-cell", "20",
            "--slices", str(slices), "--rate", "0", "--topic-suffix", suffix, "--reports-dir", str(reports),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streaming 100 requests (20 clean, 80 corrupted)" in proc.stdout
    (folder,) = [p for p in reports.iterdir() if (p / "report.json").is_file()]
    report = json.loads((folder / "report.json").read_text())
    assert report["counts"]["sent"] == report["counts"]["answered"] == 100
    assert report["offline"]["identical"] is True and report["offline"]["agree"] == 100

    # The offline evaluation, rebuilt here from the same flags: the same 100 images as the server decoded
    # them, and the same label for every one of them.
    source = load_dataset(f"folder:{images}", load_metadata(model))
    seen = robustness_set(source, ["fog", "rotate"], [1, 5], 20, 0, "png").seen
    offline = evaluate_model(model, dataset=seen)
    streamed = {p["image"]: p["prediction"] for p in report["predictions"]}
    assert streamed == dict(zip(offline.answers.image, offline.answers.prediction.tolist()))
    assert {parse_cell_id(i)[1:] for i in streamed} == {
        (CLEAN, 0),
        ("fog", 1),
        ("fog", 5),
        ("rotate", 1),
        ("rotate", 5),
    }

    robust = report["robustness"]["model"]
    assert robust["per_cell"] == 20 and len(robust["cells"]) == 4
    # Per-slice counts add up to the run; the CSV's halves hold 5 requests (clean + 4 cells) per source image.
    sliced = report["slices"]["columns"]
    for column in ("severity", "half"):
        assert sum(row["n"] for row in sliced[column]) == 100, column
    half = {row["value"]: row["n"] for row in sliced["half"]}
    by_source = {parse_cell_id(i)[0] for i in streamed}
    first = {f for k, f in enumerate(files[:30]) if k < 20}
    second = {f for k, f in enumerate(files[:30]) if k >= 20}
    assert half.get("first", 0) == 5 * len(by_source & first) and half.get("second", 0) == 5 * len(by_source & second)
    assert half.get(NOT_IN_CSV, 0) == 5 * len(by_source - first - second)
    for name in ("heatmap.png", "gallery.png", "slices.png"):
        assert (folder / name).is_file()
    assert "Robustness: where does the model break?" in (folder / "report.md").read_text()


# ------------------------------------------------------------------ the collector's patience
class TrickleCollector:
    """A collector whose results arrive one every `every` seconds until `total`, or stop after `stall_at`."""

    def __init__(self, total: int, every: float, stall_at: int | None = None):
        import threading
        import time

        self.labels, self.total, self.every, self.stall_at = np.zeros(total), total, every, stall_at
        self.started, self.done, self.time = time.monotonic(), threading.Event(), time

    def count_answered(self) -> int:
        n = min(self.total, int((self.time.monotonic() - self.started) / self.every))
        n = n if self.stall_at is None else min(n, self.stall_at)
        if n == self.total:
            self.done.set()
        return n

    def running_stats(self):
        return None, None


def wait(collector: TrickleCollector, timeout_s: float, idle_s: float) -> float:
    import asyncio
    import time
    from types import SimpleNamespace

    from streamer.run import wait_for_results

    subscription = SimpleNamespace(error=lambda: None)
    cfg = SimpleNamespace(timeout_s=timeout_s, idle_timeout_s=idle_s)
    start = collector.started = time.monotonic()  # the clock starts with the wait, not with the imports
    asyncio.run(
        wait_for_results(
            [collector], [SimpleNamespace(set_postfix_str=print)], None, subscription, asyncio.Event(), cfg
        )
    )
    return time.monotonic() - start


def test_the_collector_waits_as_long_as_results_come_and_gives_up_when_they_stop():
    # Answering for 2.4 s, 8x the timeout: waited for to the last result.
    steady = TrickleCollector(total=24, every=0.1)
    took = wait(steady, timeout_s=0.3, idle_s=0.3)
    assert steady.done.is_set() and steady.count_answered() == 24 and took >= 2.3
    # Stops answering after 5 results: given up about 0.3 s later.
    stalled = TrickleCollector(total=24, every=0.1, stall_at=5)
    took = wait(stalled, timeout_s=0.3, idle_s=0.3)
    assert not stalled.done.is_set() and stalled.count_answered() == 5 and 0.7 <= took < 1.5
