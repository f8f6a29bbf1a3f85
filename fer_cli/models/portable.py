"""A model's provenance without the machine that built it: the paths it records, given as the places they name.

``fer train`` records where its data, validation and starting model were, as the run saw them (absolute where
``fer ensemble`` needs to recognise a folder later from anywhere). A model that leaves that machine (the shipped
weights, a model handed to a colleague) should not carry ``/home/someone/...``: ``portable`` rewrites each path
under a given place as that place's name (``/work/shared/data/fer2013`` -> ``../shared/data/fer2013``), in every
string of the provenance, the command lines included; ``absolute_paths`` lists what is left, so that a release can
refuse it. The content hashes of the validation images stay: they recognise the data wherever it is.
"""

from __future__ import annotations

import os
import re

ABSOLUTE = re.compile(r"(?<![\w.~/-])/(?:[\w.+@-]+/?)+")  # a POSIX absolute path inside a string


def portable(value, places: dict[str, str]):
    """``value`` (a provenance: dicts, lists, strings) with every path under a key of ``places`` written under its
    value instead; the longest place first, so that a folder inside another takes its own name."""
    order = sorted(((os.path.normpath(old), new) for old, new in places.items()), key=lambda p: -len(p[0]))

    def rewrite(text: str) -> str:
        for old, new in order:
            text = re.sub(rf"{re.escape(old)}(?=/|\b|$)", lambda _: new, text)
        return text

    return _mapped(value, rewrite)


def absolute_paths(value) -> list[str]:
    """Every absolute path left in ``value``'s strings (dict keys are names, not paths)."""
    found: list[str] = []
    _mapped(value, lambda text: found.extend(ABSOLUTE.findall(text)) or text)
    return found


def _mapped(value, function):
    if isinstance(value, str):
        return function(value)
    if isinstance(value, dict):
        return {key: _mapped(item, function) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mapped(item, function) for item in value)
    return value
