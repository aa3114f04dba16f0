"""Levels of grouping factors: integer codes per row and the labels R prints.

An interaction factor ``a:b`` has one level per observed pair, coded by the pair itself;
its label joins the components with ``:`` as lme4 does, escaping ``:`` and ``\\`` inside a
component, so that ("p:q", "r") and ("p", "q:r") stay two levels with two labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def level_label(value: object) -> str:
    """Label of a grouping level as R prints it (``3`` rather than ``3.0``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def level_labels(uniques: object) -> list[str]:
    """Labels of many grouping levels at once, as :func:`level_label` gives them (vectorised for numbers)."""
    values = np.asarray(uniques)
    if values.dtype.kind in "iub":
        return values.astype(str).tolist()
    if values.dtype.kind == "f":
        integral = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**53)
        labels = values.astype(str).astype(object)
        labels[integral] = values[integral].astype(np.int64).astype(str)
        return labels.tolist()
    return [level_label(u) for u in uniques]


class LevelLabels(Sequence):
    """Labels of a grouping factor's levels, formatted from the level values on first use.

    A list of millions of Python strings costs hundreds of MB and seconds to build; fits
    need only the number of levels, so the labels stay a compact array until asked for.
    """

    def __init__(self, values: object):
        self._values = np.asarray(values)
        self._labels: list[str] | None = None

    def _list(self) -> list[str]:
        if self._labels is None:
            self._labels = level_labels(self._values)
        return self._labels

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        return self._list()[index]

    def __iter__(self):
        return iter(self._list())

    def __contains__(self, label: object) -> bool:
        return label in self._list()

    def index(self, label: object, *args) -> int:
        return self._list().index(label, *args)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, Sequence)) else NotImplemented

    def __repr__(self) -> str:
        return f"LevelLabels({len(self)} levels)"


def _escape(labels: np.ndarray) -> np.ndarray:
    """Component labels with ``\\`` and ``:`` escaped, so that joining them with ``:`` is one-to-one."""
    if not any(":" in label or "\\" in label for label in np.unique(labels)):
        return labels
    return np.char.replace(np.char.replace(labels, "\\", "\\\\"), ":", "\\:")


def factor_labels(data: pd.DataFrame, factor: tuple[str, ...]) -> np.ndarray:
    """Level label of every row for a (possibly interaction) factor, components joined by ``:``.

    Missing values label as ``"nan"``; in interactions each component is escaped (module
    docstring), so two different tuples never share a label.
    """
    joined = None
    for name in factor:
        codes, uniques = pd.factorize(data[name], sort=True)
        names = np.array(level_labels(uniques) + ["nan"], dtype=str)
        labels = names[codes]  # code -1 (missing) picks "nan"
        if len(factor) > 1:
            labels = _escape(labels)
        joined = labels if joined is None else np.char.add(np.char.add(joined, ":"), labels)
    return joined


def group_codes(data: pd.DataFrame, factor: tuple[str, ...]) -> tuple[np.ndarray, Sequence[str]]:
    """Integer codes and labels of a (possibly interaction) grouping factor."""
    if len(factor) == 1:
        column = data[factor[0]]
        values = column.to_numpy() if pd.api.types.is_numeric_dtype(column) else None
        if values is not None and values.dtype.kind in "iuf" and values.size and np.all(values[1:] >= values[:-1]):
            # Rows sorted by a numeric cluster id (the usual layout): levels where the value changes.
            change = np.empty(values.size, dtype=bool)
            change[0] = True
            np.not_equal(values[1:], values[:-1], out=change[1:])
            codes = np.cumsum(change, dtype=np.int64)
            codes -= 1  # in place: one n-sized array, not two
            return codes, LevelLabels(values[change])
        codes, uniques = pd.factorize(column, sort=True)
        return codes.astype(np.int64), LevelLabels(uniques)
    codes, uniques = pd.factorize(factor_labels(data, factor), sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]
