"""``DIR/report.html``: one offline file that puts every method of a study side by side.

Sections: the three tables; box plots of the per-patient Dose and DVH scores by method; per test patient a
row of dose maps of every finished method with the ground truth and the error maps (one dose colour scale
and one error scale shared by all methods of that patient), and the DVH curves of all methods over the
ground truth. Images are inlined as base64 PNGs; the page skeleton and styles are the evaluation report's
(:mod:`mddose.evaluate.report.page`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mddose.study.config import StudyConfig
from mddose.utils.fs import atomic_write
from mddose.utils.log import logger


def markdown_table_html(md: str) -> str:
    """The pipe tables and text lines of one of the study's Markdown tables as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[2:]]
            out.append('<div class="tablewrap"><table><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                           for r in body) + "</table></div>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            out.append(f'<p class="meta">{html.escape(line)}</p>')
    flush()
    return "\n".join(out)


def _predictions(out: Path, study: dict, patient) -> dict[str, Any]:
    """Method name → predicted dose of ``patient`` (methods whose prediction can be read)."""
    from mddose.evaluate.predictions import find_predictions, read_volume

    preds = {}
    for name, rec in study["methods"].items():
        if rec["status"] != "done":
            continue
        pred_dir = out / "methods" / _slug(study, name) / "pred"
        try:
            found = find_predictions(pred_dir).files
            if patient.id in found:
                preds[name] = read_volume(found[patient.id], patient)
        except Exception as exc:  # noqa: BLE001 — a figure that cannot be drawn must not lose the report
            logger.warning("study report: %s/%s: %s", name, patient.id, exc)
    return preds


def _slug(study: dict, name: str) -> str:
    from mddose.study.config import MethodSpec

    m = next(m for m in study["config"]["methods"] if m["name"] == name)
    return MethodSpec(name=m["name"], model=m.get("model", "")).slug


def _img(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _boxplots(study: dict) -> str:
    from mddose.evaluate.figures import figure_data_uri, score_boxplot

    scores = {label: {m: r["stages"]["evaluate"]["values"].get(col, {})
                      for m, r in study["methods"].items() if r["status"] == "done"}
              for col, label in (("dose_error", "Dose score (Gy)"), ("dvh_error", "DVH score (Gy)"))}
    try:
        return _img(figure_data_uri(score_boxplot(scores)), "Per-patient scores by method (each dot a test patient)")
    except Exception as exc:  # noqa: BLE001
        return f'<p class="note">box plots not drawn: {html.escape(str(exc))}</p>'


def _patient_sections(cfg: StudyConfig, out: Path, study: dict) -> list[str]:
    from mddose.data.io import load_patients
    from mddose.evaluate.figures import dose_error_figure, dvh_figure, figure_data_uri

    parts = []
    patients, _ = load_patients(study["test_patients"])
    for p in patients:
        preds = _predictions(out, study, p)
        if not preds or p.dose is None:
            continue
        body = [f"<h3>{html.escape(p.id)}</h3>"]
        try:
            target = p.masks.get(p.targets[0]) if p.targets else None
            fig = dose_error_figure(p.ct, p.dose, preds, spacing=p.spacing, target=target)
            body.append(_img(figure_data_uri(fig), f"{p.id}: ground truth, each method's dose and error "
                                                   "(prediction − ground truth), shared colour scales"))
            rois = {k: v for k, v in p.masks.items() if k != "possible_dose_mask"}
            fig = dvh_figure(p.dose, preds, rois, voxel_volume=p.voxel_volume_cc)
            body.append(_img(figure_data_uri(fig), f"{p.id}: DVH of every method (dashed) over the ground truth"))
        except Exception as exc:  # noqa: BLE001
            body.append(f'<p class="note">figures of {html.escape(p.id)} not drawn: {html.escape(str(exc))}</p>')
        parts.append('<section class="patient">' + "\n".join(body) + "</section>")
    return parts


def _budget_text(budget: dict) -> str:
    """``minutes 1.0`` / ``steps 2``; per method (``A: steps 2; B: not trained``) when they differ."""
    if budget and set(budget) <= {"minutes", "steps"}:
        return ", ".join(f"{k} {v}" for k, v in budget.items())
    return "; ".join(f"{m}: {_budget_text(b) if b else 'not trained'}" for m, b in budget.items()) or "none"


def _not_scored_html(study: dict) -> str:
    """A warning paragraph per method with test patients it has no score for (left out of Table 1)."""
    parts = []
    for name, rec in study["methods"].items():
        lost = rec.get("not_scored") or {}
        if rec["status"] == "done" and lost:
            parts.append(f'<p class="note"><b>{html.escape(name)}: {len(lost)} test patient(s) not scored</b> '
                         "(left out of its rows): " + html.escape("; ".join(f"{p}: {w}" for p, w in lost.items()))
                         + "</p>")
    return "\n".join(parts)


def write_study_report(cfg: StudyConfig, out: Path, study: dict) -> Path:
    """Write ``out/report.html`` (atomically) from the tables and the finished methods' predictions."""
    from mddose.evaluate.report.page import render_page

    body = [f"<h1>Study {html.escape(cfg.name)}</h1>",
            f'<p class="meta">{html.escape(cfg.description)} Budget per method (as trained): '
            f"{html.escape(_budget_text(study['budget']))}; reference method: {html.escape(cfg.reference)}; "
            f"written {html.escape(study['written'])}; mddose {html.escape(study['versions']['mddose'])}, "
            f"torch {html.escape(study['versions']['torch'])}.</p>"]
    body.append(_not_scored_html(study))
    for name in ("table1.md", "table2.md", "table3.md"):
        if (out / name).is_file():
            body.append(markdown_table_html((out / name).read_text(encoding="utf-8")))
    body += ["<h2>Scores by method</h2>", _boxplots(study), "<h2>Test patients</h2>"]
    body += _patient_sections(cfg, out, study)
    path = out / "report.html"
    with atomic_write(path, "w") as fh:
        fh.write(render_page(f"mddose study {cfg.name}", body))
    return path
