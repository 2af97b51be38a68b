"""Studies: several methods trained, predicted and evaluated alike, and compared (the paper's Tables 1–3).

* :mod:`mddose.study.config` — the study config (methods, data, one budget, prediction settings), validated.
* :mod:`mddose.study.runner` — train → predict → evaluate per method, resumable, failures recorded.
* :mod:`mddose.study.tables` — table1/2/3 and study.json; :mod:`mddose.study.report` — report.html.
"""

from mddose.study.config import StudyConfig, load_study_config
from mddose.study.runner import run_study

__all__ = ["StudyConfig", "load_study_config", "run_study"]
