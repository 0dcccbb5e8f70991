"""A documented generator of synthetic clinical notes (no real patient text ships offline).

Each record is a short triage note; the label is the department the patient was referred to:
cardiology, gastroenterology, neurology or pulmonology. The generating process is fixed and
written down here so results are reproducible and nobody mistakes the notes for real ones:

- department ~ uniform over the four;
- "<age>-year-old <sex> presents with <finding 1> and <finding 2>." Each finding is one of the
  department's own findings with probability 0.7, otherwise one of another department's;
- with probability 0.5 a sentence "Denies <finding>." naming another department's finding
  (negation: a bag of words is misled by it);
- a history sentence, the department's own with probability 0.5, otherwise generic;
- vital signs with random values;
- a plan sentence, the department's own with probability 0.4, otherwise generic.

Ages are uniform 18..90 and sex is female/male with equal probability; neither carries
signal. Notes are 25-45 words long.
"""

from __future__ import annotations

import numpy as np

from common.text_loaders import TextTable

DEPARTMENTS = ("cardiology", "gastroenterology", "neurology", "pulmonology")

_FINDINGS = {
    "cardiology": (
        "chest pain radiating to the left arm",
        "palpitations",
        "pressure in the chest on exertion",
        "swelling of both ankles",
        "an irregular heartbeat",
        "shortness of breath when lying flat",
    ),
    "gastroenterology": (
        "abdominal pain after meals",
        "nausea and vomiting",
        "black tarry stools",
        "heartburn",
        "diarrhea for several days",
        "yellowing of the skin",
    ),
    "neurology": (
        "a severe headache",
        "numbness in the right hand",
        "slurred speech",
        "episodes of dizziness",
        "a seizure witnessed by family",
        "blurred vision in one eye",
    ),
    "pulmonology": (
        "a productive cough",
        "wheezing",
        "shortness of breath on exertion",
        "coughing up blood",
        "fever and chills with cough",
        "chest tightness at night",
    ),
}
_HISTORY = {
    "cardiology": ("History of hypertension and high cholesterol.", "Prior myocardial infarction."),
    "gastroenterology": ("History of peptic ulcer disease.", "Drinks alcohol daily."),
    "neurology": ("History of migraines.", "Prior transient ischemic attack."),
    "pulmonology": ("Smoker for thirty years.", "History of asthma since childhood."),
}
_GENERIC_HISTORY = ("No significant past medical history.", "Takes no regular medication.", "Lives alone.")
_PLAN = {
    "cardiology": ("Order ECG and troponin.", "Start aspirin, echocardiogram today."),
    "gastroenterology": ("Plan upper endoscopy.", "Check liver function tests."),
    "neurology": ("Urgent head CT.", "Neurological exam every hour."),
    "pulmonology": ("Chest x-ray and sputum culture.", "Start inhaled bronchodilator."),
}
_GENERIC_PLAN = ("Refer for specialist review.", "Admit for observation.", "Follow up in one week.")


def synthetic_notes(n: int, *, seed: int) -> TextTable:
    """``n`` generated notes with their departments (see the module docstring)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        dept = DEPARTMENTS[rng.integers(len(DEPARTMENTS))]
        others = [d for d in DEPARTMENTS if d != dept]

        def finding(own_probability: float, own: str = dept, others: list[str] = others) -> str:
            source = own if rng.random() < own_probability else others[rng.integers(len(others))]
            options = _FINDINGS[source]
            return options[rng.integers(len(options))]

        first = finding(0.7)
        second = finding(0.7)
        while second == first:
            second = finding(0.7)
        parts = [
            f"{rng.integers(18, 91)}-year-old {('female', 'male')[rng.integers(2)]} presents with {first} and {second}."
        ]
        if rng.random() < 0.5:
            parts.append(f"Denies {finding(0.0)}.")
        history = _HISTORY[dept] if rng.random() < 0.5 else _GENERIC_HISTORY
        parts.append(history[rng.integers(len(history))])
        parts.append(
            f"BP {rng.integers(95, 181)}/{rng.integers(55, 106)}, HR {rng.integers(50, 131)}, "
            f"temp {36 + rng.random() * 3:.1f}."
        )
        plan = _PLAN[dept] if rng.random() < 0.4 else _GENERIC_PLAN
        parts.append(plan[rng.integers(len(plan))])
        texts.append(" ".join(parts))
        labels.append(dept)
    return TextTable(texts, labels, "synthetic:notes")
