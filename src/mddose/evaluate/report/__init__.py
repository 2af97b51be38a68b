"""One self-contained HTML report of a prediction run (``mddose report PRED``).

The file opens offline: images are base64 ``data:`` URIs, CSS and JavaScript are inlined, nothing refers
to an external URL. It holds

* the score tables — ``PRED/evaluation/summary.json`` and ``per_patient.csv`` when ``mddose evaluate``
  wrote them, else the scores computed here (OpenKBP and clinical; minimal ones when none can be scored);
* per patient: the dose/error figure and the DVH figure (:mod:`mddose.evaluate.figures`) and a slice
  viewer — a range slider that swaps pre-rendered axial frames (:mod:`mddose.evaluate.report.frames`).

Parts: :mod:`~mddose.evaluate.report.build` (reading, scoring, writing), :mod:`~mddose.evaluate.report.page`
(the HTML) and the package files ``page.html``, ``report.css`` and ``viewer.js``.
"""

from __future__ import annotations

from mddose.evaluate.report.build import (Report, basic_metrics, build_report, compute_scores, load_evaluation,
                                          report_run)

__all__ = ["Report", "basic_metrics", "build_report", "compute_scores", "load_evaluation", "report_run"]
