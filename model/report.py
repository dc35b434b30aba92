"""`TriageReport`: the structured preliminary report the model writes, and its JSON Schema.

The model's harmony `final` channel is generated under this schema (constrained decoding), so
every string and list is bounded: a grammar with bounded lengths always terminates. The output is
still validated here; `parse_report` never echoes the text it rejects (it may hold patient data).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from model.acuity import Acuity

SCHEMA_PATH = Path(__file__).with_name("triage_report.schema.json")

# Card summaries must be under 140 characters (CDS Hooks).
SUMMARY_MAX = 139



def _bounded(limit: int) -> Any:
    """A one-line string of 1..limit characters with no control characters, quotes or backslashes.

    The length bound is repeated inside `pattern` because xgrammar ignores min/maxLength when a
    pattern is present; the pattern keeps a byte-level tokenizer from emitting raw control
    characters (invalid JSON) inside strings.
    """
    return Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=limit,
            pattern=rf'^[^\x00-\x1f"\\]{{1,{limit}}}$',
        ),
    ]


_Text = _bounded(160)


class _Strict(BaseModel):
    # extra="forbid" puts additionalProperties: false in the schema: a tighter grammar.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DifferentialItem(_Strict):
    condition: _bounded(80)
    likelihood: Literal["high", "moderate", "low"]
    rationale: _bounded(200)


class TriageReport(_Strict):
    """A preliminary triage report for nurse review (never a diagnosis)."""

    acuity: int = Field(ge=1, le=5, strict=True, description="ESI-aligned acuity: 1 resuscitation .. 5 non-urgent")
    summary: _bounded(SUMMARY_MAX) = Field(
        description="One line for the card, under 140 characters"
    )
    differential: list[DifferentialItem] = Field(min_length=1, max_length=5)
    red_flags: list[_Text] = Field(max_length=6)
    recommended_actions: list[_Text] = Field(max_length=6)
    questions_to_ask: list[_Text] = Field(max_length=6)
    reasoning_summary: _bounded(400)

    @property
    def acuity_level(self) -> Acuity:
        return Acuity(self.acuity)


class InvalidReport(ValueError):
    """The model's output is not a valid TriageReport. The message never contains the output."""


def report_json_schema() -> dict[str, Any]:
    return TriageReport.model_json_schema()


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Export the live schema (the committed copy must match it; a test checks)."""
    path.write_text(json.dumps(report_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_report(text: str) -> TriageReport:
    """Validate the model's JSON output; raise InvalidReport naming only fields and error kinds."""
    if not isinstance(text, str):
        raise InvalidReport(f"report must be text, got {type(text).__name__}")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body:
        raise InvalidReport("empty report")
    try:
        return TriageReport.model_validate_json(body)
    except ValidationError as exc:
        problems = sorted({
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['type']}"
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        })
        shown = "; ".join(problems[:8]) + (f"; +{len(problems) - 8} more" if len(problems) > 8 else "")
        raise InvalidReport(f"invalid triage report ({len(problems)} problems): {shown}") from None


if __name__ == "__main__":  # python -m model.report: refresh the committed schema
    print(write_schema())
