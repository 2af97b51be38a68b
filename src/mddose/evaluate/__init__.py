"""Evaluation of predicted doses: OpenKBP scores, clinical metrics, DVHs, gamma, statistics.

* :mod:`mddose.evaluate.openkbp` — the OpenKBP challenge's dose and DVH scores (official conventions).
* :mod:`mddose.evaluate.dvh` — cumulative DVH curves, ``D_x``, ``V_d``, ``D0.1cc``.
* :mod:`mddose.evaluate.clinical` — target/OAR metrics, V95, homogeneity indices (ICRU 83, σ/μ, MD-Dose's
  slice-wise HI) and Paddick CI.
* :mod:`mddose.evaluate.gamma` — 3D gamma index and pass rate (3 %/3 mm global, 10 % cutoff).
* :mod:`mddose.evaluate.stats` — comparison of prediction sets (mean ± std, paired t / Wilcoxon, tables).
* :mod:`mddose.evaluate.run` — ``evaluate_predictions(reference, prediction)`` → :class:`EvaluationResult`.
"""

from __future__ import annotations

from mddose.evaluate.run import EvaluationResult, PatientRecord, compare_runs, evaluate_arrays, evaluate_predictions

__all__ = ["EvaluationResult", "PatientRecord", "compare_runs", "evaluate_arrays", "evaluate_predictions"]
