"""python -m bench.models: two models' model-only img/s, alternating in one process."""

from __future__ import annotations

import json

from bench.models import main


def test_compare_records_machine_and_medians(model_dir, tmp_path, capsys):
    rc = main([str(model_dir), "--sizes", "8", "32", "--rounds", "2", "--seconds", "0.05", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("models-*.json")
    r = json.loads(path.read_text())
    assert r["machine"]["cores"] >= 1 and "avx512" in r["machine"]
    entry = r["models"][str(model_dir)]
    assert set(entry["img_per_s"]) == {"8", "32"}
    assert all(len(v) == 2 and min(v) > 0 for v in entry["img_per_s"].values())
    assert entry["median"]["32"] > 0


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
