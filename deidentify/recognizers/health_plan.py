"""Health-plan beneficiary, member, policy, group and subscriber numbers, found by their label."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ID_VALUE, LABEL_SEP_FWD, ClinicalPatternRecognizer

LABEL = (
    r"(?:(?:health[ \t]*)?(?:insurance|plan|policy|member|membership|subscriber|beneficiary|group|benefit|coverage"
    r"|medicare|medicaid|payer|HMO|PPO)(?:[ \t]+(?:plan|policy|member|card|id|number))?(?:[ \t]*(?:id|identifier|number|no\.?|#))??"
    r"|HBN|HPN|HICN|MBI)"
)


class HealthPlanNumberRecognizer(ClinicalPatternRecognizer):
    ENTITY = "HEALTH_PLAN_NUMBER"
    PATTERNS = [Pattern("Health plan (labelled)", rf"\b{LABEL}{LABEL_SEP_FWD}(?P<v>{ID_VALUE})", 0.9)]
    CONTEXT = ["insurance", "member", "policy", "plan", "subscriber", "medicare", "medicaid"]
