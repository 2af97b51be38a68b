"""The tree-settings script fits, scores held-out patients raw and smoothed, and caches its rows."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn.ensemble")


def test_scores_each_number_of_trees_raw_and_smoothed(openkbp_dir, tmp_path, capsys):
    from mddose.bench.scripts.tree_settings import main

    for part, ids in (("train", ("pt_1", "pt_2")), ("test", ("pt_201",))):
        (tmp_path / part).mkdir()
        for i in ids:
            src = openkbp_dir / ("validation-pats" if part == "test" else "train-pats") / i
            (tmp_path / part / i).symlink_to(src.resolve())
    args = ["--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--rows-cache",
            str(tmp_path / "cache"), "--rows", "2000", "--trees", "3,6", "--set", "max_leaf_nodes=7",
            "--extra", "0,4", "--log", str(tmp_path / "log.jsonl")]
    assert main(args) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["trees"] for r in rows] == [3, 6] and rows[0]["settings"]["max_leaf_nodes"] == 7
    for r in rows:
        raw, smooth = r["smooth_0"], r["smooth_3"]
        assert 0 < raw[0] < 30 and 0 < smooth[0] < 30 and raw != smooth
    assert rows[1]["smooth_0"][0] < rows[0]["smooth_0"][0]          # more trees fit better (few rows, 3 → 6)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pt_1.npz", "pt_2.npz", "pt_201.npz"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
