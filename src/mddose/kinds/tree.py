"""The ``"tree"`` kind: gradient-boosted trees over per-voxel geometric features (model ``gbt``).

The simplest strong baseline a deep model must beat: no image, one row per voxel of the possible-dose mask
(:mod:`mddose.data.inputs.features`: CT, prescription, the dose priors, depth, distances to each OAR, offset from
the targets' centre), boosted regression trees (the module :class:`mddose.models.gbt.TreeEnsemble`).

* inputs: :class:`~mddose.data.inputs.features.FeatureConfig` (train config section ``features``, checkpoint key
  ``feature_config``);
* fitting, not gradient steps (:meth:`TreeKind.fit`, run by ``mddose train`` through
  :func:`mddose.train.fitted.fit_run`):

  1. **rows**: ``voxels_per_patient`` voxels drawn per training patient from its possible-dose mask
     (:func:`~mddose.data.inputs.features.sample_rows`; patient ``i`` seeded ``seed · 1,000,003 + i``), with their
     dose (Gy); a patient that cannot be used is reported and skipped;
  2. **boosting** with scikit-learn's ``HistGradientBoostingRegressor`` (the extra ``mddose[tree]``;
     ``warm_start``, no early stopping) in rounds of at most :data:`ROUND` trees, until the model's ``max_iter``,
     the train config's ``max_steps`` or its ``time_budget_s`` (each round sized by the measured time per tree);
     after each round the mean absolute error (Gy) on a fixed sample of the training rows is reported;
  3. **export** of the trees into the arrays of :class:`~mddose.models.gbt.TreeEnsemble`
     (:func:`ensemble_arrays`): safetensors like every model's weights, nothing pickled;
* prediction: every voxel of the possible-dose mask through the trees, clipped at 0 Gy, zero elsewhere; needs no
  scikit-learn. Option ``smooth`` (mm, default 0 = none): a Gaussian of that standard deviation applied inside the
  possible-dose mask (:func:`smooth_in_mask`) — the trees see each voxel alone, so neighbouring voxels' doses are
  noisy; a shipped checkpoint records the value chosen for it (``mddose export --smooth``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from mddose.data.inputs.features import FeatureConfig
from mddose.errors import MddoseError
from mddose.kinds.base import Fitted, ModelKind, register_kind

#: Trees added per round of boosting (between progress reports, budget checks and log rows).
ROUND = 20
#: Training rows the reported training error is measured on.
PROBE_ROWS = 20000
#: The largest ``smooth`` (mm) accepted: beyond it the dose's steps at the targets' edges are washed out.
MAX_SMOOTH_MM = 20.0


# ---------------------------------------------------------------------------- prediction
def smooth_in_mask(dose: np.ndarray, mask: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """(Z, Y, X) float32: ``dose`` smoothed by a Gaussian of ``sigma_mm`` (mm, on each axis by its ``spacing``)
    using only the voxels of ``mask`` (normalised convolution: what lies outside the mask neither enters nor
    dilutes), zero outside ``mask``; ``sigma_mm`` 0 returns ``dose`` as it is."""
    from scipy import ndimage

    if sigma_mm <= 0:
        return dose
    sigma = tuple(sigma_mm / float(s) for s in spacing)
    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(mask, dose, 0).astype(np.float32), sigma, mode="constant")
    den = ndimage.gaussian_filter(m, sigma, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def predict_tree(model: nn.Module, patient, cfg: FeatureConfig, smooth: float = 0.0) -> np.ndarray:
    """(Z, Y, X) float32 Gy: the ensemble's dose of every voxel of the patient's possible-dose mask (≥ 0), zero
    elsewhere; smoothed inside that mask by a Gaussian of ``smooth`` mm (:func:`smooth_in_mask`; 0: not)."""
    from mddose.data.inputs.features import patient_rows

    rows, mask = patient_rows(patient, cfg)
    dose = np.zeros(patient.shape, dtype=np.float32)
    if rows.shape[0]:
        device = next((b.device for b in model.buffers()), torch.device("cpu"))
        pred = model.predict_rows(torch.from_numpy(rows).to(device)).cpu().numpy()
        dose[mask] = np.clip(pred, 0.0, None)
    return smooth_in_mask(dose, mask, patient.spacing, smooth)


def tree_dose_score(model: nn.Module, patients: Sequence, cfg: FeatureConfig) -> float:
    """Mean over ``patients`` (with a dose) of the mean absolute error (Gy) inside the possible-dose mask."""
    scores = []
    for p in patients:
        mask = p.dose_mask()
        if p.dose is not None and mask.any():
            scores.append(float(np.abs(predict_tree(model, p, cfg) - p.dose)[mask].mean()))
    return float(np.mean(scores)) if scores else float("nan")


# ---------------------------------------------------------------------------- export
def _threshold_f32(t: np.ndarray) -> np.ndarray:
    """float64 thresholds → the largest float32 ≤ each (so that ``x32 <= t32`` ⇔ ``x32 <= t`` for float32 x)."""
    t32 = t.astype(np.float32)
    over = t32.astype(np.float64) > t
    t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
    return t32


def ensemble_arrays(est) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """``(sizes, state)`` of a fitted ``HistGradientBoostingRegressor`` ``est`` (numerical features): the model
    config's ``trees``/``nodes``/``depth`` and the buffers of :class:`~mddose.models.gbt.TreeEnsemble` (its
    layout: the trees' nodes concatenated, leaves pointing to themselves, thresholds rounded down to float32)."""
    trees = [p[0].nodes for p in est._predictors]
    if any(t["is_categorical"].any() for t in trees):
        raise MddoseError("tree ensemble: categorical splits are not supported")
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in trees])]).astype(np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [np.zeros(0, d)] for k, d in (
        ("feature", np.int64), ("threshold", np.float32), ("left", np.int64), ("right", np.int64),
        ("value", np.float64))}
    for t, off in zip(trees, offsets[:-1]):
        leaf = t["is_leaf"].astype(bool)
        own = np.arange(len(t), dtype=np.int64) + off
        parts["feature"].append(np.where(leaf, 0, t["feature_idx"]).astype(np.int64))
        parts["threshold"].append(np.where(leaf, np.float32(0), _threshold_f32(t["num_threshold"].astype(np.float64))))
        parts["left"].append(np.where(leaf, own, t["left"].astype(np.int64) + off))
        parts["right"].append(np.where(leaf, own, t["right"].astype(np.int64) + off))
        parts["value"].append(np.where(leaf, t["value"], 0.0).astype(np.float64))
    state = {k: np.concatenate(v) for k, v in parts.items()}
    state["threshold"] = state["threshold"].astype(np.float32)
    state["roots"] = offsets[:-1]
    state["bias"] = np.asarray(float(np.ravel(est._baseline_prediction)[0]), dtype=np.float64)
    depth = int(max((t["depth"].max() for t in trees), default=0))
    return {"trees": len(trees), "nodes": int(offsets[-1]), "depth": depth}, state


# ---------------------------------------------------------------------------- fitting
def _estimator(mcfg, seed: int):
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        raise MddoseError("fitting a tree ensemble needs scikit-learn: pip install 'mddose[tree]' "
                          "(predicting with a fitted one does not)") from None
    return HistGradientBoostingRegressor(
        loss=mcfg.loss, learning_rate=mcfg.learning_rate, max_leaf_nodes=mcfg.max_leaf_nodes,
        min_samples_leaf=mcfg.min_samples_leaf, l2_regularization=mcfg.l2_regularization, max_bins=mcfg.max_bins,
        early_stopping=False, warm_start=True, random_state=seed % 2**32, max_iter=1)


def training_rows(cfg, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list, list[tuple[str, str]]]:
    """``(X (N, F) float32, y (N,) float32 Gy, validation patients, skipped)`` of the train config ``cfg``."""
    from tqdm.auto import tqdm

    from mddose.data.inputs.common import with_targets
    from mddose.data.inputs.features import sample_rows
    from mddose.data.io import load_patient
    from mddose.data.sources import training_sources
    from mddose.utils.batch import skip_item

    train_src, val_p, _, skipped = training_sources(cfg.data)
    val_p, bad_val = with_targets(val_p, cfg.inputs.targets)
    skipped = list(skipped) + bad_val
    xs, ys = [], []
    for i, item in enumerate(tqdm(train_src, desc="features", unit="patient", disable=not progress)):
        try:
            p = load_patient(item) if isinstance(item, (str, Path)) else item
            x, y = sample_rows(p, cfg.inputs, seed=cfg.seed * 1_000_003 + i)
        except Exception as exc:  # noqa: BLE001 - one unusable patient: report it and go on
            skipped.append(skip_item(item, exc))
            continue
        xs.append(x)
        ys.append(y)
    if not xs:
        raise MddoseError(f"no usable training patients in {cfg.data.train or 'phantoms'}"
                          + (f" ({len(skipped)} skipped, e.g. {skipped[0][1]})" if skipped else ""))
    return np.concatenate(xs), np.concatenate(ys), val_p, skipped


def fit_trees(cfg, mcfg, *, progress: bool = True,
              on_round: Callable[[int, float, float], None] | None = None) -> Fitted:
    """Fit the ensemble of train config ``cfg`` with the hyperparameters of its model config ``mcfg`` (see the
    module docstring). ``on_round(trees, train_mae_gy, seconds)`` is called after each round."""
    from tqdm.auto import tqdm

    from mddose.utils.log import logger

    est = _estimator(mcfg, cfg.seed)                   # scikit-learn missing: said before any data is read
    target = mcfg.max_iter if cfg.max_steps is None else min(mcfg.max_iter, cfg.max_steps)
    x, y, val_p, skipped = training_rows(cfg, progress=progress)
    logger.info("fitting up to %d trees on %d rows of %d features", target, len(x), x.shape[1])
    probe = np.random.default_rng(cfg.seed).choice(len(x), size=min(PROBE_ROWS, len(x)), replace=False)
    budget = cfg.time_budget_s
    start, done = time.monotonic(), 0
    bar = tqdm(total=target, desc="boosting", unit="tree", disable=not progress, dynamic_ncols=True)
    try:
        while done < target:
            elapsed = time.monotonic() - start
            step = min(ROUND, target - done)
            if budget is not None and done:
                step = min(step, int((budget - elapsed) / (elapsed / done)))
                if step < 1:
                    break
            est.max_iter = done + step
            est.fit(x, y)
            bar.update(est.n_iter_ - done)
            done = est.n_iter_
            mae = float(np.abs(est.predict(x[probe]) - y[probe]).mean())
            bar.set_postfix(train_mae=f"{mae:.3g} Gy")
            if on_round is not None:
                on_round(done, mae, time.monotonic() - start)
            if budget is not None and time.monotonic() - start >= budget:
                break
    finally:
        bar.close()
    sizes, state = ensemble_arrays(est)
    return Fitted(config=sizes, state=state, steps=done, complete=done >= target, rows=len(x),
                  seconds=time.monotonic() - start, val_patients=val_p, skipped=skipped)


# ---------------------------------------------------------------------------- the kind
class TreeKind(ModelKind):
    """Gradient-boosted trees on per-voxel features (see the module docstring)."""

    name = "tree"
    words = "gradient-boosted tree ensemble"
    section = "features"
    data_key = "feature_config"
    input_config = FeatureConfig
    options: dict[str, Any] = {"smooth": 0.0}
    fit = staticmethod(fit_trees)

    def build_data(self, cfg, *, progress: bool = False):
        raise MddoseError("a tree ensemble is fitted on rows of features, not trained on batches "
                          "(mddose train fits it)")

    def objective(self, cfg):
        """The validation score of a fitted ensemble (no loss: it is not trained by gradient)."""
        return _TreeScore()

    def check_option(self, name: str, value: Any, where: str) -> None:
        super().check_option(name, value, where)
        if name == "smooth" and not 0 <= value <= MAX_SMOOTH_MM:
            raise MddoseError(f"{where}: smooth must be 0 .. {MAX_SMOOTH_MM:g} mm, got {value!r}")

    def predict(self, bundle, patient, opts: dict, *, batch: int, seed: int, progress: bool):
        return predict_tree(bundle.model, patient, bundle.data_config, float(opts["smooth"])), None

    def iteration(self, model: nn.Module, channels: int, size: int,
                  device: str = "cpu") -> tuple[Callable[[], Any], str]:
        rows = torch.randn(size ** 3, channels, device=device)
        return (lambda: model.predict_rows(rows)), f"{size}³ voxels' rows through the trees"


class _TreeScore:
    """The objective of a fitted kind: only its validator (the dose score of whole validation patients)."""

    def validator(self, cfg, data, device) -> Callable[[nn.Module], float]:
        return lambda m: tree_dose_score(m, data.val_patients, data.data_config)


TREE = register_kind(TreeKind())
