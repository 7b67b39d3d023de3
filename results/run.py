"""One run's result: what was asked, what came back, from which model, on which images.

A streamed run (the collector) and an offline evaluation (train.evaluate) both produce a RunResult.
Every figure is a function of one (results/metrics.py); every comparison is between two
(results/compare.py). ``report.json`` is its serialisation, with a schema version.

An image is known across runs by its dataset's digest and its id within the dataset: the index for
IDX datasets, ``class/file`` for image folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# report.json's layout. Reports written before it have no "schema_version" (call them 1): their
# predictions carry neither server timings nor image identities, so they are not read.
SCHEMA_VERSION = 2


class ReportError(Exception):
    """A report.json that cannot be read as a run result; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class DatasetIdentity:
    name: str
    digest: str  # sha256 of the source dataset (images, labels, file names): a --limit run keeps it
    size: int  # images in this run


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    identity: str | None  # the checkpoint digest's first 16 hex digits, as the server signs its results
    seen: tuple[str, ...] = ()  # every identity that answered: more than one is a warning
    dir: str | None = None


@dataclasses.dataclass
class RunInfo:
    """How the run was made; nothing here is measured."""

    run_id: str = ""
    mode: str = "stream"  # stream, collect-only or offline
    started_at: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    rate_target: float | None = None
    rate_achieved: float | None = None
    streams: int | None = None
    limit: int | None = None
    dataset: str | None = None  # the --dataset spec
    replicas: int | None = None
    server_mode: str | None = None
    content_type: str | None = None
    broker: str | None = None
    versions: dict = dataclasses.field(default_factory=dict)
    machine: dict | None = None  # results/machine.py: the CPU kind the figures were measured on
    interrupted: bool = False
    warm_up: dict | None = None
    # A robustness run: its corruptions, severities, images per cell, seed and generation time
    # (streamer/datasets.py robustness_set); its image ids name each request's cell (results/robustness.py).
    robustness: dict | None = None
    slices: dict | None = None  # --slices: the file, its key and slice columns, rows naming no image of the run


# The per-request columns, with what stands for "unknown" in each (None: always known).
FLOAT_COLUMNS = ("latency_ms", "queue_ms", "compute_ms", "received_s")  # NaN when unknown
INT_COLUMNS = {"index": None, "label": None, "prediction": None, "batch_size": 0, "seq": -1}
TEXT_COLUMNS = ("image", "stream")
# What a collector measures per request (the rest, index, image and label, come from the dataset).
MEASURED = (
    "prediction",
    "confidence",
    "latency_ms",
    "queue_ms",
    "compute_ms",
    "batch_size",
    "received_s",
    "stream",
    "seq",
)


@dataclasses.dataclass
class Answers:
    """The requests answered with a prediction, one row each, held as columns."""

    index: np.ndarray  # position in the run's dataset
    image: list[str]  # identity within the dataset
    label: np.ndarray  # the truth, joined locally (labels never travel)
    prediction: np.ndarray
    confidence: np.ndarray  # float32, as the server computed it
    latency_ms: np.ndarray  # publish to receipt
    queue_ms: np.ndarray
    compute_ms: np.ndarray
    batch_size: np.ndarray
    received_s: np.ndarray  # epoch seconds at receipt
    stream: list[str]
    seq: np.ndarray
    probs: np.ndarray | None = None  # (n, classes), offline evaluations only: the wire carries the top-k

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def offline(cls, image: Sequence[str], label: np.ndarray, probs: np.ndarray) -> Answers:
        """Every image answered by a local predict call: no broker, so no timings."""
        n = len(label)
        return cls.of(np.arange(n), image, label, probs.argmax(-1), probs.max(-1), probs=probs)

    @classmethod
    def of(cls, index, image, label, prediction, confidence, probs=None, **measured) -> Answers:
        """Columns from sequences; the measured columns not given are unknown."""
        n = len(index)
        columns = {name: measured.get(name, np.full(n, np.nan)) for name in FLOAT_COLUMNS}
        columns |= {
            name: measured.get(name, np.full(n, default))
            for name, default in INT_COLUMNS.items()
            if default is not None
        }
        return cls(
            index=np.asarray(index, np.int64),
            image=[str(i) for i in image],
            label=np.asarray(label, np.int64),
            prediction=np.asarray(prediction, np.int64),
            confidence=np.asarray(confidence, np.float32),
            latency_ms=np.asarray(columns["latency_ms"], np.float64),
            queue_ms=np.asarray(columns["queue_ms"], np.float64),
            compute_ms=np.asarray(columns["compute_ms"], np.float64),
            batch_size=np.asarray(columns["batch_size"], np.int64),
            received_s=np.asarray(columns["received_s"], np.float64),
            stream=list(measured.get("stream", [""] * n)),
            seq=np.asarray(columns["seq"], np.int64),
            probs=None if probs is None else np.asarray(probs, np.float32),
        )

    def to_columns(self) -> dict[str, list]:
        """Each column as a JSON list; every value reads back exactly (a float32 as its exact float64 value)."""
        columns: dict[str, list] = {name: list(getattr(self, name)) for name in TEXT_COLUMNS}
        columns |= {name: getattr(self, name).tolist() for name in INT_COLUMNS}
        columns |= {name: _nan_to_none(getattr(self, name)) for name in FLOAT_COLUMNS}
        columns["confidence"] = self.confidence.astype(np.float64).tolist()
        if self.probs is not None:
            columns["probs"] = self.probs.astype(np.float64).tolist()
        return columns

    @classmethod
    def from_columns(cls, columns: dict[str, list]) -> Answers:
        floats = {name: np.array(columns[name], np.float64) for name in FLOAT_COLUMNS}  # None reads as NaN
        probs = columns.get("probs")
        return cls.of(
            columns["index"], columns["image"], columns["label"], columns["prediction"],
            np.array(columns["confidence"], np.float32), probs=None if probs is None else np.array(probs, np.float32),
            **floats, batch_size=columns["batch_size"], seq=columns["seq"], stream=columns["stream"],
        )  # fmt: skip

    def to_rows(self) -> list[dict]:
        """One JSON object per answered request (report.json's "predictions")."""
        columns = self.to_columns()
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Answers:
        names = [*TEXT_COLUMNS, *INT_COLUMNS, *FLOAT_COLUMNS, "confidence"] + (
            ["probs"] if rows and "probs" in rows[0] else []
        )
        return cls.from_columns({name: [row[name] for row in rows] for name in names})


@dataclasses.dataclass
class Counters:
    """What the collector counted besides the answers."""

    sent: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    stray: int = 0  # results of requests that are not this run's
    invalid: int = 0  # results that break the wire contract (refused)


@dataclasses.dataclass
class Ordering:
    violations: int = 0
    by_stream: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OfflineCheck:
    """The streamed predictions against an offline evaluation of the same checkpoint on the same images."""

    model: str
    offline_accuracy: float | None
    compared: int
    agree: int
    mismatches: list[int]  # image indices, the first 100
    identical: bool
    max_confidence_diff: float | None = None  # over the images with the same label
    tolerance: float | None = None  # results/agreement.py's, for the confidences
    differences: list[str] = dataclasses.field(default_factory=list)  # what differs beyond it


@dataclasses.dataclass
class RunResult:
    run: RunInfo
    model: ModelIdentity
    dataset: DatasetIdentity
    class_names: tuple[str, ...]
    answers: Answers
    counters: Counters
    ordering: Ordering = dataclasses.field(default_factory=Ordering)
    # Error results: {index (None: not one of this run's requests), request_id, error, detail, stream, seq}.
    errors: list[dict] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # request ids never answered
    published_s: np.ndarray | None = None  # epoch seconds each request was published (None: not published)
    offline: OfflineCheck | None = None

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "run": dataclasses.asdict(self.run),
            "model": {**dataclasses.asdict(self.model), "seen": list(self.model.seen)},
            "dataset": dataclasses.asdict(self.dataset),
            "class_names": list(self.class_names),
            "counters": dataclasses.asdict(self.counters),
            "ordering": dataclasses.asdict(self.ordering),
            "errors": self.errors,
            "missing": self.missing,
            "predictions": self.answers.to_rows(),
            "published_s": None if self.published_s is None else _nan_to_none(self.published_s),
            "offline": None if self.offline is None else dataclasses.asdict(self.offline),
        }

    @classmethod
    def from_json(cls, d: dict) -> RunResult:
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version != SCHEMA_VERSION:
            raise ReportError(
                f"it comes from an older version of the streamer (report schema {version or 1}, this version reads "
                f"{SCHEMA_VERSION}): run it again to read or compare it"
                if version is None or (isinstance(version, int) and version < SCHEMA_VERSION)
                else f"it has report schema {version!r}, this version reads {SCHEMA_VERSION}"
            )
        try:
            published = d["published_s"]
            return cls(
                run=RunInfo(**d["run"]),
                model=ModelIdentity(**{**d["model"], "seen": tuple(d["model"]["seen"])}),
                dataset=DatasetIdentity(**d["dataset"]),
                class_names=tuple(d["class_names"]),
                answers=Answers.from_rows(d["predictions"]),
                counters=Counters(**d["counters"]),
                ordering=Ordering(**d["ordering"]),
                errors=list(d["errors"]),
                missing=list(d["missing"]),
                published_s=None if published is None else np.array(published, np.float64),
                offline=None if d["offline"] is None else OfflineCheck(**d["offline"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ReportError(f"not a run result of schema {SCHEMA_VERSION} ({type(err).__name__}: {err})") from None


def _nan_to_none(values: np.ndarray) -> list:
    return [None if v != v else v for v in np.asarray(values, np.float64).tolist()]  # v != v: NaN


# ------------------------------------------------------------------ report.json
def save(path: str | Path, runs: Sequence[RunResult], figures: Sequence[dict], comparison: dict | None = None) -> None:
    """report.json: the first run's result and its figures at the top level; with two models, the
    comparison under "compare" and the second run (result and figures) inside it as "b".

    The figures are written for readers (and `jq`); reading a report takes only the results back.
    """
    docs = []
    for run, figs in zip(runs, figures, strict=True):
        doc = run.to_json()
        assert not set(doc) & set(figs), "a figure's name is a result field's"
        docs.append(doc | figs)
    if len(docs) > 1:
        docs[0]["compare"] = {**(comparison or {}), "b": docs[1]}
    Path(path).write_text(json.dumps(docs[0], indent=1, default=_json_default), encoding="utf-8")


def load(path: str | Path) -> list[RunResult]:
    """The run result(s) in a report.json: one, or two when two models were compared."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: not readable JSON ({err})") from None
    try:
        runs = [RunResult.from_json(doc)]
        if isinstance(doc.get("compare"), dict):
            runs.append(RunResult.from_json(doc["compare"].get("b")))
    except ReportError as err:
        raise ReportError(f"{path}: {err}") from None
    return runs


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays that reach a figure are written as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ------------------------------------------------------------------ identity
def dataset_digest(images: np.ndarray, labels: np.ndarray, files: Sequence[str] = (), ids: Sequence[str] = ()) -> str:
    """sha256 of a dataset's images, labels and image ids (explicit ones, else the folders' or the indices), in order."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.asarray(labels, np.int64).tobytes())
    h.update("\n".join(ids or image_ids(len(labels), files)).encode())
    return h.hexdigest()


def image_ids(n: int, files: Sequence[str] = ()) -> list[str]:
    """Each image's id within its dataset: ``class/file`` for a folder, else its index."""
    return ["/".join(Path(f).parts[-2:]) for f in files] if files else [str(i) for i in range(n)]


def dataset_identity(data) -> tuple[DatasetIdentity, list[str]]:
    """The identity of a train.data.Dataset (anything with images, labels, name, files, digest) and its image ids.

    Explicit ids (`data.ids`, e.g. a robustness run's "<source id>|<corruption>|<severity>") win over the
    index or file name; such a dataset carries its own digest.
    """
    ids = list(getattr(data, "ids", ()) or image_ids(len(data.labels), data.files))
    digest = getattr(data, "digest", "") or dataset_digest(data.images, data.labels, data.files)
    return DatasetIdentity(str(data.name), digest, len(data.labels)), ids
