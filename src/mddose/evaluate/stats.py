"""Compare prediction sets on the same patients: mean ± std, paired tests, a Table-1-like summary.

For each metric and each method other than the reference method, the per-patient values of the two
methods are paired (patients evaluated by both, values finite in both) and tested with the paired
t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided).
A marker (default ``*``) follows ``mean ± std`` where the chosen test gives p < ``alpha``.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

#: Metrics of the comparison table by default: (column name, label).
DEFAULT_METRICS: tuple[tuple[str, str], ...] = (
    ("dose_error", "Dose Score"), ("dvh_error", "DVH Score"), ("HI_MDDose_error", "HI (MD-Dose, mean Δσ/μ)"),
    ("HI_ICRU83", "HI ICRU83"),
)


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of one metric between a method and the reference method."""

    n: int
    mean_diff: float
    t_pvalue: float
    wilcoxon_pvalue: float


def paired_tests(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of (N,) values ``a`` vs ``b`` (NaN pairs dropped).

    p-values are NaN with fewer than 2 pairs; with all differences zero both are 1.
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 2:
        return PairedTest(n, float(np.mean(a - b)) if n else math.nan, math.nan, math.nan)
    d = a - b
    if np.all(d == 0):
        return PairedTest(n, 0.0, 1.0, 1.0)
    with warnings.catch_warnings():  # scipy warns on (near-)constant differences
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = float(stats.ttest_rel(a, b).pvalue)
        w_p = float(stats.wilcoxon(a, b).pvalue)
    if not np.isfinite(t_p):  # constant non-zero difference: t is infinite
        t_p = 0.0
    return PairedTest(n, float(d.mean()), t_p, w_p)


@dataclass
class Comparison:
    """Per-metric statistics of several methods.

    Attributes:
        methods: method names, reference first.
        metrics: (column, label) pairs.
        values: method → column → {patient: value}.
        tests: (method, column) → PairedTest vs the reference method.
    """

    methods: list[str]
    metrics: list[tuple[str, str]]
    values: dict[str, dict[str, dict[str, float]]]
    tests: dict[tuple[str, str], PairedTest] = field(default_factory=dict)
    alpha: float = 0.05
    test: str = "t"
    marker: str = "*"

    @property
    def reference(self) -> str:
        return self.methods[0]

    def summary(self, method: str, column: str) -> tuple[float, float, int]:
        """(mean, sample std (ddof=1), n) of a method's finite values."""
        v = np.array([x for x in self.values[method].get(column, {}).values() if np.isfinite(x)])
        if v.size == 0:
            return math.nan, math.nan, 0
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)

    def significant(self, method: str, column: str) -> bool:
        t = self.tests.get((method, column))
        if t is None:
            return False
        p = t.t_pvalue if self.test == "t" else t.wilcoxon_pvalue
        return bool(np.isfinite(p) and p < self.alpha)

    def cell(self, method: str, column: str, digits: int = 3) -> str:
        mean, std, n = self.summary(method, column)
        if n == 0:
            return "–"
        mark = self.marker if self.significant(method, column) else ""
        return f"{mean:.{digits}f} ± {std:.{digits}f}{mark}"

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table: one row per method, ``mean ± std`` per metric, marker where significant."""
        head = "| Method | " + " | ".join(label for _, label in self.metrics) + " |"
        sep = "|---|" + "---|" * len(self.metrics)
        rows = [f"| {m}{' (reference)' if m == self.reference else ''} | "
                + " | ".join(self.cell(m, c, digits) for c, _ in self.metrics) + " |" for m in self.methods]
        test = "paired t-test" if self.test == "t" else "Wilcoxon signed-rank test"
        note = (f"\n{self.marker} p < {self.alpha:g} vs {self.reference} ({test}); "
                "mean ± sample standard deviation over patients.\n")
        return "\n".join([head, sep, *rows]) + "\n" + note

    def to_csv(self) -> str:
        """Long CSV: method, metric, n, mean, std, mean_diff, t_pvalue, wilcoxon_pvalue, significant."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", "metric", "n", "mean", "std", "mean_diff_vs_reference", "t_pvalue",
                    "wilcoxon_pvalue", "significant"])
        for m in self.methods:
            for c, _ in self.metrics:
                mean, std, n = self.summary(m, c)
                t = self.tests.get((m, c))
                w.writerow([m, c, n, _fmt(mean), _fmt(std), _fmt(t.mean_diff) if t else "",
                            _fmt(t.t_pvalue) if t else "", _fmt(t.wilcoxon_pvalue) if t else "",
                            int(self.significant(m, c)) if t else ""])
        return buf.getvalue()


def _fmt(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else repr(float(x))


def compare(values: Mapping[str, Mapping[str, Mapping[str, float]]], *,
            metrics: Sequence[tuple[str, str]] | None = None, reference: str | None = None,
            alpha: float = 0.05, test: str = "t", marker: str = "*") -> Comparison:
    """Compare methods.

    Args:
        values: method → column → {patient id: value} (insertion order = table order).
        metrics: (column, label) pairs; default: the :data:`DEFAULT_METRICS` present in any method.
        reference: the method others are tested against (default: the first).
        test: ``"t"`` (paired t-test, as MD-Dose's Table 1) or ``"wilcoxon"`` decides the marker.
    """
    if test not in ("t", "wilcoxon"):
        raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
    methods = list(values)
    if not methods:
        raise ValueError("no methods to compare")
    if reference is not None:
        if reference not in values:
            raise ValueError(f"reference method {reference!r} is not among {methods}")
        methods.remove(reference)
        methods.insert(0, reference)
    if metrics is None:
        metrics = [(c, lab) for c, lab in DEFAULT_METRICS if any(c in values[m] for m in methods)]
    comp = Comparison(methods, list(metrics), {m: {c: dict(v) for c, v in values[m].items()} for m in methods},
                      alpha=alpha, test=test, marker=marker)
    ref = comp.values[methods[0]]
    for m in methods[1:]:
        for c, _ in comp.metrics:
            a_map, b_map = comp.values[m].get(c, {}), ref.get(c, {})
            common = [p for p in a_map if p in b_map]
            comp.tests[(m, c)] = paired_tests([a_map[p] for p in common], [b_map[p] for p in common])
    return comp
