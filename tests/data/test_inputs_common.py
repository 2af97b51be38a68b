"""The slice and volume configs share one (de)serialisation and refuse bad values with one line."""

from __future__ import annotations

import json

import pytest

from mddose.data.inputs.common import InputConfig, mirror_name
from mddose.data.inputs.slices import SliceConfig
from mddose.data.inputs.volume import VolumeConfig
from mddose.errors import MddoseError

CONFIGS = [SliceConfig, VolumeConfig]
FLAG = {SliceConfig: "flip_x", VolumeConfig: "flip"}


@pytest.mark.parametrize("cls", CONFIGS)
def test_round_trip_through_json(cls):
    cfg = cls.for_phantoms(size=32)
    assert isinstance(cfg, InputConfig)
    back = cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert cfg.channel_names == ("CT", "PTV", *cfg.oars) and cfg.channels == 2 + len(cfg.oars)


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("bad, match", [
    ({"size": "abc"}, "size must be an integer"),
    ({"size": True}, "size must be an integer"),
    ({"size": 4}, "size must be >= 8"),
    ({"reference_dose": "70"}, "reference_dose must be a number"),
    ({"reference_dose": float("nan")}, "reference_dose must be a number"),
    ({"ct_clip": ["low", 100]}, "ct_clip must be"),
    ({"ct_clip": [100, -100]}, "ct_clip must be"),
    ({"targets": "PTV"}, "targets must be a list"),
    ({"oars": 3}, "oars must be a list"),
    ({"bogus": 1}, "unknown key"),
])
def test_bad_values_are_one_line(cls, bad, match):
    with pytest.raises(MddoseError, match=match) as err:
        cls.from_dict(bad)
    assert str(err.value).startswith(cls.WHERE) and "\n" not in str(err.value)


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flags_must_be_booleans(cls, value):
    with pytest.raises(MddoseError, match=f"{FLAG[cls]} must be true or false"):
        cls.from_dict({FLAG[cls]: value})


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("d", [[], "size=64", None])
def test_non_object_refused(cls, d):
    with pytest.raises(MddoseError, match="must be a JSON object"):
        cls.from_dict(d)


@pytest.mark.parametrize("name, other", [("LungL", "LungR"), ("RightParotid", "LeftParotid"), ("Femur_R", "Femur_L"),
                                         ("Heart", None), ("L", None)])
def test_mirror_name(name, other):
    assert mirror_name(name) == other
