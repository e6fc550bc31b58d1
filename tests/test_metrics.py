"""bertcli.metrics against scikit-learn / scipy, and degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli import metrics


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_metrics_match_sklearn(k):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, k, 300))
    got = metrics.classification_metrics(y, p, k)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, p))


def test_macro_f1_ignores_classes_absent_from_both():
    skm = pytest.importorskip("sklearn.metrics")
    y, p = [0, 0, 2, 2], [0, 2, 2, 2]  # class 1 never occurs
    assert metrics.macro_f1(y, p, num_classes=3) == pytest.approx(skm.f1_score(y, p, average="macro"))


def test_degenerate_cases():
    assert metrics.mcc([1, 1, 1], [1, 1, 1]) == 0.0  # undefined -> 0
    assert metrics.accuracy([], []) == 0.0
    assert metrics.macro_f1([], [], 2) == 0.0
    assert metrics.pearson([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) == 0.0
    assert metrics.spearman([0.5], [0.2]) == 0.0
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 1], [0])


def test_regression_metrics_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    p = y + rng.normal(scale=0.5, size=200)
    got = metrics.regression_metrics(y, p)
    assert got["pearson"] == pytest.approx(pearsonr(y, p)[0])
    assert got["spearman"] == pytest.approx(spearmanr(y, p)[0])
    assert got["mse"] == pytest.approx(float(np.mean((y - p) ** 2)))
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3, 4], [10, 20, 30, 400]) < 1.0
