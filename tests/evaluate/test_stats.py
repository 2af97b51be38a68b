"""Paired tests and the comparison table against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mddose.evaluate.stats import compare, paired_tests


def test_paired_t_by_hand(rng):
    from scipy.stats import t as t_dist

    a = rng.normal(2.0, 0.3, 12)
    b = a - rng.normal(0.2, 0.2, 12)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    p = 2 * t_dist.sf(abs(t), d.size - 1)
    r = paired_tests(a, b)
    assert r.n == 12 and r.t_pvalue == pytest.approx(p, rel=1e-9)
    assert r.mean_diff == pytest.approx(d.mean())


def test_wilcoxon_exact_all_positive():
    # 5 positive, distinct differences: exact two-sided p = 2 / 2^5
    r = paired_tests([2.0, 3.5, 4.25, 5.0, 7.5], [1.0, 1.5, 1.25, 1.0, 1.5])
    assert r.wilcoxon_pvalue == pytest.approx(2 / 32)


def test_nan_pairs_dropped_and_degenerate_cases():
    r = paired_tests([1.0, np.nan, 3.0, 4.0], [1.5, 2.0, np.nan, 4.5])
    assert r.n == 2
    assert paired_tests([1.0, 2.0], [1.0, 2.0]).t_pvalue == 1.0
    assert math.isnan(paired_tests([1.0], [2.0]).t_pvalue)


def _values(rng):
    pats = [f"p{i}" for i in range(10)]
    base = rng.normal(2.0, 0.2, 10)
    return {
        "A": {"dose_error": dict(zip(pats, base))},
        "B": {"dose_error": dict(zip(pats, base + 1.0 + rng.normal(0, 0.05, 10)))},  # clearly worse
        "C": {"dose_error": dict(zip(pats, base + rng.normal(0, 0.3, 10)))},  # noise only
    }


def test_table_marks_significant_rows(rng):
    vals = _values(rng)
    comp = compare(vals, metrics=[("dose_error", "Dose Score")])
    md = comp.to_markdown()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "*" in rows["B"] and "*" not in rows["A (reference)"]
    assert comp.significant("B", "dose_error")
    mean, std, n = comp.summary("B", "dose_error")
    v = np.array(list(vals["B"]["dose_error"].values()))
    assert (mean, n) == (pytest.approx(v.mean()), 10) and std == pytest.approx(v.std(ddof=1))
    assert f"{v.mean():.3f} ± {v.std(ddof=1):.3f}*" in md


def test_named_reference_and_csv(rng):
    comp = compare(_values(rng), metrics=[("dose_error", "Dose Score")], reference="B", test="wilcoxon")
    assert comp.methods[0] == "B"
    lines = comp.to_csv().strip().splitlines()
    assert lines[0].startswith("method,metric,n,mean,std")
    assert len(lines) == 4
    row_a = next(line for line in lines if line.startswith("A,")).split(",")
    assert float(row_a[7]) < 0.05 and row_a[8] == "1"  # Wilcoxon p, significant
    with pytest.raises(ValueError):
        compare(_values(rng), reference="nope")
