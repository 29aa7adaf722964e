"""Language conditioner: a language code -> its URIEL typology vector (lang2vec's shipped data).

    conditioner = LanguageConditioner("syntax_knn+phonology_knn+inventory_knn")
    conditioner.normalize("fr")           # "fra": ISO 639-1 and 639-3 codes name the same row
    conditioner.encode(["fr", "deu"])     # (2, 289) unit-norm vectors

The vectors are read from the data files the ``lang2vec`` package ships (URIEL, Littell et al.
2017), with numpy and ``allow_pickle=False``. lang2vec's own module is not imported: it needs
``pkg_resources``, which current setuptools no longer has. Codes are resolved with ``iso639-lang``.

Feature sets offered (lang2vec names; ``+`` concatenates): the kNN-imputed typology sets
``syntax_knn`` (103), ``phonology_knn`` (28), ``inventory_knn`` (158), complete for all 7,970
URIEL languages, and ``fam`` (3,718 family memberships) and ``geo`` (299 distances to points on
the globe). Not offered: the sparse WALS/SSWL/Ethnologue/PHOIBLE and ``*_average`` sets (values
missing for most languages), ``id`` (a one-hot that cannot generalise), and ``learned`` (the
Malaviya et al. vectors, shipped only as a pickled object array, which this project never loads).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hypergen.config import DEFAULT_LANGUAGE_FEATURES

# lang2vec feature set -> (data file, source, feature-name prefix), as in lang2vec.FEATURE_SETS_DICT
FEATURE_SETS = {
    "syntax_knn": ("feature_predictions.npz", "predicted", "S_"),
    "phonology_knn": ("feature_predictions.npz", "predicted", "P_"),
    "inventory_knn": ("feature_predictions.npz", "predicted", "INV_"),
    "fam": ("family_features.npz", "FAM", ""),
    "geo": ("geocoord_features.npz", "GEOCOORDS", ""),
}


def iso639_3(code: Any) -> str:
    """An ISO 639-1 (``fr``) or 639-3 (``fra``) code -> the ISO 639-3 code (``fra``).

    Raises:
        TypeError: ``code`` is not a string.
        ValueError: it is not an ISO 639-1 or 639-3 code (the message names it).
    """
    from iso639 import Lang
    from iso639.exceptions import DeprecatedLanguageValue, InvalidLanguageValue

    if not isinstance(code, str):
        raise TypeError(f"a language code must be a string, got {type(code).__name__}")
    key = code.strip().lower()
    shown = code if len(code) <= 20 else code[:20] + "..."
    unknown = ValueError(
        f"unknown language code {shown!r}: expected an ISO 639-1 (e.g. 'fr') or ISO 639-3 "
        "(e.g. 'fra') code"
    )
    field = {2: "pt1", 3: "pt3"}.get(len(key))
    if field is None or not (key.isascii() and key.isalpha()):
        raise unknown
    try:
        return Lang(**{field: key}).pt3
    except InvalidLanguageValue as err:
        raise unknown from err
    except DeprecatedLanguageValue as err:  # the message says what replaced it
        raise ValueError(f"language code {shown!r} is deprecated: {err}") from err


@cache
def _feature_table(feature_set: str) -> tuple[dict[str, int], np.ndarray]:
    """(ISO 639-3 code -> row, (languages, features) float32) of one lang2vec feature set."""
    import importlib.metadata

    # Found through the installed distribution, not by importing: lang2vec also installs a script
    # bin/lang2vec.py, which shadows the package whenever bin/ is first on sys.path (any console
    # script, e.g. `hypergen generate`), and importing it fails without pkg_resources.
    try:
        data_dir = Path(importlib.metadata.distribution("lang2vec").locate_file("lang2vec/data"))
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            "the language conditioner needs the lang2vec package: pip install 'hypergen[languages]'"
        ) from err
    filename, source, prefix = FEATURE_SETS[feature_set]
    with np.load(data_dir / filename, allow_pickle=False) as db:
        columns = [i for i, f in enumerate(db["feats"]) if f.startswith(prefix)]
        [source_index] = np.flatnonzero(db["sources"] == source)
        values = db["data"][:, columns, source_index].astype(np.float32)
        rows = {str(code): i for i, code in enumerate(db["langs"])}
    return rows, values


class LanguageConditioner:
    """Language codes -> unit-norm URIEL feature vectors (see the module docstring).

    Args:
        name: lang2vec feature sets joined by ``+`` (default: the kNN syntax, phonology and
            inventory sets, 289 values).
        device: where the vectors go.
    """

    kind = "language"
    parts = ("language",)

    def __init__(self, name: str = DEFAULT_LANGUAGE_FEATURES, device: str | torch.device = "cpu"):
        sets = name.split("+")
        unknown = [s for s in sets if s not in FEATURE_SETS]
        if unknown or len(set(sets)) != len(sets):
            raise ValueError(
                f"language features must be distinct lang2vec sets from {sorted(FEATURE_SETS)} "
                f"joined by '+', got {name!r}"
            )
        tables = [_feature_table(s) for s in sets]
        common = set.intersection(*(set(rows) for rows, _ in tables))
        self.name, self.device, self.feature_sets = name, device, sets
        self._tables = tables
        self._languages = common
        self.dim = sum(values.shape[1] for _, values in tables)

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules ``encode`` runs: none (a table lookup)."""
        return []

    @property
    def languages(self) -> set[str]:
        """ISO 639-3 codes that have these features."""
        return set(self._languages)

    def normalize(self, condition: Any) -> str:
        """Canonical language: its ISO 639-3 code.

        Raises:
            TypeError: ``condition`` is not a string.
            ValueError: not an ISO 639-1/639-3 code, or a language URIEL has no features for.
        """
        code = iso639_3(condition)
        if code not in self._languages:
            raise ValueError(
                f"language {condition!r} ({code}) has no URIEL {self.name} features in lang2vec"
            )
        return code

    def encode(self, conditions: Sequence[str]) -> Tensor:
        codes = [self.normalize(c) for c in conditions]
        parts = [values[[rows[c] for c in codes]] for rows, values in self._tables]
        vectors = torch.from_numpy(np.concatenate(parts, axis=1))
        return torch.nn.functional.normalize(vectors, dim=1).to(self.device)
