"""Figures of mddose.evaluate.figures (files, shared colour scales, DVH values) and the report's viewer frames
(mddose.evaluate.report.frames)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.errors import MddoseError
from mddose.evaluate import figures as F
from mddose.evaluate.report import frames as V


def make_patient(pid: str = "pt_1", shape=(16, 48, 48), seed: int = 0, with_dose: bool = True) -> Patient:
    """A small synthetic patient: ellipsoid body, PTV and OAR, smooth Gaussian dose (≤ 60 Gy) in the body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    cz, cy, cx = [(n - 1) / 2 for n in shape]
    sz, sy, sx = shape[0] / 16, shape[1] / 48, shape[2] / 48
    body = ((z - cz) / (9 * sz)) ** 2 + ((y - cy) / (20 * sy)) ** 2 + ((x - cx) / (22 * sx)) ** 2 <= 1
    ptv = ((z - cz) / (4 * sz)) ** 2 + ((y - cy - 3 * sy) / (6 * sy)) ** 2 + ((x - cx + 4 * sx) / (6 * sx)) ** 2 <= 1
    oar = ((z - cz) / (6 * sz)) ** 2 + ((y - cy + 8 * sy) / (3 * sy)) ** 2 + ((x - cx - 8 * sx) / (3 * sx)) ** 2 <= 1
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    r2 = ((z - cz) / (5 * sz)) ** 2 + ((y - cy - 3 * sy) / (9 * sy)) ** 2 + ((x - cx + 4 * sx) / (9 * sx)) ** 2
    dose = (60.0 * np.exp(-r2 / 2) * body).astype(np.float32)
    return Patient(id=pid, ct=ct, spacing=(2.5, 3.0, 3.0), masks={"PTV": ptv, "Body": body, "Heart": oar},
                   dose=dose if with_dose else None, possible_dose_mask=body, prescriptions={"PTV": 60.0})


def make_prediction(patient: Patient, shift: int = 2, scale: float = 1.03) -> np.ndarray:
    """(Z, Y, X) Gy: the reference dose shifted along x and scaled (a plausible imperfect prediction)."""
    return (np.roll(patient.dose, shift, axis=2) * scale).astype(np.float32)


def _images(fig, gid: str) -> list:
    return [im for ax in fig.axes for im in ax.images if im.get_gid() == gid]


@pytest.fixture(scope="module")
def patient() -> Patient:
    return make_patient()


# ---------------------------------------------------------------------------------------------- Fig. 2
def test_dose_error_figure_writes_valid_png(patient, tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "sub" / "fig2.png"
    fig = F.dose_error_figure(patient.ct, patient.dose, {"A": make_prediction(patient)}, [5, 8, 10],
                              patient.spacing, out)
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig2.png"]  # no temporary left behind
    assert len(fig.axes) >= 3 * 3


@pytest.mark.parametrize("n_methods", [1, 2, 3])
def test_dose_error_figure_shares_colour_scales(patient, n_methods):
    preds = {f"m{i}": make_prediction(patient, shift=i + 1, scale=1.0 + 0.05 * i) for i in range(n_methods)}
    slices = [6, 8]
    fig = F.dose_error_figure(patient.ct, patient.dose, preds, slices, patient.spacing)
    doses, errors = _images(fig, "dose"), _images(fig, "error")
    assert len(doses) == len(slices) * (1 + n_methods)
    assert len(errors) == len(slices) * n_methods
    dose_limits = {(im.norm.vmin, im.norm.vmax) for im in doses}
    assert len(dose_limits) == 1  # one shared scale ...
    assert dose_limits.pop() == (0.0, pytest.approx(float(patient.dose.max())))  # ... 0 .. max reference
    limits = {(im.norm.vmin, im.norm.vmax) for im in errors}
    assert len(limits) == 1
    lo, hi = limits.pop()
    assert lo == -hi and hi > 0
    # the default limit is the 99th percentile of |error| on the shown slices inside the dose region
    # (voxels above the threshold in the reference or any prediction)
    thr = F.DOSE_THRESHOLD * float(patient.dose.max())
    region = {s: (patient.dose[s] > thr) | np.any([p[s] > thr for p in preds.values()], axis=0) for s in slices}
    errs = np.concatenate([np.abs(p[s] - patient.dose[s])[region[s]] for p in preds.values() for s in slices])
    assert hi == pytest.approx(np.percentile(errs, F.ERROR_PERCENTILE), rel=1e-3)
    assert 0 < hi <= errs.max()
    # every dose image of the same slice shows the same CT underneath with the same window
    cts = _images(fig, "ct")
    assert {(im.norm.vmin, im.norm.vmax) for im in cts} == {F.CT_WINDOW}


def test_dose_error_figure_explicit_error_limit_and_default_slices(patient):
    fig = F.dose_error_figure(patient.ct, patient.dose, {"A": make_prediction(patient)}, None, patient.spacing,
                              error_limit=7.5, target=patient.masks["PTV"])
    assert {(im.norm.vmin, im.norm.vmax) for im in _images(fig, "error")} == {(-7.5, 7.5)}
    assert len(_images(fig, "error")) == len(F.default_slices(patient.masks["PTV"]))


@pytest.mark.parametrize("bad", ["shape", "empty", "slice"])
def test_dose_error_figure_rejects_bad_input(patient, bad):
    preds = {"A": make_prediction(patient)}
    slices = [5]
    if bad == "shape":
        preds = {"A": make_prediction(patient)[:-1]}
    elif bad == "empty":
        preds = {}
    else:
        slices = [patient.shape[0]]
    with pytest.raises(MddoseError):
        F.dose_error_figure(patient.ct, patient.dose, preds, slices, patient.spacing)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_default_slices_centre_on_target(n):
    target = np.zeros((40, 8, 8), dtype=bool)
    target[20:31, 3:5, 3:5] = True  # centre z = 25, half extent 5
    picks = F.default_slices(target, n=n)
    assert picks == sorted(picks, reverse=True) and len(set(picks)) == len(picks)
    assert 25 in picks and len(picks) == n
    assert all(20 <= p <= 30 for p in picks)


def test_default_slices_fallbacks():
    dose = np.zeros((12, 4, 4), dtype=np.float32)
    dose[3] = 5.0
    assert F.default_slices(None, dose, n=1) == [3]
    assert F.default_slices(np.zeros((12, 4, 4), bool), np.zeros((12, 4, 4)), n=3) == [6]


# ---------------------------------------------------------------------------------------------- Fig. 3
def test_dvh_figure_curves_and_styles(patient, tmp_path):
    import matplotlib.image as mpimg

    preds = {"A": make_prediction(patient), "B": make_prediction(patient, shift=-3, scale=0.9)}
    masks = dict(patient.masks, Empty=np.zeros(patient.shape, dtype=bool))
    out = tmp_path / "dvh.png"
    fig = F.dvh_figure(patient.dose, preds, masks, patient.voxel_volume_cc, out, n_bins=120)
    assert mpimg.imread(out).shape[0] > 200
    lines = {ln.get_gid(): ln for ln in fig.axes[0].lines}
    assert set(lines) == {f"{m}|{r}" for m in ("gt", "A", "B") for r in patient.masks}  # empty ROI left out
    for roi, m in patient.masks.items():
        gt = lines[f"gt|{roi}"]
        bins = gt.get_xdata()
        np.testing.assert_allclose(gt.get_ydata(), 100 * (patient.dose[m][:, None] >= bins[None]).mean(0),
                                   atol=1e-9)
        np.testing.assert_allclose(lines[f"A|{roi}"].get_ydata(),
                                   100 * (preds["A"][m][:, None] >= bins[None]).mean(0), atol=1e-9)
        assert gt.get_linestyle() == "-" and lines[f"A|{roi}"].get_linestyle() != "-"
        assert lines[f"A|{roi}"].get_linestyle() != lines[f"B|{roi}"].get_linestyle()
        assert lines[f"A|{roi}"].get_color() == gt.get_color()  # one colour per ROI
    colours = {lines[f"gt|{r}"].get_color() for r in patient.masks}
    assert len(colours) == len(patient.masks)


def test_dvh_figure_eight_methods_stay_distinguishable(patient):
    """The paper-cpu study draws 8 methods: no two may share a line style (dash pattern + marker)."""
    styles = [F.method_style(j) for j in range(8)]
    assert len({(repr(st["ls"]), st.get("marker")) for st in styles}) == 8
    preds = {f"M{j}": make_prediction(patient, shift=j) for j in range(8)}
    fig = F.dvh_figure(patient.dose, preds, {"PTV": patient.masks["PTV"]}, n_bins=60)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].lines}
    legend = {h.get_label(): h for h in fig.axes[0].get_legend().legend_handles}
    for j, st in enumerate(styles):
        assert lines[f"M{j}|PTV"].get_marker() == st.get("marker", "None")
        assert legend[f"M{j}"].get_marker() == st.get("marker", "None")   # the legend shows what is drawn


@pytest.mark.parametrize("j, ok", [(0, True), (34, True), (35, False), (-1, False)])
def test_method_style_limits(j, ok):
    if ok:
        assert "ls" in F.method_style(j)
    else:
        with pytest.raises(MddoseError, match="methods per DVH figure"):
            F.method_style(j)


def test_dvh_figure_accepts_single_array_and_rejects_empty_masks(patient):
    fig = F.dvh_figure(patient.dose, make_prediction(patient), {"PTV": patient.masks["PTV"]})
    assert {ln.get_gid() for ln in fig.axes[0].lines} == {"gt|PTV", "Prediction|PTV"}
    with pytest.raises(MddoseError):
        F.dvh_figure(patient.dose, make_prediction(patient), {"X": np.zeros(patient.shape, bool)})


# ---------------------------------------------------------------------------------------------- viewer frames
def test_viewer_panels_composite(patient):
    ct2d = patient.ct[8]
    dose2d = patient.dose[8]
    err2d = make_prediction(patient)[8] - dose2d
    rgb = V.viewer_panels(ct2d, [(dose2d, F.DOSE_CMAP, 0.0, 60.0), (err2d, F.ERROR_CMAP, -10.0, 10.0),
                                 (None, "magma", 0.0, 1.0)], gap=2)
    h, w = ct2d.shape
    assert rgb.shape == (h, 3 * w + 2 * 2, 3) and rgb.dtype == np.uint8
    grey = np.clip((ct2d - F.CT_WINDOW[0]) / (F.CT_WINDOW[1] - F.CT_WINDOW[0]), 0, 1)
    expected_grey = (grey * 255 + 0.5).astype(np.uint8)
    third = rgb[:, 2 * (w + 2):]
    np.testing.assert_array_equal(third, np.repeat(expected_grey[..., None], 3, axis=2))  # no layer: CT only
    outside = dose2d <= 0.02 * 60.0
    np.testing.assert_array_equal(rgb[:, :w][outside], np.repeat(expected_grey[outside][:, None], 3, axis=1))
    inside = dose2d > 0.5 * 60.0
    assert np.any(rgb[:, :w][inside][:, 0] != rgb[:, :w][inside][:, 2])  # coloured where dose is high


@pytest.mark.parametrize("fmt,mime", [("jpeg", "image/jpeg"), ("png", "image/png")])
def test_encode_image_data_uri(fmt, mime):
    from PIL import Image

    rgb = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)
    uri = V.encode_image(rgb, fmt=fmt)
    head, data = uri.split(",", 1)
    assert head == f"data:{mime};base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (30, 20)
    with pytest.raises(MddoseError):
        V.encode_image(rgb, fmt="gif")


def test_viewer_panels_show_mask_and_outline_flags():
    ct2d = np.zeros((6, 5), dtype=np.float32)
    values = np.zeros((6, 5), dtype=np.float32)  # zero error: white in RdBu_r, drawn only where shown
    show = np.zeros((6, 5), dtype=bool)
    show[2:4, 1:3] = True
    outline = np.zeros((6, 5), dtype=bool)
    outline[0, 0] = True
    rgb = V.viewer_panels(ct2d, [(values, F.ERROR_CMAP, -1.0, 1.0, show), (None, "magma", 0.0, 1.0)],
                          outline=outline, outline_panels=[False, True], gap=1)
    grey = int(0.5 * 255 + 0.5)
    left, right = rgb[:, :5].astype(int), rgb[:, 6:].astype(int)
    assert np.all(left[~show] == grey)  # CT only outside the shown region
    assert np.all(left[show] > grey)  # lighter where the (white) zero error is blended in
    assert np.all(left[0, 0] == grey) and np.all(right[0, 0] == 255)  # outline only where flagged


def test_viewer_frames_panels_and_crop(patient):
    from PIL import Image

    p = patient
    pred = make_prediction(p)
    fr = V.viewer_frames(p, pred, np.abs(pred - p.dose), max_px=96)
    assert [x[0] for x in fr["panels"]] == ["Prediction", "Ground truth", "Error (prediction − GT)",
                                            "Uncertainty (σ)"]
    lo, hi = fr["panels"][2][2:4]
    assert lo == -hi > -float(np.abs(pred - p.dose).max()) - 1e-6  # symmetric, robust (≤ max |error|)
    img = Image.open(io.BytesIO(base64.b64decode(fr["src"][0].split(",", 1)[1])))
    w, h = img.size
    assert 48 <= h <= 96 and w > 4 * h - 10  # cropped to the body, enlarged, four panels side by side
    assert fr["aspect"] == pytest.approx(w / h, rel=0.1)
    assert 0 <= fr["start"] < len(fr["src"])


def test_dose_error_figure_wraps_long_method_names_within_their_panel(patient):
    name = "lr 2e-3 + 50 warm-up steps + x0-prediction (reference)"
    fig = F.dose_error_figure(patient.ct, patient.dose, {name: make_prediction(patient)}, [8], patient.spacing)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3
    assert all(len(line) <= 26 for t in titles for line in t.splitlines())
    assert [t.replace("\n", " ") for t in titles[1:]] == [name, f"{name} − GT"]
