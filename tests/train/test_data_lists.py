"""Training data from several folders (e.g. OpenKBP's train-pats + extra-train-pats) and list files."""

from __future__ import annotations

import json

import pytest

from mddose.data.phantom import write_phantoms
from mddose.errors import MddoseError
from mddose.train.config import load_train_config
from mddose.data.sources import list_patients


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    write_phantoms(2, root / "a", seed=0, size=32)
    write_phantoms(1, root / "b", seed=9, size=32)
    return root


def test_list_of_folders_concatenates_in_order(two_folders):
    folders, skipped = list_patients([str(two_folders / "a"), str(two_folders / "b")])
    assert [f.relative_to(two_folders).as_posix() for f in folders] == ["a/pt_1", "a/pt_2", "b/pt_1"]
    assert skipped == []


def test_config_paths_in_a_list_are_resolved_against_the_config(two_folders, tmp_path):
    cfg_file = two_folders / "c.json"
    cfg_file.write_text(json.dumps({"model": "md-dose", "data": {"train": ["a", "b"], "val": "b"}}))
    cfg = load_train_config(cfg_file)
    assert cfg.data.train == (str(two_folders / "a"), str(two_folders / "b"))
    assert cfg.data.val == str(two_folders / "b")


@pytest.mark.parametrize("bad", [[], [1, 2], {"a": 1}, 5])
def test_bad_data_lists_are_refused(tmp_path, bad):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": "md-dose", "data": {"train": bad}}))
    with pytest.raises(MddoseError, match="data.train"):
        load_train_config(p)
