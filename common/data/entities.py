"""A documented generator of synthetic clinical sentences with tagged entities (no real patient
text, and no labelled clinical NER corpus, ships offline).

Each record is one sentence of a medication note, tagged word by word in BIO form with three
entity types: ``DRUG`` (a medicine), ``DOSE`` (an amount and unit, e.g. "500 mg") and
``CONDITION`` (a diagnosis). The generating process, fixed and written down so results are
reproducible and nobody mistakes the notes for real ones:

- a template is drawn uniformly from :data:`_TEMPLATES`; its slots ``{DRUG}``, ``{DOSE}``,
  ``{CONDITION}`` and ``{AGE}`` are filled independently;
- a drug is drawn uniformly from :data:`_DRUGS` (one or two words, e.g. "insulin glargine");
  a condition uniformly from :data:`_CONDITIONS` (one to three words);
- a dose is a number from the drug's own list and a unit ("mg", "mcg", "units" or "ml"),
  sometimes with a frequency word after it that is *not* part of the entity ("daily");
- with probability 0.3 a distractor word that looks like an entity but is not one is put in
  the sentence ("Dr Morgan", "ward 5", a date), tagged ``O``;
- ages (18-90) are ``O``: they carry no entity.

Words are split on spaces, and punctuation is its own word. Sentences are 6-20 words long.
"""

from __future__ import annotations

import numpy as np

from common.data.tagged import TaggedTable

ENTITY_TAGS = ("O", "B-DRUG", "I-DRUG", "B-DOSE", "I-DOSE", "B-CONDITION", "I-CONDITION")

# drug -> (doses, unit)
_DRUGS = {
    "metformin": ((500, 850, 1000), "mg"),
    "lisinopril": ((5, 10, 20), "mg"),
    "atorvastatin": ((10, 20, 40, 80), "mg"),
    "amoxicillin": ((250, 500), "mg"),
    "warfarin": ((2, 5), "mg"),
    "levothyroxine": ((25, 50, 100), "mcg"),
    "insulin glargine": ((10, 20, 30), "units"),
    "salbutamol": ((100, 200), "mcg"),
    "furosemide": ((20, 40), "mg"),
    "omeprazole": ((20, 40), "mg"),
    "amlodipine": ((5, 10), "mg"),
    "prednisolone": ((5, 10, 30), "mg"),
    "morphine sulfate": ((5, 10), "mg"),
    "lactulose": ((10, 15), "ml"),
}
_CONDITIONS = (
    "hypertension",
    "type 2 diabetes",
    "atrial fibrillation",
    "community acquired pneumonia",
    "asthma",
    "hypothyroidism",
    "heart failure",
    "chronic kidney disease",
    "urinary tract infection",
    "gastro-oesophageal reflux",
    "migraine",
    "rheumatoid arthritis",
    "copd",
    "deep vein thrombosis",
)
_FREQUENCIES = ("daily", "twice daily", "at night", "as needed")
_DISTRACTORS = ("seen by Dr Morgan", "on ward 5", "on 12 March", "by the night team", "in clinic B")
_TEMPLATES = (
    "Started {DRUG} {DOSE} for {CONDITION} .",
    "{AGE} year old with {CONDITION} , continue {DRUG} {DOSE} .",
    "Known {CONDITION} ; {DRUG} increased to {DOSE} .",
    "Patient with {CONDITION} takes {DRUG} {DOSE} .",
    "Stop {DRUG} , {CONDITION} resolved .",
    "Reviewed {CONDITION} , no change to {DRUG} .",
    "Prescribed {DRUG} {DOSE} {FREQ} .",
    "History of {CONDITION} and {CONDITION2} .",
    "Discharged on {DRUG} {DOSE} {FREQ} for {CONDITION} .",
    "{AGE} year old presenting with worsening {CONDITION} .",
)


def synthetic_entity_notes(n: int, *, seed: int) -> TaggedTable:
    """``n`` generated sentences with BIO tags over :data:`ENTITY_TAGS` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    drugs = list(_DRUGS)
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for _ in range(n):
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        drug = drugs[rng.integers(len(drugs))]
        doses, unit = _DRUGS[drug]
        condition = _CONDITIONS[rng.integers(len(_CONDITIONS))]
        other = _CONDITIONS[rng.integers(len(_CONDITIONS))]
        while other == condition:
            other = _CONDITIONS[rng.integers(len(_CONDITIONS))]
        slots = {
            "{DRUG}": (drug, "DRUG"),
            "{DOSE}": (f"{doses[rng.integers(len(doses))]} {unit}", "DOSE"),
            "{CONDITION}": (condition, "CONDITION"),
            "{CONDITION2}": (other, "CONDITION"),
            "{AGE}": (str(rng.integers(18, 91)), ""),
            "{FREQ}": (_FREQUENCIES[rng.integers(len(_FREQUENCIES))], ""),
        }
        words: list[str] = []
        labels: list[str] = []
        for piece in template.split():
            text, kind = slots.get(piece, (piece, ""))
            parts = text.split()
            words += parts
            labels += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1) if kind else ["O"] * len(parts)
        if rng.random() < 0.3:
            distractor = _DISTRACTORS[rng.integers(len(_DISTRACTORS))].split()
            at = len(words) - 1  # before the final punctuation
            words[at:at] = distractor
            labels[at:at] = ["O"] * len(distractor)
        tokens.append(words)
        tags.append(labels)
    return TaggedTable(tokens, tags, "synthetic:entity-notes")
