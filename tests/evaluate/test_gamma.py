"""3D gamma: hand cases (shifts, dose offsets), fast path vs plain reference, pymedphys cross-check."""

from __future__ import annotations

import numpy as np
import pytest

from mddose.evaluate.gamma import gamma_index, gamma_index_ref, gamma_pass_rate, pass_rate, search_offsets

SPACING = (2.0, 2.5, 2.5)


def _blob(shape=(24, 24, 24), spacing=SPACING, width=8.0):
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return 70.0 * np.exp(-(z ** 2 + y ** 2 + x ** 2) / (2 * width ** 2))


def _shift_z(a, k):
    out = np.zeros_like(a)
    out[k:] = a[:-k]
    return out


def test_identical_doses_pass_everywhere():
    ref = _blob()
    g = gamma_index(ref, ref, SPACING)
    valid = ~np.isnan(g)
    assert valid.sum() == (ref >= 7.0).sum()
    assert np.all(g[valid] == 0)
    assert pass_rate(g) == 1.0


def test_uniform_2mm_shift_passes_3mm():
    ref = _blob()
    ev = _shift_z(ref, 1)  # one voxel = 2 mm along z
    assert gamma_pass_rate(ref, ev, SPACING) == 1.0


def test_6mm_shift_of_a_steep_field_fails():
    ref = _blob(width=5.0)
    ev = _shift_z(ref, 3)  # 6 mm > 3 mm DTA
    assert gamma_pass_rate(ref, ev, SPACING) < 0.7


def test_uniform_5_percent_offset_fails_3_percent():
    ref = np.full((12, 12, 12), 60.0)
    assert gamma_pass_rate(ref, ref + 3.0, SPACING) == 0.0  # 5 % of max: γ = 5/3
    g = gamma_index(ref, ref + 3.0, SPACING, max_gamma=2.0)
    np.testing.assert_allclose(g[~np.isnan(g)], 5 / 3, rtol=1e-6)
    assert gamma_pass_rate(ref, ref + 1.2, SPACING) == 1.0  # 2 %


def test_low_dose_threshold():
    ref = np.zeros((10, 10, 10))
    ref[4:6] = 50.0
    ref[0] = 4.0  # below 10 % of 50: not evaluated even though it fails
    ev = ref.copy()
    ev[0] = 30.0
    g = gamma_index(ref, ev, SPACING)
    assert np.all(np.isnan(g[0])) and pass_rate(g) == 1.0


def test_search_offsets_sorted_and_include_voxel_shifts():
    s = search_offsets(SPACING, 3.0, 0.6)
    d = np.sqrt((s ** 2).sum(1))
    assert np.all(np.diff(d) >= -1e-12) and d.max() <= 3.0 + 1e-9
    assert np.all(s[0] == 0)
    assert any(np.allclose(o, (2.0, 0, 0)) for o in s) and any(np.allclose(o, (0, 2.5, 0)) for o in s)


@pytest.mark.parametrize("max_gamma", [1.0, 2.0])
def test_fast_path_equals_reference(rng, max_gamma):
    ref = _blob((16, 18, 20))
    ev = _shift_z(ref, 1) * 1.02 + rng.normal(0, 0.5, ref.shape)
    ev = np.clip(ev, 0, None)
    g1 = gamma_index(ref, ev, SPACING, max_gamma=max_gamma, step_mm=1.0)
    g2 = gamma_index_ref(ref, ev, SPACING, max_gamma=max_gamma, step_mm=1.0)
    np.testing.assert_array_equal(np.isnan(g1), np.isnan(g2))
    np.testing.assert_array_equal(np.isinf(g1), np.isinf(g2))
    f = np.isfinite(g1)
    np.testing.assert_allclose(g1[f], g2[f], atol=1e-5)
    assert 0 < pass_rate(g1) < 1


def _pymedphys_gamma(pymedphys, ref, ev):
    """pymedphys' 3%/3mm gamma of ``ev`` against ``ref``; skips the test only when pymedphys lacks an
    optional package (ImportError): any other exception is a failure, never a skip."""
    axes = tuple(np.arange(n) * s for n, s in zip(ref.shape, SPACING))
    try:
        return pymedphys.gamma(axes, ref, axes, ev, 3, 3, lower_percent_dose_cutoff=10, interp_fraction=10,
                               max_gamma=2, interp_algo="scipy", quiet=True)
    except ImportError as exc:
        pytest.skip(f"pymedphys gamma needs a missing package: {exc}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_agrees_with_pymedphys(rng):
    pymedphys = pytest.importorskip("pymedphys")
    ref = _blob((16, 18, 20), width=8.0)
    ev = np.clip(_shift_z(ref, 1) * 1.03 + rng.normal(0, 0.6, ref.shape), 0, None)
    gp = _pymedphys_gamma(pymedphys, ref, ev)
    theirs = np.mean(gp[~np.isnan(gp)] <= 1)
    ours = gamma_pass_rate(ref, ev, SPACING, step_mm=0.3)
    assert abs(ours - theirs) < 0.02


@pytest.mark.parametrize("exc, skips", [(ImportError("no module named 'numba'"), True),
                                        (RuntimeError("broken interpolation"), False),
                                        (ValueError("bad axes"), False)])
def test_pymedphys_cross_check_skips_only_on_import_error(exc, skips):
    """Issue 11: the cross-check skipped on any exception, so a pymedphys failure passed unnoticed."""
    def gamma(*args, **kwargs):
        raise exc

    fake = type("FakePymedphys", (), {"gamma": staticmethod(gamma)})
    ref = _blob((4, 4, 4))
    with pytest.raises(pytest.skip.Exception if skips else type(exc)):
        _pymedphys_gamma(fake, ref, ref)
