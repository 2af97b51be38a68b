"""The resampling floor of the 3D models' geometries: the true dose sent through the model's grid and back.

For each patient and each geometry (``VolumeConfig.grid``: ``resample`` to ``S``³ for each ``--sizes`` S, and
``crop``: the possible-dose box + ``--margin`` at the original voxel size), the true dose / reference_dose
goes through what a model's target goes through (:func:`~mddose.data.inputs.volume.patient_to_volume`, or
:func:`~mddose.data.inputs.volume_crop.patient_to_crop`) and back as a prediction would
(:func:`~mddose.data.inputs.volume.volume_to_patient` / :func:`~mddose.data.inputs.volume_crop.crop_to_patient`),
and is scored like OpenKBP against the true dose (dose score: MAE over the possible-dose mask; DVH score):
no model of that geometry can score better. The crop's floor is 0 up to the float32 rounding of ``÷ × 70``
(reported as ``max_abs_gy``). Also reports each patient's crop shape and what the crops of these patients
take in memory as a :class:`~mddose.data.inputs.volume_crop.CropPatchDataset` (float16 channels and dose,
bool mask).

Run (not wired to the CLI)::

    PYTHONPATH=src python -m mddose.bench.grid_floor --out results/grid_floor.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mddose.data.inputs.volume import VolumeConfig, patient_to_volume, volume_to_patient
from mddose.data.inputs.volume_crop import crop_box, crop_to_patient, patient_to_crop
from mddose.data.patient import Patient
from mddose.evaluate.openkbp import OpenKBPScores, score_patient


def round_trip(patient: Patient, cfg: VolumeConfig) -> np.ndarray:
    """(Z, Y, X) float32 Gy: the patient's true dose through ``cfg``'s geometry and back."""
    if cfg.grid == "crop":
        arr = patient_to_crop(patient, cfg)
        return crop_to_patient(arr.dose, patient, cfg, arr.box)
    return volume_to_patient(patient_to_volume(patient, cfg).dose, patient, cfg)


def geometries(sizes: list[int], margin: int) -> dict[str, VolumeConfig]:
    """Name → config of every geometry measured (OpenKBP channels; only the geometry matters here)."""
    out = {f"resample-{s}": VolumeConfig(size=s) for s in sizes}
    out[f"crop-m{margin}"] = VolumeConfig(size=64, grid="crop", crop_margin=margin)
    return out


def floor_scores(patients: list[Patient], configs: dict[str, VolumeConfig]) -> dict[str, dict]:
    """Name → ``{"dose_score", "dvh_score", "max_abs_gy", "patients": {id: dose error}}`` (Gy)."""
    out = {}
    for name, cfg in configs.items():
        scores, worst = OpenKBPScores(), 0.0
        for p in patients:
            back = round_trip(p, cfg)
            m = p.dose_mask()
            worst = max(worst, float(np.abs(back - p.dose)[m].max()) if m.any() else 0.0)
            scores.add(p.id, *score_patient(p.dose, back, p.masks, m, p.spacing, p.prescriptions))
        out[name] = {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score, "max_abs_gy": worst,
                     "patients": scores.dose_errors}
    return out


def crop_sizes(patients: list[Patient], margin: int, channels: int) -> dict:
    """Each patient's crop shape, and the bytes of their crops in a CropPatchDataset of ``channels`` channels."""
    shapes = {}
    for p in patients:
        shapes[p.id] = [s.stop - s.start for s in crop_box(p.dose_mask(), margin)]
    voxels = [int(np.prod(s)) for s in shapes.values()]
    per_voxel = 2 * channels + 2 + 1                 # float16 channels + float16 dose + bool mask
    return {"shapes": shapes, "voxels_mean": float(np.mean(voxels)), "voxels_max": max(voxels),
            "dataset_bytes": per_voxel * sum(voxels), "bytes_per_patient_mean": per_voxel * float(np.mean(voxels))}


def main(argv: list[str] | None = None) -> int:
    from mddose.bench import shared_openkbp
    from mddose.data.io import load_patient
    from mddose.utils.fs import atomic_write

    parser = argparse.ArgumentParser(prog="python -m mddose.bench.grid_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", default=None, help="dir of patient dirs (default: shared validation-pats)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="resample grids S³")
    parser.add_argument("--margin", type=int, default=8, help="crop margin (voxels)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    root = Path(args.patients) if args.patients else shared_openkbp() / "validation-pats"
    patients = [load_patient(d) for d in sorted(q for q in root.iterdir() if q.is_dir())]
    result = {"patients_dir": str(root), "floor": floor_scores(patients, geometries(args.sizes, args.margin)),
              "crops": crop_sizes(patients, args.margin, VolumeConfig().channels)}
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        with atomic_write(args.out, "w") as fh:
            fh.write(text)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "patients"} for k, v in result["floor"].items()},
                     indent=1))
    print(json.dumps({k: v for k, v in result["crops"].items() if k != "shapes"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
