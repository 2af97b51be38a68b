"""Evaluation of predicted doses, one module per concern.

Scores and records (plain arrays in, numbers out):

* :mod:`mddose.evaluate.openkbp` — the OpenKBP challenge's dose and DVH scores (official conventions).
* :mod:`mddose.evaluate.dvh` — the cumulative DVH (the one implementation), ``D_x``, ``V_d``, ``D0.1cc``.
* :mod:`mddose.evaluate.clinical` — target/OAR metrics, V95, homogeneity indices (ICRU 83, σ/μ, MD-Dose's
  slice-wise HI) and Paddick CI.
* :mod:`mddose.evaluate.gamma` — 3D gamma index and pass rate (3 %/3 mm global, 10 % cutoff).
* :mod:`mddose.evaluate.records` — :class:`PatientRecord` / :class:`EvaluationResult` of one patient / a set,
  :func:`evaluate_arrays` for in-memory predictions.

Runs and comparisons (folders in, files out):

* :mod:`mddose.evaluate.predictions` — the one reader of prediction folders (every format ``mddose predict``
  writes), shared by ``evaluate``, ``compare`` and ``report``.
* :mod:`mddose.evaluate.run` — :func:`evaluate_predictions` (a folder against reference patients), its
  outputs, :func:`compare_runs`.
* :mod:`mddose.evaluate.stats` — comparison of prediction sets (mean ± std, paired t / Wilcoxon, tables).

Pictures:

* :mod:`mddose.evaluate.figures` — publication figures (dose maps with error maps, DVH curves).
* :mod:`mddose.evaluate.report` — the offline HTML report: its page, CSS and JavaScript are package files
  (``report/page.html``, ``report.css``, ``viewer.js``); the slice viewer's frames are in
  :mod:`mddose.evaluate.report.frames`.
"""

from __future__ import annotations

from mddose.evaluate.records import EvaluationResult, PatientRecord, evaluate_arrays
from mddose.evaluate.run import compare_runs, evaluate_predictions

__all__ = ["EvaluationResult", "PatientRecord", "compare_runs", "evaluate_arrays", "evaluate_predictions"]
