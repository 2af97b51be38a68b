"""The study's outputs: Tables 1–3 of the MD-Dose paper and ``study.json``, rebuilt from what has finished.

* ``table1.md`` / ``table1.csv`` — per method (rows flagged ``table1``): Dose score, DVH score and HI
  (MD-Dose's definition) as mean ± sd over the test patients, paired t-test and Wilcoxon p against the
  reference method, and the paper's marker ``*`` where the paired t-test gives p < 0.05. A failed method is
  a row saying where it failed and why.
* ``table2.md`` — parameters, seconds per denoiser iteration / 3D forward pass at the size the method trained
  on (measured now, on this machine) and the whole-patient prediction time measured in the study.
* ``table3.md`` — the same statistics over the ``table3`` methods (the structure-encoder ablation).
* ``study.json`` — the config, versions, budget, seed, per method: status, training, per-patient values —
  enough to rebuild every table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from mddose.study.config import StudyConfig
from mddose.study.state import COLUMNS, MethodState, write_json
from mddose.utils.fs import atomic_write

METRICS = (("dose_error", "Dose score (Gy)"), ("dvh_error", "DVH score (Gy)"), ("HI_MDDose_error", "HI"))


def _versions() -> dict[str, str]:
    import numpy
    import torch

    from mddose import __version__
    return {"mddose": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()} {platform.system()}"}


def collect(cfg: StudyConfig, out: Path) -> dict[str, dict]:
    """Method name → its record (status, stages, failure) in config order."""
    recs = {}
    for m in cfg.methods:
        st = MethodState.load(out / "methods" / m.slug)
        status = "failed" if st.failed else ("done" if st.done("evaluate") else
                                            ("not run" if not st.stages else "incomplete"))
        recs[m.name] = {"model": m.model, "checkpoint": m.checkpoint, "preset": m.preset,
                        "overrides": dict(m.overrides),
                        "tables": list(m.tables), "status": status, "failed": st.failed, "stages": st.stages,
                        "budget": st.stages.get("train", {}).get("budget", cfg.budget) if st.stages.get("train")
                        else None, "not_scored": not_scored(st.stages)}
    return recs


def not_scored(stages: dict) -> dict[str, str]:
    """Test patient → why the method has no score for it (not predicted, or its prediction could not be scored)."""
    from pathlib import PurePath

    ev, pred = stages.get("evaluate") or {}, stages.get("predict") or {}
    if not ev:
        return {}
    why = {PurePath(str(item)).name: str(msg) for item, msg in pred.get("errors", [])}
    out = {str(pid): why.get(str(pid), "not predicted") for pid in ev.get("missing", [])}
    out.update({PurePath(str(item)).name: str(msg) for item, msg in ev.get("errors", [])})
    return out


def budgets_used(recs: dict[str, dict]) -> dict | None:
    """The one budget every trained method used, or None when they differ or none trained."""
    used = [r["budget"] for r in recs.values() if r["budget"] is not None]
    return used[0] if used and all(b == used[0] for b in used) else None


def _values(rec: dict) -> dict[str, dict[str, float]]:
    return rec["stages"].get("evaluate", {}).get("values", {}) if rec["status"] == "done" else {}


def statistics_table(cfg: StudyConfig, recs: dict[str, dict], table: str):
    """(Comparison over the finished methods of ``table`` — reference first —, the other methods' records)."""
    from mddose.evaluate.stats import compare

    names = [n for n, r in recs.items() if table in r["tables"]]
    done = {n: _values(recs[n]) for n in names if recs[n]["status"] == "done"}
    ref = cfg.reference if cfg.reference in done else None
    comp = compare(done, metrics=list(METRICS), reference=ref) if done else None
    return comp, {n: recs[n] for n in names if n not in done}


def _p(t, which: str) -> str:
    if t is None:
        return ""
    v = t.t_pvalue if which == "t" else t.wilcoxon_pvalue
    return "" if not math.isfinite(v) else (f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}")


def stats_markdown(cfg: StudyConfig, recs: dict[str, dict], table: str, title: str) -> tuple[str, str]:
    """(Markdown, CSV) of one statistics table."""
    comp, others = statistics_table(cfg, recs, table)
    head = ["Method", *(label for _, label in METRICS), "p (t) Dose / DVH / HI", "p (Wilcoxon) Dose / DVH / HI", "n"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "status", "metric", "n", "mean", "std", "t_pvalue", "wilcoxon_pvalue", "significant"])
    if comp is not None:
        for m in comp.methods:
            tests = [comp.tests.get((m, c)) for c, _ in METRICS]
            n = max(comp.summary(m, c)[2] for c, _ in METRICS)
            lost = recs[m]["not_scored"]
            n_text = f"{n} of {n + len(lost)}" if lost else str(n)
            name = f"{m} (reference)" if m == comp.reference else m
            lines.append("| " + " | ".join([name, *(comp.cell(m, c) for c, _ in METRICS),
                                            " / ".join(_p(t, "t") for t in tests) if m != comp.reference else "",
                                            " / ".join(_p(t, "w") for t in tests) if m != comp.reference else "",
                                            n_text]) + " |")
            for (c, _), t in zip(METRICS, tests):
                mean, std, k = comp.summary(m, c)
                w.writerow([m, "done", c, k, _num(mean), _num(std), _p(t, "t"), _p(t, "w"),
                            int(comp.significant(m, c)) if t else ""])
    for m, r in others.items():
        why = (f"failed in {r['failed']['stage']}: {r['failed']['error']}" if r["failed"] else r["status"])
        lines.append("| " + " | ".join([m, why.replace("|", "/"), "", "", "", "", ""]) + " |")
        w.writerow([m, r["status"], "", "", "", "", "", "", ""])
    ref = comp.reference if comp is not None else cfg.reference
    for m in comp.methods if comp is not None else []:
        lost = recs[m]["not_scored"]
        if lost:
            lines += ["", f"{m}: {len(lost)} test patient(s) not scored, left out of its row — "
                          + "; ".join(f"{pid}: {why}".replace("|", "/") for pid, why in lost.items())]
    lines += ["", f"mean ± sample sd over the test patients; * p < 0.05 vs {ref} (paired t-test, as the paper); "
                  "HI = MD-Dose's definition (mean over slices of |σ/μ| differences in the PTV, see "
                  "`mddose.evaluate.clinical`)."]
    return "\n".join(lines) + "\n", buf.getvalue()


def _num(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _iteration_seconds(rec: dict) -> tuple[int | None, float | None, str]:
    """(parameters, seconds per iteration at the method's training size, what one iteration is)."""
    import torch

    from mddose.bench.table2 import time_iteration
    from mddose.train.checkpoint import load_checkpoint

    ckpt = rec["stages"].get("train", {}).get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        return None, None, ""
    b = load_checkpoint(ckpt)
    if b.model_kind.weightless:
        return None, None, "computed (no network)"
    size = b.data_config.size
    n = sum(p.numel() for p in b.model.parameters())
    with torch.inference_mode():
        s, what = time_iteration(b.model, b.kind, b.data_config.channels, size, repeats=2)
    return n, s, what


def table2_markdown(recs: dict[str, dict], timings: dict[str, tuple]) -> str:
    lines = ["## Table 2 — size and speed, measured in this study on this machine", "",
             "| Method | parameters | s / iteration | iteration | whole patient (s) | training steps | training s |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for m, r in recs.items():
        n, s, what = timings.get(m, (None, None, ""))
        pred = r["stages"].get("predict", {})
        tr = r["stages"].get("train", {})
        lines.append(f"| {m} | {f'{n:,}' if n else '–'} | {f'{s:.4f}' if s else '–'} | {what or '–'} | "
                     f"{pred.get('seconds_per_patient', '–')} | {tr.get('steps', '–')} | {tr.get('train_seconds', '–')} |")
    lines += ["", "Whole patient: mean wall time of `predict` per test patient (prediction options of the study). "
                  "s / iteration: one denoiser call (2D, batch 1) or one 3D forward pass at the size the method "
                  "trained on, best of 2 after a warm-up, measured when the tables are written."]
    return "\n".join(lines) + "\n"


def write_tables(cfg: StudyConfig, out: Path, test_dir: Path, *, report: bool = True) -> dict[str, Any]:
    """Write table1/2/3, study.json (and the report) from the finished work in ``out``; returns study.json.

    ``test_dir``: the test patients (the report draws them)."""
    recs = collect(cfg, out)
    t1_md, t1_csv = stats_markdown(cfg, recs, "table1", f"Table 1 — {cfg.name}: Dose score, DVH score, HI")
    _text(out / "table1.md", t1_md)
    _text(out / "table1.csv", t1_csv)
    timings = {m: _iteration_seconds(r) for m, r in recs.items() if r["status"] == "done"}
    _text(out / "table2.md", table2_markdown(recs, timings))
    if any("table3" in r["tables"] for r in recs.values()):
        t3_md, t3_csv = stats_markdown(cfg, recs, "table3", f"Table 3 — {cfg.name}: structure-encoder ablation")
        _text(out / "table3.md", t3_md)
        _text(out / "table3.csv", t3_csv)
    used = budgets_used(recs)
    config = cfg.to_dict()
    if used is not None:
        config["budget"] = used                   # what the methods trained with, not a later --budget-minutes
    study = {"config": config, "versions": _versions(), "budget": used if used is not None else
             {m: r["budget"] for m, r in recs.items()}, "seed": cfg.seed,
             "test_patients": str(Path(test_dir).resolve()),
             "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "columns": list(COLUMNS),
             "methods": {m: {**r, "parameters": timings.get(m, (None,))[0],
                             "s_per_iteration": timings.get(m, (None, None))[1]} for m, r in recs.items()}}
    write_json(json.loads(json.dumps(study, default=str, allow_nan=True)), out / "study.json")
    if report:
        from mddose.study.report import write_study_report
        write_study_report(cfg, out, study)
    return study


def _text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)
