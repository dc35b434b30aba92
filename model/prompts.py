"""Prompts built from a `DeidentifiedRecord`: plain-English summary, harmony chat, seed format.

Everything here is deterministic: the same record gives byte-identical text (stable sorting, times
expressed relative to the record's `as_of`, never absolute dates). Nothing that identifies the
patient or the encounter (pseudonym, ids, state, ZIP) is written into a prompt.

The harmony chat template (TRL's `gptoss.jinja`, like gpt-oss's own) renders its own system
message (`model_identity`, `Reasoning: <effort>`) and takes the first `developer` message as
"# Instructions". A second leading system/developer message would be silently dropped, so
`build_messages` returns `[developer, user]` and the system part travels as template kwargs
(`chat_template_kwargs`), used alike by `render_chat_prompt` and by training examples.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fhir_adapter.record import Coding, ConditionEntry, VitalSign
from model.report import report_json_schema
from model.rules import RulesResult, score_record

if TYPE_CHECKING:
    from deidentify.record import DeidentifiedRecord

MODEL_IDENTITY = "You are a clinical decision support assistant for emergency and urgent-care triage nurses."
# Fixed "Current date" for the harmony system message: keeps prompts byte-identical and free of
# real dates (record dates are shifted; everything else is relative to as_of).
PROMPT_DATE = "2025-08-05"
REASONING_EFFORTS = ("low", "medium", "high")
_DATE_LINE = re.compile(r"Current date: \d{4}-\d{2}-\d{2}")
# Harmony control tokens (<|start|>, <|end|>, ...) in record text would let a note end the user
# message and forge a turn; they are removed from everything a prompt quotes.
_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")

NOTES_BUDGET = 1500  # characters of scrubbed notes in a prompt
NOTE_BUDGET = 600  # characters of any one note
MAX_CONDITIONS = 30
MAX_MEDICATIONS = 20

DEVELOPER_INSTRUCTIONS = """\
You assist a triage nurse. From the de-identified patient summary and the vital-sign score, \
write a preliminary triage report for the nurse to review. It is not a diagnosis.

Answer ONLY with one JSON object in the TriageReport format below: no prose, no \
Markdown, no code fences. Use plain one-line strings without double quotes or backslashes.
- acuity: an integer on the ESI-aligned scale: 1 resuscitation (immediate life-saving \
intervention), 2 emergent (high risk, danger-zone vital signs, should not wait), 3 urgent \
(stable, needs several resources), 4 less urgent (one resource), 5 non-urgent (no resources).
- summary: one line under 140 characters for the card.
- differential: 1 to 5 conditions, each with likelihood high, moderate or low and a short rationale.
- red_flags, recommended_actions, questions_to_ask: short items the nurse can act on.
- reasoning_summary: two or three sentences.
Never invent identifiers, names, dates, places or record numbers, and do not repeat any that \
appear. Never assign a lower acuity than the vital-sign rules support without saying why.

"""

# Vital signs in a fixed clinical order; anything else follows sorted by LOINC.
_VITAL_NAMES: dict[str, str] = {
    "9279-1": "Respiratory rate",
    "59408-5": "SpO2 (pulse oximetry)",
    "2708-6": "SpO2",
    "85354-9": "Blood pressure",
    "8480-6": "Systolic blood pressure",
    "8462-4": "Diastolic blood pressure",
    "8867-4": "Heart rate",
    "80288-4": "Level of consciousness",
    "67775-7": "Level of responsiveness",
    "8310-5": "Body temperature",
    "8331-1": "Oral temperature",
    "72514-3": "Pain severity (0-10)",
    "3151-8": "Inhaled oxygen flow rate",
    "3150-0": "Inhaled oxygen concentration",
    "29463-7": "Body weight",
    "8302-2": "Body height",
    "39156-5": "BMI",
    "9843-4": "Head circumference",
}
_VITAL_ORDER = {code: i for i, code in enumerate(_VITAL_NAMES)}
_ENCOUNTER_CLASSES = {
    "EMER": "emergency", "AMB": "ambulatory", "IMP": "inpatient", "ACUTE": "inpatient acute",
    "OBSENC": "observation", "HH": "home health", "VR": "virtual", "FLD": "field", "SS": "short stay",
    "PRENC": "pre-admission",
}
_PRIORITIES = {"EM": "emergency", "UR": "urgent", "R": "routine", "EL": "elective", "S": "stat",
               "A": "ASAP", "CR": "callback results", "PRN": "as needed"}
_INACTIVE_MED = {"stopped", "completed", "cancelled", "entered-in-error", "draft", "unknown"}
_EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}


# --- small helpers ---------------------------------------------------------------------------
def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def relative_time(moment: datetime | None, as_of: datetime) -> str:
    """How long before (or after) `as_of`, in the largest sensible unit: "3 years before"."""
    if moment is None:
        return "time unknown"
    delta = _aware(as_of) - _aware(moment)
    after = delta < timedelta(0)
    delta = abs(delta)
    minutes = int(delta.total_seconds() // 60)
    if minutes < 1:
        return "at the time of the visit"
    if minutes < 60:
        amount = _plural(minutes, "minute")
    elif delta < timedelta(hours=48):
        amount = _plural(minutes // 60, "hour")
    elif delta < timedelta(days=60):
        amount = _plural(delta.days, "day")
    elif delta < timedelta(days=730):
        amount = _plural(int(delta.days // 30.44), "month")
    else:
        amount = _plural(int(delta.days // 365.25), "year")
    return f"{amount} {'after' if after else 'before'}"


def _one_line(text: str | None) -> str:
    return " ".join(_CONTROL_TOKEN.sub(" ", text or "").split())


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _concept(codings: Iterable[Coding], text: str | None) -> str:
    """A readable name: free text (already scrubbed), else a coding's display, else its code."""
    return _concept_of(tuple(codings), text)


@functools.lru_cache(maxsize=8192)  # a dataset lists the same history entries in every example
def _concept_of(codings: tuple[Coding, ...], text: str | None) -> str:
    line = _one_line(text)
    if line:
        return line
    for coding in codings:
        line = _one_line(coding.display)
        if line:
            return line
    for coding in codings:
        if coding.code:
            return f"code {coding.code}"
    return "unnamed"


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.0f}"


def age_text(record: DeidentifiedRecord) -> str:
    if record.age_days is not None and record.age_days < 365:
        if record.age_days < 60:
            return _plural(record.age_days, "day") + " old"
        return f"{_plural(int(record.age_days // 30.44), 'month')} ({record.age_days} days) old"
    if record.age_display is None:
        return "age unknown"
    return f"{record.age_display} years old"


# --- describe_record -------------------------------------------------------------------------
# The last record's condition lines: build_messages and seed_prompt of one record both list them.
# Keyed by identity of the (immutable) conditions tuple, which the cache holds alive; one tuple,
# read and replaced whole, so concurrent callers never mix two records' entries.
_LAST_CONDITIONS: tuple[Any, Any, tuple[str, ...]] = (None, None, ())


def _conditions(record: DeidentifiedRecord) -> list[str]:
    global _LAST_CONDITIONS
    conds, as_of, cached = _LAST_CONDITIONS
    if conds is record.conditions and as_of == record.as_of:
        return list(cached)
    rows = [row for row in map(_row_of, record.conditions) if row is not None]
    # Equal keys mean equal status and onset, so ordering by (key, name) orders the lines as
    # sorting the formatted lines did; only the lines shown are formatted.
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = [
        f"- {name} ({key[3]}; {f'onset {relative_time(onset, record.as_of)}' if onset else 'onset unknown'})"
        for key, name, onset in rows[:MAX_CONDITIONS]
    ]
    if len(rows) > MAX_CONDITIONS:
        lines.append(f"- and {len(rows) - MAX_CONDITIONS} more")
    _LAST_CONDITIONS = (record.conditions, record.as_of, tuple(lines))
    return lines


# A dataset shows the same (immutable) history entry objects in every example of a patient:
# rows are remembered by identity, which is far cheaper than hashing a ConditionEntry's fields.
# The cache holds each entry, so its id is not reused while remembered.
_ROWS: dict[int, tuple[ConditionEntry, Any]] = {}
_ROWS_MAX = 8192


def _row_of(c: ConditionEntry) -> tuple[tuple[Any, ...], str, datetime | None] | None:
    hit = _ROWS.get(id(c))
    if hit is not None and hit[0] is c:
        return hit[1]
    row = _condition_row(c)
    if len(_ROWS) >= _ROWS_MAX:
        _ROWS.clear()  # bounded memory
    _ROWS[id(c)] = (c, row)
    return row


def _condition_row(c: ConditionEntry) -> tuple[tuple[Any, ...], str, datetime | None] | None:
    """(sort key, name, onset) of a condition line; None for one never shown."""
    if c.verification_status in _EXCLUDED_VERIFICATION:
        return None
    name = _concept(c.codings, c.text)
    status = c.clinical_status or "status unknown"
    onset = c.onset or c.recorded
    inactive = status not in ("active", "recurrence", "relapse", "status unknown")
    return (inactive, -_aware(onset).timestamp() if onset else float("inf"), name.lower(), status), name, onset


def _medications(record: DeidentifiedRecord) -> list[str]:
    rows = []
    for m in record.medications:
        if m.status in _INACTIVE_MED:
            continue
        name = _concept(m.codings, m.text)
        dosage = "; ".join(_one_line(d) for d in m.dosage if _one_line(d))
        when = f"prescribed {relative_time(m.authored, record.as_of)}" if m.authored else None
        detail = ", ".join(x for x in (dosage, when) if x)
        rows.append((name.lower(), f"- {name}" + (f" ({detail})" if detail else "")))
    rows.sort()
    lines = [line for _, line in rows[:MAX_MEDICATIONS]]
    if len(rows) > MAX_MEDICATIONS:
        lines.append(f"- and {len(rows) - MAX_MEDICATIONS} more")
    return lines


def _allergies(record: DeidentifiedRecord) -> list[str]:
    rows = []
    for a in record.allergies:
        if a.clinical_status in ("inactive", "resolved"):
            continue
        name = _concept(a.codings, a.text)
        details = []
        if a.criticality:
            details.append(f"criticality {a.criticality}")
        reactions = sorted({_one_line(r) for r in a.reactions if _one_line(r)})
        if reactions:
            details.append("reactions: " + ", ".join(reactions))
        rows.append(f"- {name}" + (f" ({'; '.join(details)})" if details else ""))
    return sorted(rows, key=str.lower)


def _presenting(record: DeidentifiedRecord) -> list[str]:
    enc = record.encounter
    lines = []
    reasons = [_one_line(r) for r in enc.reasons if _one_line(r)] if enc is not None else []
    if reasons:
        lines.append("Reason for visit: " + "; ".join(reasons))
    # Chief complaints recorded elsewhere (8661-1 Observation, encounter diagnosis).
    others = [_one_line(c.text) for c in getattr(record, "complaints", ())
              if c.source != "encounter-reason" and c.text and _one_line(c.text)]
    if others:
        lines.append("Chief complaint: " + "; ".join(dict.fromkeys(others)))
    if enc is None:
        return lines
    kind = []
    if enc.class_code:
        kind.append(_ENCOUNTER_CLASSES.get(enc.class_code, enc.class_code) + " encounter")
    types = [_one_line(t) for t in enc.types if _one_line(t)]
    if types:
        kind.append("type: " + "; ".join(types))
    if enc.priority:
        kind.append("priority " + _PRIORITIES.get(enc.priority, enc.priority))
    if enc.start:
        kind.append("started " + relative_time(enc.start, record.as_of))
    if kind:
        lines.append("Visit: " + ", ".join(kind))
    return lines


def _vital_value(v: VitalSign) -> str:
    if v.loinc == "85354-9" and "8480-6" in v.components:
        dia = v.components.get("8462-4")
        unit = v.component_units.get("8480-6") or "mm[Hg]"
        return f"{_number(v.components['8480-6'])}/{_number(dia) if dia is not None else '?'} {unit}"
    if v.value is not None:
        text = _number(v.value) + (f" {v.unit}" if v.unit else "")
    elif v.value_code is not None:
        text = _one_line(v.value_code.display) or f"code {v.value_code.code}"
    else:
        return "no value"
    o2 = []
    if "3151-8" in v.components:
        o2.append(f"inhaled O2 {_number(v.components['3151-8'])} L/min")
    if "3150-0" in v.components:
        o2.append(f"FiO2 {_number(v.components['3150-0'])} %")
    return text + (f" ({', '.join(o2)})" if o2 else "")


def _vitals(record: DeidentifiedRecord) -> list[str]:
    vitals = record.vitals
    skip = {"8480-6", "8462-4"} if "85354-9" in vitals and vitals["85354-9"].components else set()
    if "59408-5" in vitals and "2708-6" in vitals and vitals["59408-5"] == vitals["2708-6"]:
        skip.add("2708-6")  # one oximetry Observation carrying both codes
    codes = sorted((c for c in vitals if c not in skip), key=lambda c: (_VITAL_ORDER.get(c, 999), c))
    lines = []
    for code in codes:
        v = vitals[code]
        name = _VITAL_NAMES.get(code) or _one_line(v.display) or f"LOINC {code}"
        lines.append(f"- {name}: {_vital_value(v)} ({relative_time(v.effective, record.as_of)})")
    return lines


def _notes(record: DeidentifiedRecord, budget: int) -> list[str]:
    lines, used = [], 0
    for note in record.notes:
        text = _one_line(note)
        if not text:
            continue
        room = min(NOTE_BUDGET, budget - used)
        if room < 40:
            lines.append("- (further notes omitted)")
            break
        text = _trim(text, room)
        used += len(text)
        lines.append(f"- {text}")
    return lines


def describe_record(record: DeidentifiedRecord, *, notes_budget: int = NOTES_BUDGET) -> str:
    """A deterministic plain-English clinical summary of a de-identified record."""
    sex = record.sex if record.sex and record.sex != "unknown" else "sex unknown"
    sections = [f"Patient: {age_text(record)}, {sex}."]

    def section(title: str, lines: list[str], empty: str | None) -> None:
        if lines:
            sections.append(f"{title}:\n" + "\n".join(lines))
        elif empty:
            sections.append(f"{title}: {empty}")

    section("Presenting complaint", _presenting(record), "not recorded.")
    section("History (conditions)", _conditions(record), "none recorded.")
    section("Active medications", _medications(record), "none recorded.")
    section("Allergies", _allergies(record), "none recorded.")
    section("Latest vital signs", _vitals(record), "none recorded.")
    section("Clinical notes (de-identified, trimmed)", _notes(record, notes_budget), None)
    return _CONTROL_TOKEN.sub(" ", "\n\n".join(sections))


def describe_rules(rules: RulesResult) -> str:
    """The NEWS2 / ESI rule findings as prompt text (no acuity verdict, to avoid anchoring)."""
    if rules.band is None:
        return "Vital-sign rules: cannot assess, no vital signs recorded."
    lines = [f"NEWS2 (SpO2 scale {rules.spo2_scale}): {rules.total}, {rules.band.value} risk"
             + ("" if rules.complete else " (incomplete: the score is a lower bound)")
             + ("" if rules.news2_applicable else "; NEWS2 is not validated under 16 years")]
    for p in rules.parameters:
        if p.missing:
            lines.append(f"- {p.name}: missing")
        else:
            value = _number(p.value) if isinstance(p.value, float) else str(p.value)
            unit = f" {p.unit}" if p.unit and isinstance(p.value, float) else ""
            lines.append(f"- {p.name}: {value}{unit}, {p.points} point{'s' if p.points != 1 else ''}"
                         + (" (stale)" if p.stale else ""))
    for finding in rules.danger_zone:
        lines.append(f"ESI danger-zone vital sign: {finding}")
    if rules.infant_fever:
        lines.append(f"ESI infant fever rule: {rules.infant_fever}")
    return "Vital-sign rules:\n" + "\n".join(lines)


# --- harmony chat ----------------------------------------------------------------------------
def _ts_type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """One JSON Schema node as a compact TypeScript-like type, constraints inline."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    kind = node.get("type")
    if kind == "object":
        return "{" + ", ".join(f"{k}: {_ts_type(v, defs)}" for k, v in node.get("properties", {}).items()) + "}"
    if kind == "array":
        items = _ts_type(node.get("items", {}), defs)
        low, high = node.get("minItems", 0), node.get("maxItems")
        count = f"{low}-{high}" if high is not None else f"{low}+"
        return f"Array<{items}> /* {count} items */"
    if kind == "string" and "maxLength" in node:
        return f"string /* {node.get('minLength', 0)}-{node['maxLength']} chars */"
    if kind == "integer" and {"minimum", "maximum"} <= node.keys():
        return " | ".join(str(i) for i in range(node["minimum"], node["maximum"] + 1))
    return "number" if kind in ("integer", "number") else str(kind or "any")


def response_format(schema: dict[str, Any]) -> str:
    """harmony's `# Response Formats` section for a JSON Schema, in compact TypeScript-like form.

    The final channel is generated under the full schema (model.constrained), so the prompt only
    needs the shape: the pasted JSON Schema was ~1700 of a ~2600-token prompt, all of it prefilled
    for every request.
    """
    defs = schema.get("$defs", {})
    lines = [f"# Response Formats\n\n## {schema.get('title', 'Response')}\n"]
    if schema.get("description"):
        lines.append(f"// {schema['description']}")
    lines.append("{")
    for name, node in schema.get("properties", {}).items():
        note = f" // {node['description']}" if node.get("description") else ""
        lines.append(f"{name}: {_ts_type(node, defs)},{note}")
    lines.append("}")
    return "\n".join(lines)


@functools.cache  # constant: the schema is fixed at import; rendering it costs ~2 ms
def developer_instructions() -> str:
    return DEVELOPER_INSTRUCTIONS + response_format(report_json_schema())


def build_messages(record: DeidentifiedRecord, *, rules: RulesResult | None = None) -> list[dict[str, str]]:
    """`[developer, user]` chat messages for the harmony template (see module docstring)."""
    rules = rules if rules is not None else score_record(record)
    user = (
        "Write the triage report for this patient.\n\n"
        + describe_record(record)
        + "\n\n"
        + describe_rules(rules)
    )
    return [
        {"role": "developer", "content": developer_instructions()},
        {"role": "user", "content": user},
    ]


def chat_template_kwargs(reasoning_effort: str = "low") -> dict[str, str]:
    """Template variables for the harmony system message; the same for training and inference."""
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}")
    return {"model_identity": MODEL_IDENTITY, "reasoning_effort": reasoning_effort}


def render_chat_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    reasoning_effort: str = "low",
    add_generation_prompt: bool = True,
) -> str:
    """Render messages with the tokenizer's chat template (harmony for gpt-oss)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **chat_template_kwargs(reasoning_effort),
    )
    # The harmony system message carries today's date, i.e. the visit date (a Safe Harbor date
    # element) and a prompt that changes daily. Pin it (a strftime_now kwarg does not reach the
    # template's macro in transformers 5), only inside the system message.
    head, sep, rest = text.partition("<|end|>")
    return _DATE_LINE.sub(f"Current date: {PROMPT_DATE}", head, count=1) + sep + rest


def chat_example(
    messages: list[dict[str, Any]], answer_json: str, thinking: str | None = None,
    *, reasoning_effort: str = "low",
) -> dict[str, Any]:
    """One conversational training example as TRL's SFTTrainer takes it.

    `chat_template_kwargs` (a per-example column SFTTrainer passes to apply_chat_template) carries
    the same system-message variables as inference.
    """
    assistant: dict[str, str] = {"role": "assistant", "content": answer_json}
    if thinking and thinking.strip():
        assistant["thinking"] = thinking.strip()
    return {
        "messages": [dict(m) for m in messages] + [assistant],
        "chat_template_kwargs": chat_template_kwargs(reasoning_effort),
    }


# --- seed format -----------------------------------------------------------------------------
def _seed_history(record: DeidentifiedRecord) -> str:
    parts = [f"{age_text(record)}, {record.sex or 'sex unknown'}."]
    conditions = [line[2:] for line in _conditions(record)]
    parts.append("Conditions: " + ("; ".join(conditions) if conditions else "none recorded") + ".")
    meds = [line[2:] for line in _medications(record)]
    parts.append("Medications: " + ("; ".join(meds) if meds else "none recorded") + ".")
    allergies = [line[2:] for line in _allergies(record)]
    parts.append("Allergies: " + ("; ".join(allergies) if allergies else "none recorded") + ".")
    return " ".join(parts)


def _seed_symptoms(record: DeidentifiedRecord) -> str:
    parts = []
    if record.encounter is not None:
        reasons = [_one_line(r) for r in record.encounter.reasons if _one_line(r)]
        if reasons:
            parts.append("; ".join(reasons) + ".")
    vitals = [line[2:] for line in _vitals(record)]
    if vitals:
        parts.append("Vital signs: " + "; ".join(vitals) + ".")
    notes = [line[2:] for line in _notes(record, NOTES_BUDGET // 2)]
    if notes:
        parts.append("Notes: " + " ".join(notes))
    return " ".join(parts) if parts else "none recorded."


def seed_prompt(record: DeidentifiedRecord) -> str:
    """The seed adapter's format: one `###Human:` turn ending in `###Assistant:`."""
    # Record text must not be able to open a new "###" turn or carry control tokens.
    history = _CONTROL_TOKEN.sub(" ", _seed_history(record)).replace("###", "#")
    symptoms = _CONTROL_TOKEN.sub(" ", _seed_symptoms(record)).replace("###", "#")
    return (
        f"###Human: Patient Medical History: {history} "
        f"Symptoms: {symptoms} "
        "What is the preliminary diagnosis?\n###Assistant:"
    )


def seed_example(prompt_text: str, answer: str) -> str:
    """Training text in the seed format: the prompt followed by the answer."""
    if not prompt_text.rstrip().endswith("###Assistant:"):
        raise ValueError("prompt_text must end with '###Assistant:' (use seed_prompt)")
    return f"{prompt_text.rstrip()} {answer.strip()}"
