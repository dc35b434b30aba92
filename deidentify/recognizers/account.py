"""Account, billing and invoice numbers, found by their label."""
from __future__ import annotations

from presidio_analyzer import Pattern

from deidentify.recognizers.base import ID_VALUE, LABEL_SEP_FWD, ClinicalPatternRecognizer

LABEL = r"(?:acct|account|billing|invoice|claim|bank[ \t]+account|routing)"


class AccountNumberRecognizer(ClinicalPatternRecognizer):
    ENTITY = "ACCOUNT_NUMBER"
    PATTERNS = [Pattern("Account (labelled)", rf"\b{LABEL}[ \t]*(?:number|no\.?|num|id)?{LABEL_SEP_FWD}(?P<v>{ID_VALUE})", 0.9)]
    CONTEXT = ["account", "acct", "billing", "invoice"]
