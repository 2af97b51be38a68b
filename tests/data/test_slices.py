"""2D slice dataset: config, channel layout, geometry round trip, augmentation, cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mddose.data.patient import OPENKBP_OARS, Patient
from mddose.data.phantom import PHANTOM_OARS, make_phantom
from mddose.data.inputs.slice_dataset import SliceDataset
from mddose.data.inputs.slices import (
    SliceConfig,
    augment_pair,
    patient_to_slices,
    select_slices,
    slices_to_volume,
    square_padding,
)
from mddose.errors import MddoseError


@pytest.fixture(scope="module")
def phantom() -> Patient:
    return make_phantom(0, 64)


@pytest.fixture(scope="module")
def phantom2() -> Patient:
    return make_phantom(1, 64)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MDDOSE_CACHE_DIR", str(d))
    return d


def _openkbp_dirs(root, n):
    return sorted((root / "train-pats").iterdir(), key=lambda p: int(p.name.split("_")[1]))[:n]


# ---------------------------------------------------------------------------------------------- config
def test_config_json_round_trip():
    cfg = SliceConfig.for_phantoms(size=96, ct_scale="[0,1]", rot90=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SliceConfig.from_dict(d) == cfg
    assert cfg.targets == ("PTV",) and cfg.oars == PHANTOM_OARS and cfg.reference_dose == 70.0
    assert SliceConfig().oars == OPENKBP_OARS and SliceConfig().channels == 2 + len(OPENKBP_OARS)


def test_config_unknown_key():
    with pytest.raises(MddoseError, match="unknown key"):
        SliceConfig.from_dict({"size": 64, "colour": "red"})


@pytest.mark.parametrize("kw", [{"size": 4}, {"size": 64.5}, {"ct_clip": (100, -100)}, {"ct_scale": "[0,255]"},
                                {"reference_dose": 0}, {"slice_selection": "some"}, {"targets": ()},
                                {"oars": ("PTV70",)}])
def test_config_rejects_bad_values(kw):
    with pytest.raises(MddoseError):
        SliceConfig(**kw)


def test_mirror_permutation_swaps_pairs():
    cfg = SliceConfig.for_phantoms()
    names = cfg.channel_names
    perm = cfg.mirror_permutation
    assert names[perm[names.index("LungL")]] == "LungR" and names[perm[names.index("LungR")]] == "LungL"
    assert names[perm[names.index("Heart")]] == "Heart"
    okbp = SliceConfig()
    on = okbp.channel_names
    assert on[okbp.mirror_permutation[on.index("LeftParotid")]] == "RightParotid"


# ---------------------------------------------------------------------------------------------- channels
def test_channel_layout_and_scaling(phantom):
    cfg = SliceConfig.for_phantoms(size=64)
    sa = patient_to_slices(phantom, cfg)
    z = sa.z
    assert sa.cond.shape == (len(z), 2 + len(PHANTOM_OARS), 64, 64) and sa.cond.dtype == np.float32
    assert sa.dose.shape == (len(z), 1, 64, 64)
    lo, hi = cfg.ct_clip
    expect_ct = 2 * (np.clip(phantom.ct[z], lo, hi) - lo) / (hi - lo) - 1
    np.testing.assert_allclose(sa.cond[:, 0], expect_ct, atol=1e-6)
    np.testing.assert_array_equal(sa.cond[:, 1], phantom.masks["PTV"][z].astype(np.float32))
    for i, name in enumerate(cfg.oars):
        np.testing.assert_array_equal(sa.cond[:, 2 + i], phantom.masks[name][z].astype(np.float32))
    np.testing.assert_allclose(sa.dose[:, 0], phantom.dose[z] / cfg.reference_dose, rtol=1e-6)
    assert sa.missing == ()


def test_ct_scale_01(phantom):
    sa = patient_to_slices(phantom, SliceConfig.for_phantoms(size=64, ct_scale="[0,1]"))
    assert sa.cond[:, 0].min() >= 0.0 and sa.cond[:, 0].max() <= 1.0
    assert sa.cond[:, 0].min() == pytest.approx(0.0)


def test_multi_level_targets_in_one_channel(phantom):
    """PTV70/63/56 share channel 1 as prescription / max prescription; overlaps take the highest."""
    ptv = phantom.masks["PTV"]
    zc = int(np.argmax(ptv.sum(axis=(1, 2))))
    x_mid = int(np.argwhere(ptv[zc])[:, 1].mean())
    left = ptv.copy()
    left[:, :, x_mid:] = False
    right = ptv & ~left
    ring = np.zeros_like(ptv)
    ring[zc] = True
    ring &= phantom.masks["Body"] & ~ptv
    masks = {"PTV70": left, "PTV63": right | left, "PTV56": ring}
    p = Patient(id="multi", ct=phantom.ct, spacing=phantom.spacing, masks=masks, dose=phantom.dose,
                possible_dose_mask=phantom.possible_dose_mask)
    cfg = SliceConfig(size=64, oars=("Heart",))
    sa = patient_to_slices(p, cfg)
    k = int(np.nonzero(sa.z == zc)[0][0])
    ch = sa.cond[k, 1]
    np.testing.assert_allclose(ch[left[zc]], 1.0)
    np.testing.assert_allclose(ch[right[zc]], 0.9)
    np.testing.assert_allclose(ch[ring[zc]], 0.8)
    assert np.all(ch[~(left | right | ring)[zc]] == 0)
    assert sa.missing == ("Heart",)
    assert not sa.cond[:, 2].any()


def test_missing_roi_gives_empty_channel(phantom):
    masks = {k: v for k, v in phantom.masks.items() if k != "Heart"}
    p = Patient(id="noheart", ct=phantom.ct, spacing=phantom.spacing, masks=masks, dose=phantom.dose,
                possible_dose_mask=phantom.possible_dose_mask, prescriptions=phantom.prescriptions)
    cfg = SliceConfig.for_phantoms(size=64)
    sa = patient_to_slices(p, cfg)
    assert sa.missing == ("Heart",)
    assert not sa.cond[:, cfg.channel_names.index("Heart")].any()
    assert sa.cond[:, cfg.channel_names.index("LungL")].any()


def test_target_mask_without_prescription_is_an_error(phantom):
    p = Patient(id="norx", ct=phantom.ct, spacing=phantom.spacing, masks=dict(phantom.masks), dose=phantom.dose,
                prescriptions={"Other": 50.0})
    with pytest.raises(MddoseError, match="prescription"):
        patient_to_slices(p, SliceConfig.for_phantoms(size=64))


def test_slice_selection(phantom):
    cfg = SliceConfig.for_phantoms(size=64)
    with_dose = select_slices(phantom, cfg)
    assert np.all(phantom.dose[with_dose].max(axis=(1, 2)) > 0)
    others = np.setdiff1d(np.arange(phantom.shape[0]), with_dose)
    assert np.all(phantom.dose[others] == 0)
    pred = patient_to_slices(phantom.with_dose(None), cfg, for_prediction=True)
    assert pred.dose is None
    np.testing.assert_array_equal(pred.z, np.nonzero(phantom.possible_dose_mask.any(axis=(1, 2)))[0])
    assert len(select_slices(phantom, SliceConfig.for_phantoms(slice_selection="all"))) == phantom.shape[0]
    with pytest.raises(MddoseError, match="no dose"):
        patient_to_slices(phantom.with_dose(None), cfg)


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("shape,expect", [((64, 64), (0, 0, 0, 0, 64)), ((60, 64), (2, 2, 0, 0, 64)),
                                          ((64, 57), (0, 0, 3, 4, 64))])
def test_square_padding(shape, expect):
    assert square_padding(shape) == expect


@pytest.mark.parametrize("seed", [0, 3])
def test_round_trip_exact_at_grid_size(seed):
    p = make_phantom(seed, 64)
    cfg = SliceConfig.for_phantoms(size=64)
    sa = patient_to_slices(p, cfg)
    back = slices_to_volume(sa.dose, sa.z, p, cfg)
    np.testing.assert_allclose(back, p.dose * p.dose_mask(), atol=1e-4)


@pytest.mark.parametrize("size,mean_tol", [(128, 0.5), (96, 0.5), (48, 1.0)])
def test_round_trip_resized_phantom(phantom, size, mean_tol):
    cfg = SliceConfig.for_phantoms(size=size)
    sa = patient_to_slices(phantom, cfg)
    back = slices_to_volume(torch.from_numpy(sa.dose), torch.from_numpy(sa.z), phantom, cfg)
    m = phantom.dose_mask()
    err = np.abs(back - phantom.dose)[m]
    assert err.mean() < mean_tol
    assert 0 < err.mean()                   # resizing is not the identity
    assert np.all(back[~m] == 0)


def test_round_trip_non_square_grid(phantom):
    """A (Y, X) = (64, 50) grid: pad to 64², exact back; padded CT is air."""
    crop = slice(7, 57)
    p = Patient(id="crop", ct=phantom.ct[:, :, crop], spacing=phantom.spacing,
                masks={k: v[:, :, crop] for k, v in phantom.masks.items()}, dose=phantom.dose[:, :, crop],
                possible_dose_mask=phantom.possible_dose_mask[:, :, crop], prescriptions=phantom.prescriptions)
    cfg = SliceConfig.for_phantoms(size=64)
    sa = patient_to_slices(p, cfg)
    assert sa.cond.shape[-2:] == (64, 64)
    np.testing.assert_allclose(sa.cond[:, 0, :, :7], -1.0)      # air after scaling
    assert not sa.cond[:, 2:, :, :7].any() and not sa.dose[..., :7].any()
    back = slices_to_volume(sa.dose, sa.z, p, cfg)
    np.testing.assert_allclose(back, p.dose * p.dose_mask(), atol=1e-4)


def test_slices_to_volume_fills_and_checks(phantom):
    cfg = SliceConfig.for_phantoms(size=64)
    z = np.array([10, 12, 12])
    pred = np.stack([np.full((1, 64, 64), v, np.float32) for v in (0.5, 0.2, 0.4)])
    vol = slices_to_volume(pred, z, phantom, cfg)
    m = phantom.dose_mask()
    assert np.all(vol[11] == 0) and np.all(vol[~m] == 0)
    np.testing.assert_allclose(vol[10][m[10]], 35.0, rtol=1e-6)
    np.testing.assert_allclose(vol[12][m[12]], 0.3 * 70.0, rtol=1e-6)   # repeated slices averaged
    assert np.all(slices_to_volume(-pred, z, phantom, cfg) == 0)         # clipped at 0 Gy
    with pytest.raises(MddoseError):
        slices_to_volume(pred[:, :, :32], z, phantom, cfg)
    with pytest.raises(MddoseError):
        slices_to_volume(pred, z[:2], phantom, cfg)
    with pytest.raises(MddoseError):
        slices_to_volume(pred, np.array([0, 1, 99]), phantom, cfg)


# ---------------------------------------------------------------------------------------------- dataset
def test_dataset_items_and_layout(cache_dir, phantom, phantom2):
    cfg = SliceConfig.for_phantoms(size=64)
    ds = SliceDataset([phantom, phantom2], cfg)
    n0 = len(select_slices(phantom, cfg))
    assert len(ds) == n0 + len(select_slices(phantom2, cfg))
    assert ds.cond.dtype == np.float16 and ds.cond.flags.c_contiguous
    item = ds[n0]
    assert set(item) == {"cond", "dose", "mask", "patient", "z"}
    assert item["cond"].shape == (cfg.channels, 64, 64) and item["cond"].dtype == torch.float32
    assert item["dose"].shape == (1, 64, 64)
    assert item["patient"] == 1 and ds.patient_ids == ["phantom_0", "phantom_1"]
    ref = patient_to_slices(phantom2, cfg)
    np.testing.assert_allclose(item["cond"].numpy(), ref.cond[0], atol=1e-3)
    np.testing.assert_allclose(item["dose"].numpy(), ref.dose[0], atol=1e-3)
    ds32 = SliceDataset([phantom], cfg, dtype="float32", cache=False)
    np.testing.assert_array_equal(ds32.cond, patient_to_slices(phantom, cfg).cond)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert batch["cond"].shape == (4, cfg.channels, 64, 64)


def test_augmentation_is_joint(cache_dir, phantom):
    cfg = SliceConfig.for_phantoms(size=64, flip_x=True, flip_y=True, rot90=True)
    ds = SliceDataset([phantom], cfg, augment=True, dtype="float32")
    ds.dose[:] = ds.cond[:, 1:2]            # dose := PTV channel, so any joint transform keeps them equal
    plain = SliceDataset([phantom], cfg, augment=False, dtype="float32")
    torch.manual_seed(0)
    changed = 0
    for _ in range(12):
        i = len(ds) // 2
        item = ds[i]
        torch.testing.assert_close(item["dose"][0], item["cond"][1])
        changed += not torch.equal(item["cond"], plain[i]["cond"])
    assert changed > 0


def test_left_right_flip_swaps_lung_channels(phantom):
    cfg = SliceConfig.for_phantoms(size=64, flip_x=True)
    sa = patient_to_slices(phantom, cfg)
    k = len(sa.z) // 2
    cond, dose = torch.from_numpy(sa.cond[k]), torch.from_numpy(sa.dose[k])
    g = torch.Generator().manual_seed(0)
    seen_flip = False
    for _ in range(10):
        c2, d2 = augment_pair(cond, dose, cfg, generator=g)
        if torch.equal(c2, cond):
            continue
        seen_flip = True
        il, ir = cfg.channel_names.index("LungL"), cfg.channel_names.index("LungR")
        torch.testing.assert_close(c2[il], cond[ir].flip(-1))
        torch.testing.assert_close(c2[0], cond[0].flip(-1))
        torch.testing.assert_close(d2, dose.flip(-1))
    assert seen_flip


def test_cache_hit_for_patient_objects(cache_dir, phantom, monkeypatch):
    import mddose.data.inputs.slice_cache as sc

    cfg = SliceConfig.for_phantoms(size=64)
    first = SliceDataset([phantom], cfg)
    assert any((cache_dir / "slices").iterdir())

    def boom(*a, **k):
        raise AssertionError("rebuilt despite the cache")

    monkeypatch.setattr(sc, "patient_to_slices", boom)
    second = SliceDataset([phantom], cfg)
    np.testing.assert_array_equal(first.cond, second.cond)
    # a different config is a different entry (must rebuild; the failure is reported as the patient's)
    with pytest.raises(MddoseError, match="phantom_0: AssertionError: rebuilt"):
        SliceDataset([phantom], SliceConfig.for_phantoms(size=32))
    # augmentation flags do not change the key
    SliceDataset([phantom], SliceConfig.for_phantoms(size=64, rot90=True))


@pytest.mark.parametrize("which", ["patient", "dataset"])
def test_damaged_cache_entry_is_rebuilt(cache_dir, phantom, which):
    cfg = SliceConfig.for_phantoms(size=64)
    first = np.array(SliceDataset([phantom], cfg).cond)
    root = cache_dir / "slices" / ("datasets" if which == "dataset" else "")
    (entry,) = [d for d in root.iterdir() if d.name != "datasets"]
    (entry / "cond.npy").unlink()           # (never truncate a file in place: it may be memory-mapped)
    (entry / "cond.npy").write_bytes(b"garbage")
    if which == "patient":  # force the dataset to be re-assembled from the damaged patient entry
        shutil.rmtree(cache_dir / "slices" / "datasets")
    second = SliceDataset([phantom], cfg)
    np.testing.assert_array_equal(first, second.cond)


def test_dataset_entry_reuses_patient_entries(cache_dir, phantom, phantom2, monkeypatch):
    import mddose.data.inputs.slice_cache as sc

    cfg = SliceConfig.for_phantoms(size=64)
    SliceDataset([phantom], cfg)
    real = sc.patient_to_slices

    def only_new(p, *a, **k):
        assert p.id != phantom.id, "unchanged patient rebuilt"
        return real(p, *a, **k)

    monkeypatch.setattr(sc, "patient_to_slices", only_new)
    ds = SliceDataset([phantom, phantom2], cfg)
    assert ds.patient_ids == ["phantom_0", "phantom_1"]
    assert isinstance(ds.cond, np.memmap)          # warm datasets are memory-mapped, not copied


def test_bad_items_are_reported(cache_dir, phantom, tmp_path):
    cfg = SliceConfig.for_phantoms(size=64)
    ds = SliceDataset([phantom, tmp_path / "nope", phantom.with_dose(None, id="nodose")], cfg)
    assert ds.patient_ids == ["phantom_0"]
    assert [b[0] for b in ds.bad] == [str(tmp_path / "nope"), "nodose"]
    with pytest.raises(MddoseError, match="no usable patients"):
        SliceDataset([tmp_path / "nope"], cfg)
    with pytest.raises(MddoseError):
        SliceDataset([phantom], cfg, dtype="int8")


# ---------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_patients(openkbp_dir):
    from mddose.data import io
    return [io.load_patient(d, cache=False) for d in _openkbp_dirs(openkbp_dir, 2)]


def test_real_round_trip_exact_at_128(real_patients):
    cfg = SliceConfig()
    for p in real_patients:
        sa = patient_to_slices(p, cfg)
        assert sa.cond.shape[1:] == (cfg.channels, 128, 128)
        back = slices_to_volume(sa.dose, sa.z, p, cfg)
        np.testing.assert_allclose(back, p.dose * p.dose_mask(), atol=1e-4)
        assert np.all(p.dose[np.setdiff1d(np.arange(128), sa.z)] == 0)


def test_real_round_trip_bounded_at_256(real_patients):
    """Bilinear up (128→256) then area down: a [1/8, 3/4, 1/8] smoothing per axis."""
    from scipy import ndimage

    cfg = SliceConfig(size=256)
    p = real_patients[0]
    sa = patient_to_slices(p, cfg)
    back = slices_to_volume(sa.dose, sa.z, p, cfg)
    m = p.dose_mask()
    err = np.abs(back - p.dose)
    assert 0 < err[m].mean() < 1.0                          # Gy
    inner = ndimage.binary_erosion(m, iterations=2)
    assert err[inner].max() < 3.0                           # Gy, away from the mask's dose cliff


def test_real_channels_and_missing(real_patients):
    cfg = SliceConfig()
    for p in real_patients:
        sa = patient_to_slices(p, cfg)
        assert set(sa.missing) == ({*cfg.targets, *cfg.oars} - set(p.masks))
        levels = np.unique(sa.cond[:, 1]).astype(np.float64)
        allowed = np.array([0.0, 0.8, 0.9, 1.0])
        assert np.abs(levels[:, None] - allowed).min(axis=1).max() < 1e-6
        assert levels.max() == 1.0
        for name in sa.missing:
            if name in cfg.oars:
                assert not sa.cond[:, cfg.channel_names.index(name)].any()


def test_real_dataset_cache_hit_without_loading(openkbp_dir, cache_dir, monkeypatch):
    import mddose.data.inputs.slice_cache as sc

    dirs = _openkbp_dirs(openkbp_dir, 2)
    cfg = SliceConfig()
    first = SliceDataset(dirs, cfg)
    assert first.patient_ids == [d.name for d in dirs]

    def boom(*a, **k):
        raise AssertionError("patient loaded despite the slice cache")

    monkeypatch.setattr(sc, "load_patient", boom)
    second = SliceDataset(dirs, cfg)
    np.testing.assert_array_equal(first.cond, second.cond)
    np.testing.assert_array_equal(first.z, second.z)


# ---------------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_bench_dataset_on_phantoms(tmp_path, capsys):
    from mddose.cli.main import main
    from mddose.data.phantom import write_phantoms

    write_phantoms(2, tmp_path / "pts", size=32, format="openkbp")
    assert main(["bench", "dataset", "--data", str(tmp_path / "pts"), "--size", "32", "--rois", "phantoms", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patients"] == 2
    stages = out["stages"]
    assert set(stages) == {"cold", "slices-cold", "warm"}
    assert len({s["slices"] for s in stages.values()}) == 1 and stages["warm"]["bad"] == 0
    assert all(s["peak_rss_bytes"] > 0 for s in stages.values())
