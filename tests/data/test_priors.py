"""Dose priors: gantry-angle convention on a phantom whose answer is known, beam masks, prior dose, SDFs,
spec/channels, cache, and one real OpenKBP patient (transforms and bad input: test_priors_inputs.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.data.patient import Patient
from mddose.data.priors import (
    PRIOR_KINDS,
    BeamArrangement,
    DoseModel,
    PriorsSpec,
    beam_vectors,
    channel_names,
    compute_priors,
    signed_distance,
)
from mddose.data.priors.distance import far_value

NO_SCATTER = DoseModel(margin_mm=4.0, penumbra_mm=2.0, scatter_fraction=0.0)
#: Target box of :func:`box_patient`: slices 5–7, rows 18–22 (anterior of the centre), columns 28–32
#: (the patient's left of the centre); a 4 mm margin is one voxel.
TZ, TY, TX = slice(5, 8), slice(18, 23), slice(28, 33)


def box_patient(shape=(12, 48, 48), spacing=(4.0, 4.0, 4.0)) -> Patient:
    """Air around a water cylinder (radius 80 mm about the grid axis) holding a box target ``PTV`` (60 Gy)."""
    nz, ny, nx = shape
    yy, xx = np.meshgrid((np.arange(ny) - (ny - 1) / 2) * spacing[1], (np.arange(nx) - (nx - 1) / 2) * spacing[2],
                         indexing="ij")
    body = np.broadcast_to((yy ** 2 + xx ** 2) <= 80.0 ** 2, shape).copy()
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    ptv = np.zeros(shape, dtype=bool)
    ptv[TZ, TY, TX] = True
    return Patient(id="box", ct=ct, spacing=spacing, masks={"PTV": ptv, "Body": body}, possible_dose_mask=body,
                   prescriptions={"PTV": 60.0})


def single_field(angle: float, names=("beams", "prior_dose")) -> PriorsSpec:
    return PriorsSpec(names, BeamArrangement((angle,)), NO_SCATTER)


# ------------------------------------------------------------------------------------- convention
@pytest.mark.parametrize("angle, beam", [(0, (1, 0)), (90, (0, -1)), (180, (-1, 0)), (270, (0, 1)),
                                         (45, (0.7071, -0.7071))])
def test_beam_vector_convention(angle, beam):
    """IEC: 0° travels anterior → posterior (+y), 90° comes from the patient's left (travels −x)."""
    b, lat = beam_vectors(angle)
    np.testing.assert_allclose(b, beam, atol=1e-4)
    assert abs(float(b @ lat)) < 1e-12


def test_beam_vectors_follow_the_direction_matrix():
    """A grid whose x index runs towards the patient's right: the 90° field travels along +x of the array."""
    b, _ = beam_vectors(90, np.diag([-1.0, 1.0, 1.0]))
    np.testing.assert_allclose(b, (0, 1), atol=1e-12)


@pytest.mark.parametrize("angle, axis", [(0, "y"), (90, "x"), (180, "y"), (270, "x"), (40, None)])
def test_single_field_mask_is_the_targets_shadow(angle, axis):
    """A 0°/180° field's mask is the columns (same x) of the target, a 90°/270° one its rows (same y), in the
    target's slices (± the 4 mm margin), over the whole body and nowhere else."""
    p = box_patient()
    m = compute_priors(p, single_field(angle))[f"beam_{angle:g}"] > 0.5
    body = p.possible_dose_mask
    assert not m[:4].any() and not m[9:].any()
    assert m[TZ].any() and not (m & ~body).any()
    zz, yy, xx = np.nonzero(m)
    # target 28..32 (rows 18..22) + one voxel of margin; the diverging field gains ≤ one more voxel at the far
    # side of the body (scale (SAD + d) / SAD, d ≤ 94 mm), and loses it nowhere within 40 mm of the isocentre
    if axis == "y":
        assert xx.min() >= 26 and xx.max() <= 34
        assert m[TZ, 14:27, 27:34][body[TZ, 14:27, 27:34]].all()
        first, last = (np.nonzero(body[6, :, 30])[0][[0, -1]])
        entry, exit_ = (first, last) if angle == 0 else (last, first)
        assert m[6, entry].sum() <= m[6, exit_].sum()            # wider where the beam leaves (divergence)
    elif axis == "x":
        assert yy.min() >= 16 and yy.max() <= 24
        assert m[TZ, 17:24, 20:40][body[TZ, 17:24, 20:40]].all()
    else:                # 40°: the shadow is oblique, from the anterior-left to the posterior-right
        ant_left = m[6, :10, 30:].sum()
        ant_right = m[6, :10, :18].sum()
        assert ant_left > 0 and ant_right == 0


@pytest.mark.parametrize("angle, entrance", [(0, "anterior"), (90, "left"), (180, "posterior"), (270, "right")])
def test_single_field_enters_on_the_documented_side(angle, entrance):
    """The dose 16 mm inside the body is higher where the field enters than where it exits."""
    p = box_patient()
    dose = compute_priors(p, single_field(angle, ("prior_dose",)))["prior_dose"]
    body = p.possible_dose_mask
    line = dose[6, 20, :] if entrance in ("left", "right") else dose[6, :, 30]
    inside = np.nonzero((body[6, 20, :] if entrance in ("left", "right") else body[6, :, 30]))[0]
    low, high = line[inside[0] + 4], line[inside[-1] - 4]       # 16 mm from the low / high index surface
    enters_low = {"anterior": True, "posterior": False, "right": True, "left": False}[entrance]
    assert (low > 1.5 * high) if enters_low else (high > 1.5 * low)


def test_depth_dose_builds_up_then_falls():
    """Along the 0° central axis: build-up over the first voxels, then a monotone fall with depth (attenuation
    and inverse square), through the target and out of the body."""
    p = box_patient()
    dose = compute_priors(p, single_field(0, ("prior_dose",)))["prior_dose"]
    col = dose[6, :, 30]
    inside = np.nonzero(p.possible_dose_mask[6, :, 30])[0]
    prof = col[inside]
    assert prof[0] < prof[3]                                     # surface < 12 mm deep (build-up)
    tail = prof[4:]
    assert np.all(np.diff(tail) < 0)
    ratio = tail[-1] / tail[0]                                   # ≈ exp(-µ·Δ) · inverse square over the path
    assert 0.35 < ratio < 0.75
    assert dose[~p.possible_dose_mask].max() == 0


def test_nine_fields_prior_dose_peaks_in_the_target():
    p = box_patient()
    pr = compute_priors(p)
    dose, ptv = pr["prior_dose"], p.masks["PTV"]
    assert dose.dtype == np.float32
    assert abs(float(dose[ptv].mean()) - 60.0) < 1e-3            # normalised: mean of the top target
    near = signed_distance(ptv, p.spacing) <= 8.0
    peak = np.unravel_index(np.argmax(dose), dose.shape)
    assert near[peak]
    assert float(dose[~near & p.possible_dose_mask].mean()) < 0.5 * 60.0
    assert pr["beam_sum"].max() == 9 and np.all(pr["beam_sum"][ptv] == 9)


# ------------------------------------------------------------------------------------- SDF
@pytest.mark.parametrize("spacing", [(2.0, 2.5, 2.5), (3.0, 1.5, 2.0)])
def test_sdf_of_a_sphere_in_mm(spacing):
    """Negative inside, positive outside, equal to |p − c| − R in mm within one voxel diagonal."""
    shape = (40, 48, 44)
    c = np.array([(n - 1) / 2 for n in shape]) * spacing
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    sphere = r <= 20.0
    sdf = signed_distance(sphere, spacing)
    assert np.all(sdf[sphere] < 0) and np.all(sdf[~sphere] > 0)
    diag = float(np.linalg.norm(spacing))
    assert np.abs(sdf - (r - 20.0)).max() <= diag
    assert abs(float(sdf[tuple(int(round((n - 1) / 2)) for n in shape)]) + 20.0) <= diag


def test_sdf_empty_level_is_far_and_union_is_min():
    p = box_patient()
    p.prescriptions["PTV50"] = 50.0
    p.masks["PTV50"] = np.zeros(p.shape, dtype=bool)
    p.masks["PTV50"][1, 5, 5] = True
    pr = compute_priors(p, PriorsSpec(("sdf",)))
    assert list(pr) == ["sdf_PTV", "sdf_PTV50", "sdf_targets"]
    np.testing.assert_allclose(pr["sdf_targets"][pr["sdf_targets"] > 0],
                               np.minimum(pr["sdf_PTV"], pr["sdf_PTV50"])[pr["sdf_targets"] > 0], atol=1e-4)
    p.masks["PTV50"][:] = False
    pr = compute_priors(p, PriorsSpec(("sdf",)))
    assert np.all(pr["sdf_PTV50"] == np.float32(far_value(p.shape, p.spacing)))


# ------------------------------------------------------------------------------------- spec, channels, cache
def test_channels_in_documented_order_and_spec_round_trip():
    p = box_patient()
    spec = PriorsSpec()
    pr = compute_priors(p, spec)
    names = channel_names(spec, ["PTV"])
    assert list(pr) == names == ["sdf_PTV", "sdf_targets", *[f"beam_{40 * k}" for k in range(9)], "beam_sum",
                                 "prior_dose"]
    assert all(a.shape == p.shape and a.dtype == np.float32 for a in pr.values())
    np.testing.assert_array_equal(pr["beam_sum"], sum(pr[f"beam_{40 * k}"] for k in range(9)))
    assert PriorsSpec.from_dict(spec.to_dict()) == spec
    assert PriorsSpec(("prior_dose", "sdf")).names == ("sdf", "prior_dose")
    assert set(PRIOR_KINDS) == {"sdf", "beams", "beam_sum", "prior_dose"}


def test_cached_priors_equal_computed(tmp_path):
    from mddose.data.priors.cache import cached_priors

    p = box_patient()
    spec = PriorsSpec(("beam_sum", "prior_dose"))
    a = cached_priors(p, spec, root=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = cached_priors(p, spec, root=tmp_path)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    p.ct[0, 0, 0] = 50.0                                         # another content → another entry
    cached_priors(p, spec, root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    files[0].write_bytes(b"garbage")                             # a corrupt entry is recomputed
    p.ct[0, 0, 0] = -1000.0
    c = cached_priors(p, spec, root=tmp_path)
    np.testing.assert_array_equal(c["prior_dose"], a["prior_dose"])


# ------------------------------------------------------------------------------------- a real patient
def test_real_patient_anterior_field_enters_the_face(openkbp_dir):
    """pt_1: the 0° field's dose is highest just inside the anterior body surface of its columns, and the
    nine-field prior dose correlates with the plan's dose."""
    from mddose.data.formats.openkbp import read_openkbp_patient

    p = read_openkbp_patient(openkbp_dir / "train-pats" / "pt_1")
    one = compute_priors(p, PriorsSpec(("prior_dose",), BeamArrangement((0.0,))))["prior_dose"]
    z = int(round(np.nonzero(p.masks["PTV70"])[0].mean()))
    body = p.possible_dose_mask[z]
    cols = np.nonzero(one[z].max(axis=0) > 0.5 * one[z].max())[0]
    ant, post = [], []
    for x in cols:
        ys = np.nonzero(body[:, x])[0]
        if len(ys) > 12:
            ant.append(one[z, ys[0] + 4, x])
            post.append(one[z, ys[-1] - 4, x])
    assert len(ant) > 5 and np.median(ant) > 1.3 * np.median(post)
    nine = compute_priors(p, PriorsSpec(("prior_dose",)))["prior_dose"]
    m = p.possible_dose_mask
    assert np.corrcoef(nine[m], p.dose[m])[0, 1] > 0.6         # 0.70 here; 0.79–0.95 on validation-pats


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0, 270.0])
def test_phantom_generator_uses_the_same_convention(angle):
    """mddose.data.phantom's beam at θ enters where the priors' field at θ does (its 90° beam from the
    patient's left, high x)."""
    from mddose.data.phantom import _beam_dose

    p = box_patient()
    density = np.where(p.possible_dose_mask, 1.0, 0.0).astype(np.float32)
    ph = _beam_dose(density, p.masks["PTV"], angle, p.spacing)
    ours = compute_priors(p, single_field(angle, ("prior_dose",)))["prior_dose"]
    lateral = angle in (90.0, 270.0)
    for d in (ph, ours):
        line = d[6, 20, :] if lateral else d[6, :, 30]
        inside = np.nonzero(p.possible_dose_mask[6, 20, :] if lateral else p.possible_dose_mask[6, :, 30])[0]
        low, high = line[inside[0] + 4], line[inside[-1] - 4]
        assert (low > 1.5 * high) if angle in (0.0, 270.0) else (high > 1.5 * low)


def test_modulation_lowers_normal_tissue_dose_and_keeps_the_target():
    """A few modulation steps lower the dose outside the target at the same target mean (at some cost in
    target homogeneity: the option trades coverage for sparing, see mddose.data.priors.prior_dose)."""
    p = box_patient()
    p.masks["PTV"][5:8, 14:23, 24:33] = True                     # a larger, L-shaped target
    p.masks["PTV"][5:8, 14:18, 28:33] = False
    opened = compute_priors(p, PriorsSpec(("prior_dose",)))["prior_dose"]
    mod = compute_priors(p, PriorsSpec(("prior_dose",), dose=DoseModel(modulation_iterations=3)))["prior_dose"]
    ptv, body = p.masks["PTV"], p.possible_dose_mask
    normal = body & (signed_distance(ptv, p.spacing) > 10)
    assert mod[normal].mean() < opened[normal].mean()
    assert abs(float(mod[ptv].mean()) - 60.0) < 1e-3
    assert np.percentile(mod[ptv], 5) > 0.7 * 60.0
