"""The 3D models' full-resolution geometry (grid "crop"): the box, the patches, the round trip, the dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mddose.data.inputs.volume import VolumeConfig, native_volume
from mddose.data.inputs.volume_crop import (
    CropPatchDataset, channel_pad, crop_box, crop_to_patient, extract_patch, padded_shape, patch_start,
    patient_to_crop, predict_crop, predict_windows, window_starts,
)
from mddose.data.patient import Patient
from mddose.data.phantom import make_phantom, write_phantoms
from mddose.errors import MddoseError

BOX = (slice(3, 9), slice(5, 12), slice(2, 7))      # the possible-dose box of _boxed()


def _boxed(shape=(16, 20, 24), reference_pdm: bool = True) -> Patient:
    """A random patient whose possible-dose mask fills part of BOX, touching each of its six faces."""
    rng = np.random.default_rng(3)
    pdm = np.zeros(shape, bool)
    pdm[BOX] = rng.random(tuple(s.stop - s.start for s in BOX)) < 0.5
    for axis, s in enumerate(BOX):                   # one voxel on each face, so that BOX is the bounding box
        for edge in (s.start, s.stop - 1):
            idx = [sl.start for sl in BOX]
            idx[axis] = edge
            pdm[tuple(idx)] = True
    ptv = np.zeros(shape, bool)
    ptv[5:7, 7:10, 3:6] = True
    return Patient(id="boxed", ct=rng.uniform(-1000, 1400, shape).astype(np.float32), spacing=(2.0, 3.0, 3.0),
                   masks={"PTV": ptv, "LungL": rng.random(shape) < 0.3},
                   dose=rng.uniform(0, 70, shape).astype(np.float32),
                   possible_dose_mask=pdm, prescriptions={"PTV": 60.0})


def _cfg(**kw) -> VolumeConfig:
    return VolumeConfig.for_phantoms(**{"size": 16, "grid": "crop", "crop_margin": 0, **kw})


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_and_old_configs():
    old = VolumeConfig(size=64).to_dict()
    for key in ("grid", "crop_margin", "crop_predict"):
        del old[key]                                 # a config written before the geometry choice
    cfg = VolumeConfig.from_dict(json.loads(json.dumps(old)))
    assert cfg.grid == "resample" and cfg == VolumeConfig(size=64)
    crop = VolumeConfig(size=64, grid="crop", crop_margin=4)
    assert VolumeConfig.from_dict(json.loads(json.dumps(crop.to_dict()))) == crop


@pytest.mark.parametrize("bad", [{"grid": "cube"}, {"grid": 1}, {"crop_margin": -1}, {"crop_margin": 1.5},
                                 {"crop_predict": "tiles"}])
def test_config_rejects_bad_geometry(bad):
    with pytest.raises(MddoseError, match="^volume config: (grid|crop_margin|crop_predict)"):
        VolumeConfig.from_dict(bad)


# ---------------------------------------------------------------------------------------------- box
@pytest.mark.parametrize("margin,expect", [(0, BOX), (2, (slice(1, 11), slice(3, 14), slice(0, 9))),
                                           (100, (slice(0, 16), slice(0, 20), slice(0, 24)))])
def test_crop_box_known(margin, expect):
    assert crop_box(_boxed().dose_mask(), margin) == expect


def test_crop_box_empty_mask_is_the_grid():
    assert crop_box(np.zeros((4, 5, 6), bool), 3) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_crop_box_phantom():
    """Plain reference on a phantom: margin 0 holds the whole mask and each face plane has a mask voxel; a
    margin widens that box on each side, clipped to the grid."""
    m = make_phantom(2, 32).dose_mask()
    box = crop_box(m, 0)
    inside = np.zeros_like(m)
    inside[box] = True
    assert m.any() and not m[~inside].any()
    for axis, s in enumerate(box):
        assert np.take(m, s.start, axis=axis).any() and np.take(m, s.stop - 1, axis=axis).any()
    for margin in (1, 3, 40):
        assert crop_box(m, margin) == tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                                            for s, n in zip(box, m.shape))


# ---------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("reference", [64.0, 70.0])
def test_crop_round_trip_exact(reference):
    p = _boxed()
    cfg = _cfg(reference_dose=reference, crop_margin=1)
    arr = patient_to_crop(p, cfg)
    nat = native_volume(p, cfg)
    assert arr.cond.shape[1:] == (8, 9, 7) and arr.box == crop_box(p.dose_mask(), 1)
    np.testing.assert_array_equal(arr.cond, nat.cond[(slice(None), *arr.box)])
    back = crop_to_patient(torch.from_numpy(arr.dose), p, cfg, arr.box)
    m = p.dose_mask()
    assert back.shape == p.shape and back.dtype == np.float32 and (back[~m] == 0).all()
    if reference == 64.0:                            # a power of two: ÷ and × are exact
        np.testing.assert_array_equal(back[m], p.dose[m])
    else:                                            # only the float32 rounding of ÷ 70 then × 70 (≤ 1 ulp)
        np.testing.assert_allclose(back[m], p.dose[m], rtol=1.2e-7, atol=0)


def test_crop_to_patient_clips_masks_and_checks_shape():
    p = _boxed()
    cfg = _cfg()
    pred = np.full((6, 7, 5), -0.5, np.float32)
    pred[:, 3:] = 0.5
    out = crop_to_patient(pred, p, cfg, BOX)
    assert out.min() == 0 and (out[~p.dose_mask()] == 0).all()
    keep = p.dose_mask()[BOX][:, 3:]
    assert keep.any() and np.allclose(out[BOX][:, 3:][keep], 35.0)
    with pytest.raises(MddoseError, match="boxed: prediction must have the crop's shape"):
        crop_to_patient(np.zeros((6, 7, 6)), p, cfg, BOX)


# ---------------------------------------------------------------------------------------------- patches
def _reference_patch(a: np.ndarray, start, size: int, pad) -> np.ndarray:
    """Plain twin of extract_patch: pad every side by ``size`` with the per-channel values, then slice."""
    pad = np.broadcast_to(np.asarray(pad, a.dtype), (a.shape[0],))
    big = np.stack([np.pad(c, size, constant_values=v) for c, v in zip(a, pad)])
    return big[(slice(None), *(slice(s + size, s + 2 * size) for s in start))]


@pytest.mark.parametrize("start", [(0, 0, 0), (-3, 2, -7), (4, 10, 9), (12, 0, 0), (-8, -8, -8)])
def test_extract_patch_matches_reference(start):
    a = np.random.default_rng(0).random((3, 12, 15, 9)).astype(np.float32)
    pad = np.array([-1.0, 0.0, 2.0], np.float32)
    out = extract_patch(a, start, 8, pad)
    assert out.shape == (3, 8, 8, 8)
    np.testing.assert_array_equal(out, _reference_patch(a, start, 8, pad))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [4, 8, 12])
def test_patch_start_inside_bounds_and_on_the_mask(seed, size):
    p = _boxed()
    mask = patient_to_crop(p, _cfg()).mask[0] > 0.5     # (6, 7, 5): shorter than 8 and 12 on every axis
    g = torch.Generator().manual_seed(seed)
    start = patch_start(mask, size, g)
    for s0, n in zip(start, mask.shape):
        assert (0 <= s0 <= n - size) if n >= size else (n - size <= s0 <= 0)
    assert extract_patch(mask[None], start, size, False).sum() > 0


def test_patches_pad_with_air_and_zero():
    p = _boxed()
    cfg = _cfg(size=16, flip=False, rotate=False)       # the crop (6, 7, 5) is smaller than a patch
    ds = CropPatchDataset([p], cfg, augment=False)
    item = ds[0]
    cond, dose, mask = item["cond"].numpy(), item["dose"].numpy(), item["mask"].numpy()
    assert cond.shape == (cfg.channels, 16, 16, 16) and dose.shape == mask.shape == (1, 16, 16, 16)
    outside = extract_patch(np.ones((1, 6, 7, 5), np.float32), _start_of(ds, 0), 16, 0.0)[0] == 0
    assert outside.sum() == 16 ** 3 - 6 * 7 * 5
    pad = channel_pad(cfg, cfg.channels)
    assert pad[0] == cfg.air_value == pytest.approx(-1.0) and (pad[1:] == 0).all()
    for c in range(cfg.channels):
        assert (cond[c][outside] == pad[c]).all()
    assert (dose[0][outside] == 0).all() and (mask[0][outside] == 0).all() and mask.sum() == p.dose_mask().sum()


def _start_of(ds: CropPatchDataset, i: int):
    """The patch origin item ``i`` of the current epoch uses (the dataset's first draws)."""
    from mddose.data.inputs.volume import item_seed
    return patch_start(ds.mask[i], ds.cfg.size, torch.Generator().manual_seed(item_seed(ds.seed, ds.epoch, i)))


def test_dataset_items_are_patches_of_the_crop_and_deterministic():
    ps = [make_phantom(s, 32) for s in (0, 1)]
    cfg = _cfg(size=16)
    ds = CropPatchDataset(ps, cfg, augment=False, seed=4)
    assert len(ds) == 2 and ds.patient_ids == ["phantom_0", "phantom_1"]
    assert ds.cond[0].dtype == np.float16 and ds.mask[0].dtype == bool
    assert ds.nbytes == sum(c.nbytes + d.nbytes + m.nbytes for c, d, m in zip(ds.cond, ds.dose, ds.mask))
    for i in range(2):
        item, start = ds[i], _start_of(ds, i)
        np.testing.assert_array_equal(item["cond"].numpy(),
                                      extract_patch(ds.cond[i], start, 16, ds.pad).astype(np.float32))
        assert item["mask"].sum() > 0
    firsts = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        firsts.append(ds[0]["cond"])
    assert torch.equal(firsts[0], firsts[2]) and not torch.equal(firsts[0], firsts[1])
    aug = CropPatchDataset(ps, cfg, augment=True, seed=4)
    assert aug[1]["cond"].shape == (cfg.channels, 16, 16, 16) and torch.equal(aug[1]["cond"], aug[1]["cond"])


def test_dataset_refuses_no_dose_and_skips_bad_dirs(tmp_path):
    p = make_phantom(0, 32)
    with pytest.raises(MddoseError, match="crop dataset: patient.*phantom_0.*no dose"):
        CropPatchDataset([p.with_dose(None)], _cfg())
    write_phantoms(1, tmp_path / "pats", size=32)
    good = sorted((tmp_path / "pats").iterdir())
    ds = CropPatchDataset([*good, tmp_path / "nothing"], _cfg())
    assert len(ds) == 1 and len(ds.bad) == 1 and ds.bad[0][0].endswith("nothing")


# ---------------------------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("mode", ["whole", "windows"])
@pytest.mark.parametrize("tta", [False, True])
def test_predict_crop_puts_back(tta, mode):
    """A flip-commuting pointwise 'model' (the PTV channel) through a crop (6, 7, 5) that is no multiple of 4:
    whole = one pass padded to (8, 8, 8); windows = one 16³ window (the crop is smaller than a patch)."""
    p = _boxed()
    cfg = _cfg(crop_predict=mode)
    shapes = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape[2:]))
        assert all(n % 4 == 0 for n in x.shape[2:])
        return x[:, 1:2]

    out = predict_crop(fn, p, cfg, 4, tta=tta)
    one = padded_shape((6, 7, 5), 4) if mode == "whole" else (16, 16, 16)
    assert shapes == [one] * (4 if tta else 1) and (mode == "windows" or one == (8, 8, 8))
    expect = np.where(p.dose_mask(), p.masks["PTV"] * np.float32(60 / 70) * np.float32(70), 0)
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=0)
    assert out.shape == p.shape and (out[~p.dose_mask()] == 0).all()


@pytest.mark.parametrize("n,size", [(5, 8), (8, 8), (9, 8), (20, 8), (33, 16)])
def test_window_starts_cover_the_axis(n, size):
    starts = window_starts(n, size, size // 2)
    covered = np.zeros(n, int)
    for s0 in starts:
        covered[max(s0, 0):min(s0 + size, n)] += 1
        assert (s0 >= 0 and s0 + size <= n) if n > size else (s0 <= 0 and s0 + size >= n)
    assert (covered >= 1).all() and starts == sorted(set(starts))


def _reference_windows(fn, a: np.ndarray, size: int, pad: np.ndarray) -> np.ndarray:
    """Plain twin of predict_windows: each window cut with extract_patch, its output summed where it lies."""
    acc, cnt = np.zeros(a.shape[1:]), np.zeros(a.shape[1:])
    for z0 in window_starts(a.shape[1], size, size // 2):
        for y0 in window_starts(a.shape[2], size, size // 2):
            for x0 in window_starts(a.shape[3], size, size // 2):
                y = fn(torch.from_numpy(extract_patch(a, (z0, y0, x0), size, pad))[None])[0, 0].numpy()
                for zz, yy, xx in np.ndindex(*a.shape[1:]):
                    i, j, k = zz - z0, yy - y0, xx - x0
                    if 0 <= i < size and 0 <= j < size and 0 <= k < size:
                        acc[zz, yy, xx] += y[i, j, k]
                        cnt[zz, yy, xx] += 1
    return acc / cnt


def test_predict_windows_matches_reference():
    """A model that sees its whole window (each output voxel: itself minus the window's mean) over a crop larger
    than the window along two axes and smaller along one."""
    a = np.random.default_rng(1).random((2, 13, 6, 10)).astype(np.float32)
    pad = np.array([-1.0, 0.5], np.float32)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - x.mean(dim=(1, 2, 3, 4), keepdim=True)

    out = predict_windows(fn, torch.from_numpy(a)[None], 8, pad)
    assert out.shape == (1, 1, 13, 6, 10)
    np.testing.assert_allclose(out[0, 0].numpy(), _reference_windows(fn, a, 8, pad), rtol=1e-5, atol=1e-6)
