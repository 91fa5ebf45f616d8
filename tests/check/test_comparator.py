"""THE comparator and THE gate on hand-built logits: every number below is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.check.comparator import compare, wilson_interval
from edgeft.check.gate import Gate

CLASSES = [f"c{i}" for i in range(9)]


def test_compare_on_a_planted_class_swap():
    n, c = 18, 9
    ref = np.zeros((n, c), np.float32)
    ref[np.arange(n), np.arange(n) % c] = 4.0  # row i predicts class i % 9 with margin 4
    cand = ref.copy()
    cand[:, [0, 1]] = ref[:, [1, 0]]  # classes 0 and 1 swapped
    labels = np.arange(n) % c
    m = compare(ref, cand, CLASSES, labels, [f"img{i}" for i in range(n)])
    assert m.n == 18 and m.agreement == pytest.approx(14 / 18) and m.n_flipped == 4
    assert m.accuracy == pytest.approx(14 / 18) and m.reference_accuracy == 1.0
    assert m.delta_accuracy_pts == pytest.approx(-100 * 4 / 18)
    assert m.max_abs_logit_diff == pytest.approx(4.0)
    assert m.mean_abs_logit_diff == pytest.approx(4 * 2 * 4 / (n * c))
    assert m.cosine == pytest.approx(14 / 18)  # swapped rows are orthogonal, the others identical
    assert m.top5_overlap == 1.0  # the same five classes, in another order
    assert m.flip_matrix == {"c0": {"c1": 2}, "c1": {"c0": 2}}
    assert sorted(f.source for f in m.flipped) == ["img0", "img1", "img10", "img9"]
    f = next(f for f in m.flipped if f.source == "img0")
    assert (f.label, f.reference, f.candidate) == ("c0", "c0", "c1")
    p_top = np.exp(4) / (np.exp(4) + 8)
    assert f.reference_prob == pytest.approx(p_top, abs=1e-6)
    assert f.reference_margin == pytest.approx(p_top - 1 / (np.exp(4) + 8), abs=1e-6)


def test_compare_identical_unlabelled_and_topk_overlap():
    x = np.random.default_rng(0).normal(size=(5, 9)).astype(np.float32)
    m = compare(x, x, CLASSES, labels=np.full(5, -1))
    assert m.agreement == 1.0 and m.top5_overlap == 1.0 and m.max_abs_logit_diff == 0.0
    assert m.cosine == pytest.approx(1.0) and m.accuracy is None and m.delta_accuracy_pts is None
    assert m.flip_matrix == {} and m.flipped == []
    ref = np.array([[5, 4, 3, 2, 1, 0, 0, 0, 0]], np.float32)
    cand = np.array([[5, 4, 3, 2, 0, 1.5, 0, 0, 0]], np.float32)
    assert compare(ref, cand, CLASSES).top5_overlap == pytest.approx(0.8)


def test_flips_are_listed_most_confident_first():
    ref = np.array([[3.0, 0, 0], [0.2, 0, 0], [6.0, 0, 0]], np.float32)
    cand = np.array([[0, 3.0, 0], [0, 0.2, 0], [0, 6.0, 0]], np.float32)
    m = compare(ref, cand, ["a", "b", "c"], sources=["mid", "low", "high"])
    assert [f.source for f in m.flipped] == ["high", "mid", "low"]


@pytest.mark.parametrize("k,n", [(990, 1000), (10, 10), (263, 265), (0, 7), (50, 100)])
def test_wilson_interval_agrees_with_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, _ = wilson_interval(10, 10)
    assert lo < 0.73  # a perfect score on 10 images proves little


def _cmp(agree: int, n: int, delta: float | None = 0.0, max_diff: float = 0.0):
    ref = np.zeros((n, 2), np.float32)
    ref[:, 0] = 1.0
    cand = ref.copy()
    cand[: n - agree] = [0.0, 1.0]
    m = compare(ref, cand, ["a", "b"])
    return m.model_copy(update={"delta_accuracy_pts": delta, "max_abs_logit_diff": max_diff})


def test_gate_rules_per_precision():
    gate = Gate(min_agreement=0.99, max_drop=1.0, logit_tol=1e-4, min_n=1)
    assert gate.judge("fp32", _cmp(100, 100, max_diff=5e-5)).passed
    r = gate.judge("fp32", _cmp(100, 100, max_diff=2e-4))
    assert not r.passed and r.reasons[0].startswith("fp32 max |Δlogit|")
    r = gate.judge("fp32", _cmp(999, 1000))
    assert not r.passed and "agreement 0.9990 < 1.0" in r.reasons[0]
    assert gate.judge("int8", _cmp(995, 1000, delta=-0.5, max_diff=0.5)).passed
    r = gate.judge("int8", _cmp(98, 100))
    assert r.verdict == "fail" and "< 0.9900" in r.reasons[0] and "n=100" in r.reasons[0]
    r = gate.judge("bf16", _cmp(1000, 1000, delta=-1.5))
    assert not r.passed and "accuracy drop 1.50 pts" in r.reasons[0]
    assert gate.judge("int8", _cmp(100, 100, delta=None)).passed


def test_the_default_min_n_is_where_a_flawless_result_proves_the_target():
    from edgeft.check.comparator import wilson_interval
    from edgeft.check.gate import certifying_n

    for p in (0.95, 0.99, 0.995):
        n = certifying_n(p)
        assert wilson_interval(n, n)[0] >= p > wilson_interval(n - 1, n - 1)[0]
    gate = Gate()  # 0.99 -> 381
    assert gate.min_n == 381
    assert gate.judge("int8", _cmp(380, 380)).verdict == "too few images"
    assert gate.judge("int8", _cmp(381, 381)).passed
    assert gate.judge("fp32", _cmp(50, 50)).passed  # FP32 is judged by |Δlogit|, not by a proportion


def test_gate_refuses_to_certify_below_min_n():
    gate = Gate(min_agreement=0.99, min_n=200)
    r = gate.judge("int8", _cmp(150, 150))
    assert not r.passed and r.verdict == "too few images" and "from 200" in r.reasons[0]
    assert gate.judge("int8", _cmp(200, 200)).passed
    assert gate.judge("int8", _cmp(140, 150)).verdict == "fail"  # a clear miss is a fail at any n


def test_fp32_fed_fast_preprocess_inputs_is_judged_on_agreement_not_logits():
    gate = Gate(min_agreement=0.99, max_drop=1.0, logit_tol=1e-4, min_n=1)
    assert gate.judge("fp32", _cmp(1000, 1000, max_diff=0.3), fast_inputs=True).passed
    assert gate.judge("fp32", _cmp(999, 1000, max_diff=0.3), fast_inputs=True).passed  # 99.9%
    r = gate.judge("fp32", _cmp(998, 1000, max_diff=0.3), fast_inputs=True)
    assert not r.passed and "--fast-preprocess" in r.reasons[0] and "0.9980" in r.reasons[0]
    assert not gate.judge("fp32", _cmp(1000, 1000, max_diff=0.3)).passed  # the exact path keeps its tolerance
    assert not gate.judge("int8", _cmp(985, 1000), fast_inputs=True).passed  # reduced precisions: unchanged
    few = Gate(min_agreement=0.99, min_n=381).judge("fp32", _cmp(100, 100, max_diff=0.3), fast_inputs=True)
    assert few.verdict == "too few images" and not few.passed  # certified from min_n images, as reduced ones
