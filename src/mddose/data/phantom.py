"""Synthetic thoracic phantoms with a physically motivated dose — the embedded default data.

:func:`make_phantom` draws one thorax (deterministic per seed) on a ``(size // 2, size, size)`` grid
that covers 384 × 384 mm transversally and 160 mm superior–inferior (size 64 → 6 × 6 × 5 mm voxels,
size 128 → 3 × 3 × 2.5 mm):

* **Anatomy** (HU): elliptical body outline with low-order Fourier jitter (soft tissue 40, a
  subcutaneous fat layer −100), two lungs (−800, textured), heart and descending aorta (40),
  vertebral body and posterior arch (bone 700) around a spinal canal (CSF 15) holding the spinal cord
  (35), oesophagus with an air lumen, sternum and ribs (bone), plus Gaussian noise. A tumour
  (soft tissue) sits in the right lung, left lung or mediastinum; its PTV is a lobulated, randomly
  rotated ellipsoid of random size grown by a 7 mm margin.
* **Dose**: 9 coplanar beams every 40° from 0° (a fixed class solution, like OpenKBP's 9 equispaced
  fields); each one's aperture is the PTV's beam's-eye-view projection (per slice along the beam) plus
  a 5 mm margin with a 3.5 mm Gaussian penumbra; its primary falls off as
  ``exp(-mu * radiological depth)`` (depth = cumulative relative electron density along the ray,
  computed in a frame rotated so the beam runs along +y) with a 5 mm build-up and the inverse-square
  law, and a per-ray compensator flattens the beam's mean primary over the PTV (first-order intensity
  modulation). Each beam is scored by its spinal-cord maximum, heart mean and contralateral-lung mean
  per unit PTV dose and weighted ``∝ 1 / (0.6 + score)`` (sparing beams carry more of the dose). The
  plan is a function of the anatomy alone, as a planning protocol's is, so the dose is learnable from
  what a model sees: beam angles drawn at random (as before 2026-12-02) add an error no model can
  remove (2–3 Gy of body MAE between two random plans of one anatomy at size 64). A 15 mm Gaussian
  scatter component (12 %) is added, the dose is zeroed outside the body and scaled so that
  D95(PTV) = 60 Gy (``np.percentile(dose[PTV], 5)``, OpenKBP's definition).

ROIs: ``"PTV"`` (prescription 60 Gy, ``patient.prescriptions == {"PTV": 60.0}``) and OARs
``"Body"``, ``"LungL"``, ``"LungR"``, ``"Heart"``, ``"SpinalCord"``, ``"Esophagus"``;
``possible_dose_mask`` = body. Cost on a shared 2-core CPU: 0.1–0.3 s (size 64), 0.7–1.5 s (size 128).
Minimum size 32 (12 mm voxels; small structures are widened to about one voxel).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from mddose.data.patient import Patient
from mddose.errors import MddoseError

#: Prescription of the phantoms' only target (Gy).
PHANTOM_PRESCRIPTION = 60.0
#: OAR names of the phantoms (mask keys), in channel order.
PHANTOM_OARS: tuple[str, ...] = ("Body", "LungL", "LungR", "Heart", "SpinalCord", "Esophagus")
#: Transverse field of view and superior–inferior extent (mm).
FOV_MM = 384.0
LENGTH_MM = 160.0
#: Linear attenuation of the primary beam in water (1/mm), roughly 6 MV.
MU_WATER = 0.0050
#: PTV margin around the tumour and beam-aperture margin around the PTV (mm).
PTV_MARGIN_MM = 7.0
APERTURE_MARGIN_MM = 5.0
PENUMBRA_SIGMA_MM = 3.5
#: Beams of every plan, equispaced from gantry angle 0°.
N_BEAMS = 9


# ---------------------------------------------------------------------------------------------- helpers
def hu_to_red(hu: np.ndarray) -> np.ndarray:
    """Relative electron density from HU (bilinear calibration); (...) float32, 0 for air."""
    hu = hu.astype(np.float32, copy=False)
    red = np.where(hu <= 0, 1.0 + hu / 1000.0, 1.0 + 0.0005 * hu)
    return np.clip(red, 0.0, None).astype(np.float32)


def _rotation_matrix(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


class _Grid:
    """mm coordinates of the voxel centres, broadcastable: z (Z,1,1), y (1,Y,1), x (1,1,X)."""

    def __init__(self, size: int):
        nz = max(size // 2, 1)
        self.shape = (nz, size, size)
        self.spacing = (LENGTH_MM / nz, FOV_MM / size, FOV_MM / size)
        sz, sy, sx = self.spacing
        self.z = ((np.arange(nz) - (nz - 1) / 2) * sz).astype(np.float32)[:, None, None]
        self.y = ((np.arange(size) - (size - 1) / 2) * sy).astype(np.float32)[None, :, None]
        self.x = ((np.arange(size) - (size - 1) / 2) * sx).astype(np.float32)[None, None, :]

    def ellipsoid(self, c, axes, rot: np.ndarray | None = None) -> np.ndarray:
        """Normalised radius (Z,Y,X) of an ellipsoid with centre c=(x,y,z), semi-axes (ax,ay,az)."""
        dx, dy, dz = self.x - c[0], self.y - c[1], self.z - c[2]
        if rot is not None:  # coordinates in the ellipsoid's own frame: R^T d
            dx, dy, dz = (rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
                          rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
                          rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz)
        return np.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)

    def cylinder(self, cx, cy, r) -> np.ndarray:
        """(Z,Y,X) bool: disc of radius r mm around (cx, cy(z)) on every slice; cy may be (Z,1,1)."""
        return np.broadcast_to((self.x - cx) ** 2 + (self.y - cy) ** 2 <= r * r, self.shape)


# ---------------------------------------------------------------------------------------------- anatomy
def _anatomy(g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Draw the thorax: returns (noise-free CT (Z,Y,X) HU, masks, parameters)."""
    n = rng.standard_normal
    a = 160.0 * (1 + 0.05 * n())          # body semi-axis along x (mm)
    b = 112.0 * (1 + 0.05 * n())          # along y
    y0 = 6.0 + 4.0 * n()                  # body centre (posterior shift)
    taper = 1.0 - 0.04 * g.z / 80.0       # slightly narrower superiorly
    phi = np.arctan2((g.y - y0) / b, g.x / a)
    jitter = 1.0 + sum(0.025 * n() * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    r_body = np.sqrt((g.x / (a * taper)) ** 2 + ((g.y - y0) / (b * taper)) ** 2) / jitter
    body = r_body <= 1.0
    fat_t = 12.0 + 3.0 * n()
    r_inner = np.sqrt((g.x / (a * taper - fat_t)) ** 2 + ((g.y - y0) / (b * taper - fat_t)) ** 2) / jitter
    fat = body & (r_inner > 1.0)

    # spine: vertebral body, canal with cord, posterior arch; gentle kyphosis along z
    yv = y0 + 0.52 * b + 4.0 * (g.z / 80.0) ** 2 + 2.0 * n()
    r_vb = 17.0 * (1 + 0.05 * n())
    vox = max(g.spacing[1:])              # keep small structures at least ~one voxel wide
    r_cord = max(5.0, 0.75 * vox)
    r_canal = r_cord + 3.0
    y_canal = yv + r_vb + r_canal + 1.0
    vert = g.cylinder(0.0, yv, r_vb) | (g.cylinder(0.0, y_canal, r_canal + 7.0)
                                        & ~g.cylinder(0.0, y_canal, r_canal))
    canal = g.cylinder(0.0, y_canal, r_canal)
    cord = g.cylinder(0.0, y_canal, r_cord)
    # oesophagus just anterior to the vertebral body, slightly left; descending aorta left of it
    x_eso = 6.0 + 3.0 * n()
    y_eso = yv - r_vb - 9.0
    eso = g.cylinder(x_eso, y_eso, max(7.5, 0.75 * vox))
    lumen = g.cylinder(x_eso, y_eso, 2.0)
    aorta = g.cylinder(28.0 + 3.0 * n(), yv - 6.0, 12.0)
    sternum = g.ellipsoid((0.0, y0 - b * taper + fat_t + 9.0, 0.0), (16.0, 6.0, 1e6)) <= 1.0

    # heart: rotated ellipsoid, left-anterior, inferior half
    th = np.deg2rad(25.0 + 8.0 * n())
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    hc = (0.15 * a + 6.0 * n(), y0 - 0.28 * b + 5.0 * n(), -40.0 + 8.0 * n())
    heart = g.ellipsoid(hc, np.array([58.0, 44.0, 52.0]) * (1 + 0.07 * n()), rot) <= 1.0

    # ribs: a shell just inside the fat layer, interrupted along z and around the midline
    rib_shell = body & ~fat & (np.sqrt((g.x / (a * taper - fat_t - 9.0)) ** 2
                                       + ((g.y - y0) / (b * taper - fat_t - 9.0)) ** 2) / jitter > 1.0)
    rib_phase = np.cos(2 * np.pi * (g.z + 18.0 * np.sin(phi)) / 26.0 + rng.uniform(0, 2 * np.pi)) > 0.45
    ribs = rib_shell & rib_phase & (np.abs(g.x) > 30.0)

    # lungs: ellipsoids inside the rib cage, minus mediastinal structures
    cage = ~(rib_shell | fat) & body
    lungs = {}
    for name, side, ax in (("LungR", -1.0, 0.34), ("LungL", 1.0, 0.31)):
        c = (side * 0.42 * a * (1 + 0.03 * n()), y0 - 4.0 + 4.0 * n(), 18.0 + 8.0 * n())
        axes = (ax * a * (1 + 0.06 * n()), 0.64 * b * (1 + 0.05 * n()), 125.0 * (1 + 0.05 * n()))
        lungs[name] = (g.ellipsoid(c, axes) <= 1.0) & cage
    mediastinum = heart | aorta | eso | vert | canal | sternum
    for name in lungs:
        lungs[name] &= ~mediastinum
    lungs["LungL"] &= ~lungs["LungR"]

    ct = np.full(g.shape, -1000.0, dtype=np.float32)
    ct[body] = 40.0
    ct[fat] = -100.0
    for m in lungs.values():
        ct[m] = -800.0
    ct[heart | aorta | eso] = 40.0
    ct[lumen] = -1000.0
    ct[vert | ribs] = 700.0
    ct[sternum] = 500.0
    ct[canal] = 15.0
    ct[cord] = 35.0
    masks = {"Body": body, "LungL": lungs["LungL"], "LungR": lungs["LungR"], "Heart": heart,
             "SpinalCord": np.ascontiguousarray(cord), "Esophagus": np.ascontiguousarray(eso)}
    params = {"a": a, "b": b, "y0": y0}
    return ct, masks, params


def _tumour(g: _Grid, rng: np.random.Generator, masks: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw a lobulated ellipsoid tumour and its PTV: (gtv, ptv) (Z,Y,X) bool, parameters."""
    site = str(rng.choice(["LungR", "LungL", "mediastinum"], p=[0.4, 0.35, 0.25]))
    r = rng.uniform(10.0, 28.0)
    axes = r * rng.uniform(0.7, 1.3, size=3)
    rot = _rotation_matrix(rng)
    z_half = float(np.sqrt(((rot * axes) ** 2).sum(axis=1))[2]) + PTV_MARGIN_MM + 6.0
    z_lim = max(LENGTH_MM / 2 - z_half - 5.0, 0.0)
    if site == "mediastinum":
        heart_y = float(np.mean(np.nonzero(masks["Heart"])[1])) if masks["Heart"].any() else 0.0
        ys = (heart_y - (g.shape[1] - 1) / 2) * g.spacing[1]
        centre = (rng.normal(0.0, 8.0), ys + rng.normal(-5.0, 8.0), rng.uniform(min(20.0, z_lim), z_lim))
    else:  # a random lung voxel away from the lung border
        lung = masks[site]
        zz, yy, xx = np.nonzero(lung)
        zc = (zz - (g.shape[0] - 1) / 2) * g.spacing[0]
        ok = np.abs(zc) <= z_lim
        zz, yy, xx = zz[ok], yy[ok], xx[ok]
        cy, cx = yy.mean(), xx.mean()
        # prefer the inner part of the lung: within 60 % of its transverse extent from its centre
        d = np.hypot((yy - cy) / max(np.ptp(yy), 1), (xx - cx) / max(np.ptp(xx), 1))
        keep = d <= 0.3
        i = int(rng.integers(int(keep.sum()))) if keep.any() else int(rng.integers(len(zz)))
        zz, yy, xx = (zz[keep], yy[keep], xx[keep]) if keep.any() else (zz, yy, xx)
        centre = ((xx[i] - (g.shape[2] - 1) / 2) * g.spacing[2], (yy[i] - (g.shape[1] - 1) / 2) * g.spacing[1],
                  (zz[i] - (g.shape[0] - 1) / 2) * g.spacing[0])
    rho = g.ellipsoid(centre, axes, rot)
    # lobulation: modulate the normalised radius by a smooth random function of the direction
    dx, dy, dz = g.x - centre[0], g.y - centre[1], g.z - centre[2]
    norm = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    lob = 1.0
    for _ in range(3):
        w = rng.standard_normal(3) * 2.5
        lob = lob + 0.07 * np.cos((w[0] * dx + w[1] * dy + w[2] * dz) / norm + rng.uniform(0, 2 * np.pi))
    rho = rho * lob
    gtv = (rho <= 1.0) & masks["Body"]
    ptv = (g.ellipsoid(centre, axes + PTV_MARGIN_MM, rot) * lob <= 1.0) & masks["Body"]
    ptv &= ~masks["SpinalCord"]
    info = {"site": site, "centre_mm": [float(c) for c in centre], "axes_mm": [float(v) for v in axes]}
    return gtv, ptv, info


# ---------------------------------------------------------------------------------------------- dose
def _beam_dose(density: np.ndarray, ptv: np.ndarray, angle: float, spacing) -> np.ndarray:
    """Unit-weight dose (Z,Y,X) of one coplanar beam at gantry ``angle`` (degrees).

    The density slab is rotated so that the beam travels along +y; the aperture (Z, X) is the PTV's
    projection along y, grown by the aperture margin and blurred by the penumbra; the primary is
    ``fluence * exp(-mu * depth) * build-up * inverse-square`` with ``depth`` the cumulative
    radiological depth along y; the result is rotated back.
    """
    sz, sy, sx = spacing
    rot = lambda v, ang, order=1: ndimage.rotate(v, ang, axes=(1, 2), reshape=False, order=order,  # noqa: E731
                                                 mode="constant", cval=0.0, prefilter=False)
    dens_r = np.clip(rot(density, angle), 0.0, None)
    ptv_r = rot(ptv.astype(np.float32), angle) > 0.5
    depth = (np.cumsum(dens_r, axis=1) - 0.5 * dens_r) * sy              # water-equivalent mm
    y = (np.arange(density.shape[1], dtype=np.float32) - (density.shape[1] - 1) / 2) * sy
    isq = (1000.0 / (1000.0 + y)) ** 2
    primary = np.exp(-MU_WATER * depth) * (1.0 - np.exp(-depth / 5.0)) * isq[None, :, None] * (dens_r > 0.05)
    # aperture = beam's-eye view of the PTV (Z, X) + margin; a compensator flattens this beam's mean
    # primary over the PTV along each ray (what intensity modulation achieves, to first order)
    count = ptv_r.sum(axis=1)
    inside = count > 0
    if not inside.any():
        return np.zeros_like(density)
    ray_mean = (primary * ptv_r).sum(axis=1) / np.maximum(count, 1)
    ref = float(np.median(ray_mean[inside]))
    comp = np.where(inside, ref / np.maximum(ray_mean, 1e-6), 1.0).clip(0.6, 1.6)
    comp = np.where(inside, comp, ndimage.maximum_filter(np.where(inside, comp, 0.0), size=5))
    comp[comp == 0] = 1.0
    aperture = inside.astype(np.float32)
    mz, mx = max(int(round(APERTURE_MARGIN_MM / sz)), 0), max(int(round(APERTURE_MARGIN_MM / sx)), 0)
    aperture = ndimage.maximum_filter(aperture, size=(2 * mz + 1, 2 * mx + 1))
    fluence = ndimage.gaussian_filter(aperture * comp, (PENUMBRA_SIGMA_MM / sz, PENUMBRA_SIGMA_MM / sx))
    dose_r = fluence[:, None, :] * primary
    return np.clip(rot(dose_r.astype(np.float32), -angle), 0.0, None)


def _plan(ct: np.ndarray, masks: dict[str, np.ndarray], ptv: np.ndarray, spacing, site: str
          ) -> tuple[np.ndarray, dict]:
    """Choose and weight beams, add scatter, normalise to D95(PTV) = prescription: (dose (Z,Y,X), info).

    Deterministic: the same anatomy always gets the same plan (see the module docstring).
    """
    density = hu_to_red(ct)
    density[~masks["Body"]] = 0.0
    zs = np.nonzero(ptv.any(axis=(1, 2)))[0]
    pad = int(math.ceil((APERTURE_MARGIN_MM + 3 * PENUMBRA_SIGMA_MM) / spacing[0]))
    z0, z1 = max(int(zs[0]) - pad, 0), min(int(zs[-1]) + pad + 1, ct.shape[0])
    sl = slice(z0, z1)
    angles = np.arange(N_BEAMS) * 360.0 / N_BEAMS
    contra = {"LungR": "LungL", "LungL": "LungR"}.get(site)
    beams, scores = [], []
    for ang in angles:
        d = _beam_dose(density[sl], ptv[sl], float(ang), spacing)
        p = float(d[ptv[sl]].mean()) + 1e-6
        score = (1.5 * float(d[masks["SpinalCord"][sl]].max(initial=0.0)) / p
                 + 1.0 * float(d[masks["Heart"][sl]].mean() if masks["Heart"][sl].any() else 0.0) / p
                 + (0.5 * float(d[masks[contra][sl]].mean()) / p if contra and masks[contra][sl].any() else 0.0))
        beams.append(d / p)
        scores.append(score)
    weights = 1.0 / (0.6 + np.asarray(scores))
    weights /= weights.sum()
    slab = sum(w * b for w, b in zip(weights, beams))
    dose = np.zeros(ct.shape, dtype=np.float32)
    dose[sl] = slab
    sigma = tuple(15.0 / s for s in spacing)
    dose = 0.88 * dose + 0.12 * ndimage.gaussian_filter(dose, sigma, mode="constant")
    dose[~masks["Body"]] = 0.0
    d95 = float(np.percentile(dose[ptv], 5))
    dose *= PHANTOM_PRESCRIPTION / d95
    info = {"beams_deg": [float(a) for a in angles], "beam_weights": [float(w) for w in weights]}
    return dose.astype(np.float32), info


# ---------------------------------------------------------------------------------------------- API
def make_phantom(seed: int, size: int = 64) -> Patient:
    """A synthetic thoracic patient with a plan dose, deterministic per ``seed``.

    Args:
        seed: seed of ``np.random.default_rng``; same seed (and size) → identical arrays.
        size: transverse grid size; the grid is (size // 2, size, size) over 160 × 384 × 384 mm.

    Returns:
        Patient ``phantom_<seed>`` with CT (HU), masks ``PTV`` and :data:`PHANTOM_OARS`, dose (Gy, D95 of
        the PTV = 60 Gy), possible-dose mask = body, prescriptions ``{"PTV": 60.0}``.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 32:
        raise MddoseError(f"phantom size must be an integer ≥ 32, got {size!r}")
    rng = np.random.default_rng(seed)
    g = _Grid(int(size))
    ct, masks, _ = _anatomy(g, rng)
    gtv, ptv, tinfo = _tumour(g, rng, masks)
    for name in ("LungL", "LungR"):
        masks[name] &= ~gtv
    ct[gtv] = 35.0
    dose, pinfo = _plan(ct, masks, ptv, g.spacing, tinfo["site"])
    # noise (more texture in lungs), slight partial-volume blur; air stays near −1000
    noise = rng.standard_normal(g.shape, dtype=np.float32)
    lung = masks["LungL"] | masks["LungR"]
    ct = ndimage.gaussian_filter(ct, 0.5) + noise * np.where(lung, 25.0, 8.0).astype(np.float32)
    ct = np.clip(ct, -1000.0, 3000.0)
    all_masks = {"PTV": ptv, **masks}
    sz, sy, sx = g.spacing
    origin = (-(g.shape[2] - 1) / 2 * sx, -(g.shape[1] - 1) / 2 * sy, -(g.shape[0] - 1) / 2 * sz)
    return Patient(id=f"phantom_{seed}", ct=ct, spacing=g.spacing, masks=all_masks, dose=dose,
                   possible_dose_mask=masks["Body"].copy(), origin=origin,
                   prescriptions={"PTV": PHANTOM_PRESCRIPTION},
                   meta={"source": "mddose.data.phantom", "seed": int(seed), "size": int(size),
                         "tumour": tinfo, **pinfo})


def write_phantoms(n: int, out, *, seed: int = 0, size: int = 64, format: str = "openkbp",
                   force: bool = False) -> list[Path]:
    """Write ``n`` phantoms as ``out/pt_1 … out/pt_n`` (phantom ``pt_i`` = ``make_phantom(seed + i - 1)``).

    Uses :func:`mddose.data.io.save_patient` (``format`` = "openkbp", "nifti" or "dicom"); an existing
    patient folder is refused unless ``force``. Returns the written folders.
    """
    from tqdm import tqdm

    from mddose.data.io import save_patient

    if int(n) != n or n < 1:
        raise MddoseError(f"number of phantoms must be a positive integer, got {n!r}")
    out = Path(out)
    paths = []
    for i in tqdm(range(1, int(n) + 1), desc="phantoms", unit="pt", disable=n < 2):
        p = make_phantom(seed + i - 1, size)
        p.id = f"pt_{i}"
        paths.append(Path(save_patient(p, out / f"pt_{i}", format, force=force)))
    return paths
