"""THE gate: one verdict rule for what export ships, what `edgeft parity` passes, what `auto` and serve pick.

FP32 artifacts must reproduce the reference: top-1 agreement 1.0 and max |Δlogit| <= logit_tol.
Reduced precisions (fp16, bf16, int8) must reach min_agreement and lose at most max_drop accuracy points.
Below min_n images the gate does not certify a reduced precision ("too few images"): a proportion measured
on a handful of images cannot tell 99% from 95%. By default min_n is derived from the target: the smallest
n at which even a flawless result (no flip) has its Wilson lower bound at or above min_agreement, i.e.
n >= z^2 p / (1 - p): 381 images at p = 0.99, 765 at 0.995 (95% confidence).
With serving's --fast-preprocess inputs (`parity --fast-preprocess`) the logits cannot match to 1e-4, so an FP32
artifact is judged on top-1 agreement >= FAST_FP32_AGREEMENT instead, from min_n images like a reduced
precision; reduced precisions are judged as always.
"""

from __future__ import annotations

import math

from pydantic import model_validator

from edgeft.check.comparator import Z_BY_CONFIDENCE
from edgeft.core.manifests import GateRecord
from edgeft.core.reports import Comparison, GateSettings

PASS, FAIL, TOO_FEW = "pass", "fail", "too few images"
FAST_FP32_AGREEMENT = 0.999  # FP32 fed --fast-preprocess inputs against THE preprocessing's reference


def certifying_n(min_agreement: float, confidence: float = 0.95) -> int:
    """The fewest images on which a result with no flip can show agreement >= min_agreement at `confidence`."""
    if min_agreement >= 1.0:
        return 1  # "every image agrees" needs no interval
    z = Z_BY_CONFIDENCE.get(round(confidence, 2), Z_BY_CONFIDENCE[0.95])
    return max(1, math.ceil(z * z * min_agreement / (1.0 - min_agreement) - 1e-9))


class Gate(GateSettings):
    """GateSettings plus the rule that judges a Comparison (min_n filled in from the target when not given)."""

    @model_validator(mode="after")
    def _derive_min_n(self) -> Gate:
        if self.min_n is None:
            self.min_n = certifying_n(self.min_agreement, self.confidence)
        return self

    def settings(self) -> GateSettings:
        return GateSettings(**self.model_dump())

    def judge(self, precision: str, c: Comparison, judged_on: str = "", fast_inputs: bool = False) -> GateRecord:
        """fast_inputs: the artifact was fed serving's --fast-preprocess inputs, the reference THE
        preprocessing's."""
        reasons = []
        if precision == "fp32" and fast_inputs:
            if c.agreement < FAST_FP32_AGREEMENT:
                reasons.append(
                    f"fp32 with --fast-preprocess: top-1 agreement {c.agreement:.4f} ({c.n_flipped} flipped) < "
                    f"{FAST_FP32_AGREEMENT}"
                )
        elif precision == "fp32":
            if c.agreement < 1.0:
                reasons.append(f"fp32 top-1 agreement {c.agreement:.4f} < 1.0 ({c.n_flipped} flipped)")
            if not c.max_abs_logit_diff <= self.logit_tol:
                reasons.append(f"fp32 max |Δlogit| {c.max_abs_logit_diff:.3g} > {self.logit_tol:.3g}")
        else:
            if c.agreement < self.min_agreement:
                reasons.append(
                    f"{precision} top-1 agreement {c.agreement:.4f} (95% CI {c.agreement_low:.4f}-"
                    f"{c.agreement_high:.4f}, n={c.n}) < {self.min_agreement:.4f}"
                )
            if c.delta_accuracy_pts is not None and -c.delta_accuracy_pts > self.max_drop:
                reasons.append(f"{precision} accuracy drop {-c.delta_accuracy_pts:.2f} pts > {self.max_drop:.2f} pts")
        verdict = FAIL if reasons else PASS
        if not reasons and (precision != "fp32" or fast_inputs) and c.n < (self.min_n or 0):
            verdict = TOO_FEW
            reasons.append(
                f"judged on {c.n} images; the gate certifies {self.min_agreement:.2%} agreement from {self.min_n} "
                "(a larger test split, or `--min-n` to accept a weaker proof)"
            )
        return GateRecord(
            passed=verdict == PASS,
            verdict=verdict,
            n=c.n,
            agreement=c.agreement,
            agreement_low=c.agreement_low,
            agreement_high=c.agreement_high,
            max_abs_logit_diff=c.max_abs_logit_diff,
            delta_accuracy_pts=c.delta_accuracy_pts,
            reasons=reasons,
            judged_on=judged_on,
        )


def failed_to_run(reason: str, judged_on: str = "") -> GateRecord:
    """The verdict for an artifact that could not even be loaded or run."""
    return GateRecord(passed=False, verdict=FAIL, reasons=[f"cannot run: {reason}"], judged_on=judged_on)
