"""3D volume data layer (C3D / HD-UNet): config, channels, resampling round trip, augmentation, TTA, dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mddose.data.patient import OPENKBP_OARS, Patient
from mddose.data.phantom import PHANTOM_OARS, make_phantom, write_phantoms
from mddose.data.inputs.resample import axis_weights
from mddose.data.inputs.volume import (
    VolumeConfig,
    VolumeDataset,
    augment_volume,
    patient_to_volume,
    rotate_axial,
    tta_predict,
    volume_to_patient,
)
from mddose.errors import MddoseError



def _cube(seed: int = 0, size: int = 32) -> Patient:
    """A phantom on a cubic size³ grid (its (size/2, size, size) grid with every axial slice doubled)."""
    p = make_phantom(seed, size)
    rep = lambda a: np.repeat(a, 2, axis=0)  # noqa: E731
    sz, sy, sx = p.spacing
    return Patient(id=f"cube_{seed}", ct=rep(p.ct), spacing=(sz / 2, sy, sx),
                   masks={k: rep(v) for k, v in p.masks.items()}, dose=rep(p.dose),
                   possible_dose_mask=rep(p.possible_dose_mask), prescriptions=dict(p.prescriptions))


def _z_invariant(size: int = 16, mask_box=None) -> Patient:
    """A synthetic patient whose arrays do not depend on z; ROI ``LungL`` lies on the patient's left (high x)."""
    rng = np.random.default_rng(1)
    tile = lambda a: np.repeat(a[None], size, axis=0)  # noqa: E731
    left = np.zeros((size, size), bool)
    left[4:8, size - 5:size - 2] = True
    ptv = np.zeros((size, size), bool)
    ptv[6:10, 6:10] = True
    pdm = np.ones((size, size, size), bool) if mask_box is None else np.zeros((size, size, size), bool)
    if mask_box is not None:
        pdm[mask_box] = True
    return Patient(id="zinv", ct=tile(rng.uniform(-900, 1400, (size, size))), spacing=(2.0, 3.0, 3.0),
                   masks={"PTV": tile(ptv), "LungL": tile(left)}, dose=tile(rng.uniform(1, 60, (size, size))),
                   possible_dose_mask=pdm, prescriptions={"PTV": 60.0})


def _tensors(arr):
    return torch.from_numpy(arr.cond), torch.from_numpy(arr.dose), torch.from_numpy(arr.mask)


@pytest.fixture(scope="module")
def cube() -> Patient:
    return _cube(0, 32)


# ---------------------------------------------------------------------------------------------- config
def test_config_roundtrip_presets():
    cfg = VolumeConfig(size=64, target_channel="max", translate=5)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert VolumeConfig.from_dict(d) == cfg
    assert cfg.channels == 2 + len(OPENKBP_OARS) == 9 and cfg.channel_names[:2] == ("CT", "PTV")
    ph = VolumeConfig.for_phantoms(size=32)
    assert ph.targets == ("PTV",) and ph.oars == PHANTOM_OARS and ph.size == 32 and ph.channels == 8
    assert cfg.air_value == pytest.approx(-1.0)
    perm = cfg.mirror_permutation  # RightParotid (channel 4) <-> LeftParotid (channel 5)
    assert perm[4] == 5 and perm[5] == 4 and [perm[i] for i in (0, 1, 2, 3, 6, 7, 8)] == [0, 1, 2, 3, 6, 7, 8]
    assert ph.mirror_permutation[3:5] == (4, 3)  # LungL <-> LungR


@pytest.mark.parametrize("bad", [{"size": 4}, {"target_channel": "mean"}, {"translate": -1}, {"ct_clip": (1, 0)},
                                 {"reference_dose": 0}, {"flip": "yes"}, {"oars": ("A", "A")}, {"targets": ()},
                                 {"colour": 1}])
def test_config_rejects(bad):
    with pytest.raises(MddoseError, match="volume config"):
        VolumeConfig.from_dict(bad)


# ---------------------------------------------------------------------------------------------- channels
def test_channels_phantom(cube):
    cfg = VolumeConfig.for_phantoms(size=32, oars=("Heart", "Liver", "LungL", "LungR"))
    arr = patient_to_volume(cube, cfg)
    assert arr.cond.shape == (6, 32, 32, 32) and arr.cond.dtype == np.float32
    assert arr.dose.shape == arr.mask.shape == (1, 32, 32, 32)
    np.testing.assert_array_equal(arr.cond[0], np.clip(cube.ct, -1024, 1500).astype(np.float32) / np.float32(1000))
    np.testing.assert_array_equal(arr.cond[1], cube.masks["PTV"] * np.float32(60 / 70))
    for i, name in enumerate(cfg.oars):
        expect = cube.masks[name] if name in cube.masks else np.zeros(cube.shape)
        np.testing.assert_array_equal(arr.cond[2 + i], expect)
    assert arr.missing == ["Liver"]
    np.testing.assert_array_equal(arr.mask[0], cube.possible_dose_mask)
    np.testing.assert_array_equal(arr.dose[0], cube.dose / np.float32(70))


@pytest.mark.parametrize("mode, overlap", [("sum", (70 + 56) / 70), ("max", 1.0)])
def test_target_channel_overlap(cube, mode, overlap):
    a = np.zeros(cube.shape, bool)
    b = np.zeros(cube.shape, bool)
    a[10:20, 10:20, 10:20] = True
    b[15:25, 15:25, 15:25] = True
    p = Patient(id="two_ptvs", ct=cube.ct, spacing=cube.spacing, masks={"PTV70": a, "PTV56": b},
                prescriptions={"PTV70": 70.0, "PTV56": 56.0})
    cfg = VolumeConfig(size=32, targets=("PTV70", "PTV63", "PTV56"), oars=(), target_channel=mode)
    arr = patient_to_volume(p, cfg)
    ch = arr.cond[1]
    assert ch[17, 17, 17] == pytest.approx(overlap) and ch[11, 11, 11] == pytest.approx(1.0)
    assert ch[24, 24, 24] == pytest.approx(0.8) and ch[0, 0, 0] == 0.0
    assert arr.missing == ["PTV63"] and arr.dose is None


def test_resampled_channels_are_fractions():
    p = make_phantom(0, 64)  # (32, 64, 64) -> 48³: z grows, y and x shrink
    arr = patient_to_volume(p, VolumeConfig.for_phantoms(size=48))
    assert arr.cond.shape == (8, 48, 48, 48)
    oars = arr.cond[2:]
    assert oars.min() >= 0 and oars.max() <= 1 and ((oars > 0) & (oars < 1)).any()
    assert set(np.unique(arr.mask)) <= {0.0, 1.0}
    assert arr.cond[0].min() >= -1.024 and arr.cond[0].max() <= 1.5
    assert abs(arr.mask.mean() - p.possible_dose_mask.mean()) < 0.02


def test_channels_openkbp(openkbp_dir):
    from mddose.data.io import load_patient

    p = load_patient(openkbp_dir / "train-pats" / "pt_1")
    cfg = VolumeConfig()
    arr = patient_to_volume(p, cfg)
    assert arr.cond.shape == (9, 128, 128, 128)
    np.testing.assert_array_equal(arr.cond[0], np.clip(p.ct, -1024, 1500).astype(np.float32) / np.float32(1000))
    ptv = sum(p.masks[t] * (rx / 70.0) for t, rx in p.prescriptions.items() if t in p.masks)
    np.testing.assert_allclose(arr.cond[1], ptv, atol=1e-6)
    for i, name in enumerate(OPENKBP_OARS):
        np.testing.assert_array_equal(arr.cond[2 + i], p.masks.get(name, np.zeros(p.shape, bool)))
    assert arr.missing == [n for n in (*cfg.targets, *OPENKBP_OARS) if n not in p.masks]
    back = volume_to_patient(arr.dose, p, cfg)
    m = p.dose_mask()
    np.testing.assert_allclose(back[m], p.dose[m], rtol=1.2e-7, atol=0)


# ---------------------------------------------------------------------------------------------- round trip
def test_axis_weights():
    x = torch.randn(3, 1, 64)
    for n, mode in ((32, "area"), (128, "linear")):
        ref = F.interpolate(x, size=n, mode=mode, **({"align_corners": False} if mode == "linear" else {}))
        torch.testing.assert_close(x[:, 0] @ axis_weights(64, n), ref[:, 0])
    for m, n in ((64, 48), (64, 20), (30, 77)):
        w = axis_weights(m, n)
        assert w.shape == (m, n) and w.min() >= 0
        torch.testing.assert_close(w.sum(0), torch.ones(n))


@pytest.mark.parametrize("reference", [64.0, 70.0])
def test_native_round_trip_exact(cube, reference):
    cfg = VolumeConfig.for_phantoms(size=32, reference_dose=reference)
    arr = patient_to_volume(cube, cfg)
    back = volume_to_patient(torch.from_numpy(arr.dose), cube, cfg)
    m = cube.dose_mask()
    assert back.shape == cube.shape and back.dtype == np.float32 and (back[~m] == 0).all()
    if reference == 64.0:  # a power of two: ÷ and × are exact
        np.testing.assert_array_equal(back[m], cube.dose[m])
    else:  # only the float32 rounding of ÷ 70 then × 70 (≤ 1 ulp)
        np.testing.assert_allclose(back[m], cube.dose[m], rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("size", [32, 48])
def test_coarse_round_trip_bounded(size):
    p = make_phantom(0, 64)  # (32, 64, 64), 6 mm voxels, D95(PTV) = 60 Gy
    cfg = VolumeConfig.for_phantoms(size=size)
    back = volume_to_patient(patient_to_volume(p, cfg).dose[0], p, cfg)
    m = p.dose_mask()
    mae = float(np.abs(back - p.dose)[m].mean())
    # measured 0.43 Gy (32) and 0.36 Gy (48), for an in-mask mean dose of 6.3 Gy and a 60 Gy prescription
    assert mae < 0.6 and back.shape == p.shape and (back[~m] == 0).all()


def test_postprocessing_clips_and_masks(cube):
    cfg = VolumeConfig.for_phantoms(size=32)
    pred = np.full((32, 32, 32), -0.5, np.float32)
    pred[:, 16:] = 0.5
    out = volume_to_patient(pred, cube, cfg)
    m = cube.dose_mask()
    assert out.min() == 0 and (out[~m] == 0).all() and np.allclose(out[:, 16:][m[:, 16:]], 35.0)
    with pytest.raises(MddoseError, match="cube_0.*prediction must have shape"):
        volume_to_patient(np.zeros((2, 32, 32, 32)), cube, cfg)


@pytest.mark.parametrize("spacing", [None, (float("nan"), 6.0, 6.0), (5.0, 6.0), (0.0, 6.0, 6.0), "abc"])
def test_missing_spacing(spacing):
    p = make_phantom(0, 32)  # (16, 32, 32): needs resampling to 32³
    cfg = VolumeConfig.for_phantoms(size=32)
    pred = patient_to_volume(p, cfg).dose
    p.spacing = spacing
    with pytest.raises(MddoseError, match=r"patient phantom_0: cannot resample to the model's 32³ grid"):
        patient_to_volume(p, cfg)
    with pytest.raises(MddoseError, match=r"phantom_0: cannot resample"):
        volume_to_patient(pred, p, cfg)


# ---------------------------------------------------------------------------------------------- augmentation
def test_x_flip_swaps_left_right():
    p = _z_invariant()
    cfg = VolumeConfig(size=16, targets=("PTV",), oars=("LungL", "LungR", "Heart"), rotate=False, translate=0)
    cond, dose, mask = _tensors(patient_to_volume(p, cfg))
    seen = set()
    for seed in range(30):
        c, d, m = augment_volume(cond, dose, mask, cfg, torch.Generator().manual_seed(seed))
        flipped = bool(c[3].any())
        seen.add(flipped)
        if flipped:  # LungL moved to the LungR channel, at the mirrored (low-x, patient's right) position
            assert not c[2].any() and c[3][:, :, :8].any() and not c[3][:, :, 8:].any()
            torch.testing.assert_close(c[3], cond[2].flip(-1), rtol=0, atol=0)
            torch.testing.assert_close(c[0], cond[0].flip(-1), rtol=0, atol=0)
            torch.testing.assert_close(d, dose.flip(-1), rtol=0, atol=0)
        else:  # z flips are no-ops on a z-invariant patient
            assert torch.equal(c, cond) and torch.equal(d, dose)
    assert seen == {True, False}


def test_rotation_nearest_and_consistent():
    p = _z_invariant()
    cfg = VolumeConfig(size=16, targets=("PTV",), oars=("LungL", "LungR"), flip=False, translate=0)
    cond, dose, mask = _tensors(patient_to_volume(p, cfg))
    pair = {float(a): float(b) for a, b in zip(cond[0, 0].flatten(), dose[0, 0].flatten())}
    rotated = 0
    for seed in range(20):
        c, d, m = augment_volume(cond, dose, mask, cfg, torch.Generator().manual_seed(seed))
        if torch.equal(c, cond):
            continue
        rotated += 1
        air = cfg.air_value
        assert float(c[0, 0, 0, 0]) == pytest.approx(air) and float(d[0, 0, 0, 0]) == 0 and float(m[0, 0, 0, 0]) == 0
        assert set(c[2:].unique().tolist()) <= {0.0, 1.0} and set(m.unique().tolist()) <= {0.0, 1.0}
        inside = m[0, 0] > 0  # every voxel that came from the grid carries the (CT, dose) pair of its source
        for ct_v, d_v in zip(c[0, 0][inside].tolist(), d[0, 0][inside].tolist()):
            assert pair[ct_v] == d_v
    assert rotated >= 2
    t = torch.arange(2 * 9 * 9, dtype=torch.float32).reshape(1, 2, 9, 9)
    assert torch.equal(rotate_axial(t, 0.0), t) and rotate_axial(t, 40.0)[0, 0, 4, 4] == t[0, 0, 4, 4]


@pytest.mark.parametrize("box", [(slice(6, 9), slice(5, 10), slice(6, 11)), (slice(12, 16), slice(0, 4), slice(0, 3))])
def test_translation_keeps_mask_inside(box):
    p = _z_invariant(mask_box=box)
    cfg = VolumeConfig(size=16, targets=("PTV",), oars=("LungL",), flip=False, rotate=False, translate=20)
    cond, dose, mask = _tensors(patient_to_volume(p, cfg))
    moved = 0
    for seed in range(12):
        c, d, m = augment_volume(cond, dose, mask, cfg, torch.Generator().manual_seed(seed))
        assert m.sum() == mask.sum()
        zz, yy, xx = (torch.nonzero(m[0]).min(0).values - torch.nonzero(mask[0]).min(0).values).tolist()
        moved += (zz, yy, xx) != (0, 0, 0)
        rolled = np.roll(dose.numpy(), (zz, yy, xx), axis=(1, 2, 3))
        np.testing.assert_array_equal(d.numpy()[m.numpy() > 0], rolled[m.numpy() > 0])
        ct_rolled = np.roll(cond[0].numpy(), (zz, yy, xx), axis=(0, 1, 2))
        np.testing.assert_array_equal(c[0].numpy()[m[0].numpy() > 0], ct_rolled[m[0].numpy() > 0])
        if zz > 0:
            assert torch.all(c[0, :zz] == cfg.air_value) and torch.all(d[:, :zz] == 0)
    assert moved >= 6


def test_dataset_items_and_determinism(cube):
    cfg = VolumeConfig.for_phantoms(size=32)
    pats = [cube, _cube(1, 32)]
    ds = VolumeDataset(pats, cfg, augment=True, seed=3)
    assert len(ds) == 2 and ds.cond.dtype == np.float16 and ds.dose.dtype == np.float16 and ds.mask.dtype == bool
    assert ds.patient_ids == ["cube_0", "cube_1"]
    a, b = ds[1], ds[1]
    assert a["index"] == 1 and a["cond"].shape == (8, 32, 32, 32) and a["cond"].dtype == torch.float32
    assert a["dose"].shape == a["mask"].shape == (1, 32, 32, 32)
    assert all(torch.equal(a[k], b[k]) for k in ("cond", "dose", "mask"))
    same = VolumeDataset(pats, cfg, augment=True, seed=3)[1]
    assert all(torch.equal(a[k], same[k]) for k in ("cond", "dose", "mask"))
    differs = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        differs.append(not torch.equal(ds[1]["cond"], a["cond"]))
    assert any(differs)
    plain = VolumeDataset(pats[:1], cfg)[0]
    ref = patient_to_volume(cube, cfg)
    np.testing.assert_allclose(plain["cond"].numpy(), ref.cond, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(plain["mask"].numpy(), ref.mask)


def test_dataset_rejects_patient_without_dose(cube, tmp_path):
    cfg = VolumeConfig.for_phantoms(size=32)
    with pytest.raises(MddoseError, match="no_dose_pt"):
        VolumeDataset([cube, cube.with_dose(None, id="no_dose_pt")], cfg)
    paths = write_phantoms(3, tmp_path / "pats", size=32)
    (paths[1] / "dose.csv").unlink()
    (paths[2] / "ct.csv").write_text("not a csv")
    ds = VolumeDataset(paths, cfg, progress=True)  # directories that fail are skipped and listed
    assert ds.patient_ids == ["pt_1"] and ds.missing == {"pt_1": []} and len(ds) == 1
    assert ds.cond.shape[0] == ds.dose.shape[0] == ds.mask.shape[0] == 1
    assert [b[0] for b in ds.bad] == [str(paths[1]), str(paths[2])]
    assert "no dose" in ds.bad[0][1] and "ct.csv" in ds.bad[1][1]
    with pytest.raises(MddoseError, match="no usable patient.*pt_2"):
        VolumeDataset(paths[1:], cfg)


# ---------------------------------------------------------------------------------------------- TTA
def test_tta(cube):
    cfg = VolumeConfig.for_phantoms(size=32)
    cond = torch.from_numpy(patient_to_volume(cube, cfg).cond)[None]
    equivariant = lambda c: c[:, 1:2] * 2 + c[:, 0:1] ** 2  # noqa: E731  (voxel-wise, no L/R channel)
    assert torch.equal(tta_predict(equivariant, cond, cfg), equivariant(cond))
    lung_l, lung_r = 2 + PHANTOM_OARS.index("LungL"), 2 + PHANTOM_OARS.index("LungR")
    out = tta_predict(lambda c: c[:, lung_l:lung_l + 1], cond, cfg)  # x flips read the swapped channel
    torch.testing.assert_close(out, (cond[:, lung_l:lung_l + 1] + cond[:, lung_r:lung_r + 1]) / 2)
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 1, 32) + 100 * torch.arange(32.0).view(1, 1, 32, 1, 1)
    asym = lambda c: c[:, 1:2] + ramp  # noqa: E731
    out = tta_predict(asym, cond, cfg)
    assert not torch.allclose(out, asym(cond))
    torch.testing.assert_close(out - cond[:, 1:2], torch.full_like(out, 31 / 2 + 100 * 31 / 2))
    with pytest.raises(MddoseError, match="tta_predict"):
        tta_predict(asym, cond[0], cfg)
