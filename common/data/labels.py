"""The label vocabulary: which label value is which class, from public class names only.

Reading the vocabulary from the records (the sorted labels a file happens to hold) makes the
class count and the meaning of every class index depend on the records: two neighbouring
datasets (one record more or less) can then give every record a different label, and a
site that lacks a class maps its labels to the wrong classes. So the mapping comes from the
site's ``class-names`` (its policy, or the scenario in a simulation) or the table's schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import DataError


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def class_indices(
    labels: Sequence[str],
    class_names: Sequence[str],
    *,
    source: str,
    where: Sequence[str] | None = None,
) -> np.ndarray:
    """Each label's position in ``class_names`` (int64).

    Labels match a class name as text, or as a number when both are numbers ("1.0" is class
    "1"). An unknown label raises a one-line :class:`DataError` naming ``source``, the place
    (``where[i]``, e.g. "line 7, column 'y'") and the value.
    """
    if len(class_names) < 2:
        raise DataError(f"{source}: class-names must list at least 2 labels, got {list(class_names)}")
    index = {str(name).strip(): i for i, name in enumerate(class_names)}
    by_number = {n: i for name, i in index.items() if (n := _number(name)) is not None}
    out = np.empty(len(labels), dtype=np.int64)
    for r, raw in enumerate(labels):
        label = str(raw).strip()
        k = index.get(label)
        if k is None and (n := _number(label)) is not None:
            k = by_number.get(n)
        if k is None:
            place = f"{where[r]}: " if where is not None else ""
            raise DataError(f"{source}: {place}label {label!r} is not one of the class-names {', '.join(index)}")
        out[r] = k
    return out


def require_class_names(class_names: Sequence[str], *, source: str, kind: str) -> tuple[str, ...]:
    """``class_names``, or a one-line error saying why a ``kind`` file needs them (fail closed)."""
    if not class_names:
        raise DataError(
            f"{source}: a {kind} needs class-names (the site's label set, in class order, e.g. "
            'class-names = "benign,malignant"): the classes must not be read from the records'
        )
    return tuple(str(c).strip() for c in class_names)
