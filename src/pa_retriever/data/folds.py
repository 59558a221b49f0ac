"""k-fold cross-validation over a split's queries, named in the split itself so that every job and cache reads it:

    train+dev:fold2of5           the queries of fold 2 (folds 0 to 4)
    train+dev:without-fold2of5   every other query

Queries that share a text are one group and stay in one fold (they train as one query). Groups are dealt to folds
in the order of a hash of their text: the same folds on every machine with no seed, sizes within one group.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pa_retriever.utils.checks import SettingError

_FOLD = re.compile(r"(?P<without>without-)?fold(?P<fold>\d+)of(?P<folds>\d+)")


@dataclass(frozen=True)
class Fold:
    fold: int
    folds: int
    without: bool  # every query but the fold's

    @staticmethod
    def parse(split: str) -> tuple[str, Fold | None]:
        """(the judgement splits, the fold) of a split name; no fold without a ':'."""
        base, _, name = split.partition(":")
        if not name:
            return split, None
        found = _FOLD.fullmatch(name)
        if found is None:
            raise SettingError(f"split '{split}': after ':' comes fold<i>of<k> or without-fold<i>of<k>, e.g. "
                               f"{base}:fold0of5")
        fold = Fold(int(found["fold"]), int(found["folds"]), bool(found["without"]))
        if fold.folds < 2 or not 0 <= fold.fold < fold.folds:
            raise SettingError(f"split '{split}': fold {fold.fold} of {fold.folds}; k-fold needs k >= 2 (data.folds) "
                               "and a fold from 0 to k - 1 (data.fold)")
        return base, fold

    def select(self, data):
        """The fold's queries of `data` (or all the others), with their judgements; the corpus whole."""
        groups = sorted(dict.fromkeys(data.queries), key=lambda text: hashlib.sha256(text.encode()).hexdigest())
        in_fold = {text for i, text in enumerate(groups) if i % self.folds == self.fold}
        return data.with_queries(i for i, text in enumerate(data.queries) if (text in in_fold) != self.without)
