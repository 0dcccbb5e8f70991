"""A documented generator of synthetic financial headlines with their sentiment (no labelled
financial-sentiment corpus ships offline under a clear licence).

Each record is one headline about a listed company; the label is the sentiment a market
reader would give it: ``negative``, ``neutral`` or ``positive``. The generating process, fixed
and written down so results are reproducible and nobody mistakes the headlines for real news:

- the sentiment is drawn with probabilities ``negative_share``, then neutral and positive
  sharing the rest equally (default 1/3 each);
- a company is drawn uniformly from :data:`COMPANIES` (invented names) and a template from the
  sentiment's own list (:data:`_TEMPLATES`), whose slots take a quarter, a percentage (1-40), an
  amount (1-900 million) and a number of jobs;
- with probability 0.15 the template is drawn from another sentiment's list but a hedge word
  flips it the way a reader would ("fails to", "despite"), so a bag of words is misled;
- with probability 0.2 a neutral tag ("(Reuters)", "- update", "in early trade") is appended.

Headlines are 5-16 words long. :func:`headline_stream` lays headlines out in time for the
sentiment monitor, with an optional planted surge of negative news.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.text_loaders import TextTable

SENTIMENTS = ("negative", "neutral", "positive")
COMPANIES = (
    "Northwind Bank", "Contoso Energy", "Fabrikam Motors", "Tailspin Air", "Litware Systems", "Adatum Health",
    "Woodgrove Capital", "Proseware Retail", "Wingtip Foods", "Fourth Coffee", "Lucerne Insurance", "Alpine Mining",
)  # fmt: skip
_TEMPLATES = {
    "negative": (
        "{C} shares plunge {P}% after profit warning",
        "{C} misses {Q} earnings estimates",
        "{C} to cut {J} jobs as demand slumps",
        "{C} cuts full-year guidance",
        "{C} reports {Q} loss of {A} million",
        "Regulator fines {C} {A} million",
        "{C} suspends dividend amid losses",
        "{C} downgraded to sell by analysts",
    ),
    "neutral": (
        "{C} to report {Q} results on Thursday",
        "{C} appoints new chief financial officer",
        "{C} holds annual general meeting",
        "{C} shares unchanged in {Q} trading",
        "{C} completes previously announced bond issue",
        "{C} moves headquarters to new office",
        "{C} confirms date of investor day",
        "{C} renews credit facility of {A} million",
    ),
    "positive": (
        "{C} beats {Q} profit forecasts",
        "{C} shares jump {P}% on record revenue",
        "{C} raises dividend by {P}%",
        "{C} wins {A} million contract",
        "{C} upgraded to buy by analysts",
        "{C} lifts full-year outlook",
        "{C} to hire {J} staff as sales grow",
        "{C} reports {P}% rise in {Q} earnings",
    ),
}
# A template of another sentiment, turned by a hedge: (from, to) -> templates
_FLIPPED = {
    ("positive", "negative"): ("{C} fails to lift outlook as costs rise", "{C} record revenue fails to stop {P}% fall"),
    ("negative", "positive"): ("{C} shares rise despite {Q} loss", "{C} avoids job cuts as orders recover"),
    ("negative", "neutral"): ("{C} says job cut report is speculation",),
    ("positive", "neutral"): ("{C} declines to comment on contract talks",),
}
_TAGS = ("(Reuters)", "- update", "in early trade", "- sources")


def synthetic_headlines(n: int, *, seed: int, negative_share: float | None = None) -> TextTable:
    """``n`` generated headlines with their sentiments (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if negative_share is None:
        probs = np.full(3, 1 / 3)
    else:
        if not 0 <= negative_share <= 1:
            raise ValueError(f"negative_share must be in [0, 1], got {negative_share}")
        probs = np.array([negative_share, (1 - negative_share) / 2, (1 - negative_share) / 2])
    texts, labels = [], []
    for _ in range(n):
        sentiment = SENTIMENTS[rng.choice(3, p=probs)]
        flips = [t for (_, to), ts in _FLIPPED.items() if to == sentiment for t in ts]
        options = flips if flips and rng.random() < 0.15 else _TEMPLATES[sentiment]
        text = options[rng.integers(len(options))].format(
            C=COMPANIES[rng.integers(len(COMPANIES))],
            P=rng.integers(1, 41),
            Q=f"Q{rng.integers(1, 5)}",
            A=rng.integers(1, 901),
            J=f"{rng.integers(1, 50) * 100:,}",
        )
        if rng.random() < 0.2:
            text += " " + _TAGS[rng.integers(len(_TAGS))]
        texts.append(text)
        labels.append(sentiment)
    return TextTable(texts, labels, "synthetic:headlines")


@dataclass(frozen=True)
class Surge:
    """Between ``start`` and ``end`` (seconds from the stream's start) negative news has share
    ``negative_share`` instead of the baseline's."""

    start: float
    end: float
    negative_share: float


def headline_stream(
    n: int, *, seed: int, hours: float = 48.0, negative_share: float = 0.2, surge: Surge | None = None
) -> tuple[np.ndarray, TextTable]:
    """``n`` headlines at uniformly random times over ``hours`` (sorted; seconds from the
    start), negative with ``negative_share`` except inside ``surge``."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, hours * 3600.0, size=n))
    inside = np.zeros(n, dtype=bool) if surge is None else (times >= surge.start) & (times < surge.end)
    calm = synthetic_headlines(int((~inside).sum()), seed=seed + 1, negative_share=negative_share)
    stormy = synthetic_headlines(int(inside.sum()), seed=seed + 2, negative_share=surge.negative_share if surge else 0)
    texts, labels = [], []
    calm_i = stormy_i = 0
    for flag in inside:
        table, at = (stormy, stormy_i) if flag else (calm, calm_i)
        texts.append(table.texts[at])
        labels.append(table.labels[at])
        if flag:
            stormy_i += 1
        else:
            calm_i += 1
    return times, TextTable(texts, labels, "synthetic:headline-stream")
