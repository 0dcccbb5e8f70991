"""A documented generator of synthetic credit-risk records (no real bank data ships offline).

Each record is an applicant with eight attributes; the label says whether the loan
defaulted within a year. The generating model is fixed and written down here so that
results are reproducible and nobody mistakes the data for real customers:

- ``age`` ~ uniform integer 21..75
- ``income`` (thousands/year) ~ lognormal(mean=log 45, sigma=0.5)
- ``debt_ratio`` ~ beta(2, 5)
- ``credit_lines`` ~ poisson(4)
- ``late_payments`` ~ poisson(0.2 + 1.3 * debt_ratio)
- ``years_employed`` ~ min(age - 18, exponential(6))
- ``home`` in {own, mortgage, rent} with probabilities 0.3 / 0.4 / 0.3
- ``purpose`` in {car, education, home, business, other}

Default probability is ``sigmoid(z)`` with
``z = -2.2 + 3.0*debt_ratio + 0.55*late_payments - 0.8*log(income/45) - 0.03*(age-40)
- 0.05*years_employed + 0.4*[home=rent] + 0.5*[purpose=business] + 0.6*debt_ratio*late_payments``.
"""

from __future__ import annotations

import numpy as np

from common.data.schema import BUILTIN_SCHEMAS, TableSchema, load_schema
from common.dataset import Dataset
from common.loaders import table_from_rows

CREDIT_COLUMNS = (
    "age",
    "income",
    "debt_ratio",
    "credit_lines",
    "late_payments",
    "years_employed",
    "home",
    "purpose",
    "default",
)
CREDIT_CATEGORICAL = ("home", "purpose")
CREDIT_LABEL = "default"


def generate_credit_rows(n: int, *, seed: int) -> list[list[str]]:
    """Generate ``n`` synthetic applicants as CSV-ready string cells (see the module doc)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 76, size=n)
    income = rng.lognormal(mean=np.log(45.0), sigma=0.5, size=n)
    debt = rng.beta(2.0, 5.0, size=n)
    lines = rng.poisson(4.0, size=n)
    late = rng.poisson(0.2 + 1.3 * debt)
    employed = np.minimum(age - 18, rng.exponential(6.0, size=n))
    home = rng.choice(["own", "mortgage", "rent"], p=[0.3, 0.4, 0.3], size=n)
    purpose = rng.choice(["car", "education", "home", "business", "other"], size=n)
    z = (
        -2.2
        + 3.0 * debt
        + 0.55 * late
        - 0.8 * np.log(income / 45.0)
        - 0.03 * (age - 40)
        - 0.05 * employed
        + 0.4 * (home == "rent")
        + 0.5 * (purpose == "business")
        + 0.6 * debt * late
    )
    default = rng.random(n) < 1.0 / (1.0 + np.exp(-z))
    return [
        [
            str(age[i]),
            f"{income[i]:.2f}",
            f"{debt[i]:.4f}",
            str(lines[i]),
            str(late[i]),
            f"{employed[i]:.1f}",
            str(home[i]),
            str(purpose[i]),
            str(int(default[i])),
        ]
        for i in range(n)
    ]


def credit_schema() -> TableSchema:
    """The generator's public schema (``common/data/schemas/credit.toml``): bounds from the
    parameters above, never from generated records."""
    return load_schema(BUILTIN_SCHEMAS["synthetic:credit"])


def synthetic_credit(n: int, *, seed: int, schema: TableSchema | None = None) -> Dataset:
    """The synthetic credit-risk table as a :class:`Dataset`, preprocessed with the public
    ``schema`` (default: :func:`credit_schema`; categoricals one-hot encoded)."""
    rows = generate_credit_rows(n, seed=seed)
    return table_from_rows(
        CREDIT_COLUMNS,
        [(i + 2, r) for i, r in enumerate(rows)],
        source=f"synthetic:credit(n={n}, seed={seed})",
        label_column=CREDIT_LABEL,
        schema=schema or credit_schema(),
        categorical_columns=CREDIT_CATEGORICAL,
    )


def write_credit_csv(path: str, n: int, *, seed: int) -> None:
    """Write the synthetic table to ``path`` as CSV (header row first)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CREDIT_COLUMNS)
        writer.writerows(generate_credit_rows(n, seed=seed))
