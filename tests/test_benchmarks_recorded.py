"""benchmarks/_common.py: the benchmarks print each ratio beside the one recorded in
benchmarks/recorded.json, and say at a glance whether any moved."""

import json
import math

import pytest

from benchmarks import _common
from benchmarks._common import RECORDED, TOLERANCE, against_recorded, recorded_summary, table


def _name(row):
    return row["path"]


def test_no_record_prints_dashes_and_says_so(tmp_path):
    rows = [{"path": "expm", "ratio": 1.6}]
    against_recorded("bench", rows, "ratio", _name, path=tmp_path / "recorded.json")
    assert math.isnan(rows[0]["recorded_ratio"]) and math.isnan(rows[0]["change_ratio"])
    assert table(rows, [("path", "path", "s"), ("recorded_ratio", "recorded", ".2f")]).splitlines()[-1] == "| expm | - |"
    assert "none recorded for bench" in recorded_summary("bench", rows, ["ratio"], _name, path=tmp_path / "recorded.json")


def test_record_then_compare(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "header", lambda: "machine: test CPU, 2 cores\nversions: -")
    path = tmp_path / "recorded.json"
    first = [{"path": "closed_form", "ratio": 1.0}, {"path": "expm", "ratio": 1.6}, {"path": "tsit5", "ratio": math.nan}]
    against_recorded("bench", first, "ratio", _name, record=True, path=path)
    book = json.loads(path.read_text())
    assert book["bench"]["ratio"] == {"closed_form": 1.0, "expm": 1.6}  # NaN ratios are not recorded
    assert "test CPU" in book["bench"]["_recorded"]
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed

    within = [{"path": "closed_form", "ratio": 1.0}, {"path": "expm", "ratio": 1.6 * (1 + TOLERANCE / 2)}]
    against_recorded("bench", within, "ratio", _name, path=path)
    assert within[1]["change_ratio"] == pytest.approx(TOLERANCE / 2)
    assert "all 2 within 25% of their record" in recorded_summary("bench", within, ["ratio"], _name, path=path)

    moved = [{"path": "closed_form", "ratio": 1.0}, {"path": "expm", "ratio": 2.4}, {"path": "new", "ratio": 3.0}]
    against_recorded("bench", moved, "ratio", _name, path=path)
    summary = recorded_summary("bench", moved, ["ratio"], _name, path=path)
    assert "1 of 2 MOVED by more than 25%" in summary
    assert "- ratio of expm: 2.40, recorded 1.60 (+50%)" in summary
    assert "new" not in summary  # a row without a record is shown as "-", not counted


def test_shipped_record_holds_positive_ratios_with_their_source():
    book = json.loads(RECORDED.read_text())
    for bench, entry in book.items():
        if bench.startswith("_"):
            continue
        assert "UTC" in entry["_recorded"]  # when (and where) the ratios were measured
        ratios = [v for key, values in entry.items() if not key.startswith("_") for v in values.values()]
        assert ratios and all(v > 0 for v in ratios)
