"""A "did you mean ...?" for a mistyped name: the closest known names by edit similarity."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` names of ``known`` close to ``word`` (best first). Nested names (``a/b/c``,
    ``a.b``) are also matched by their last part, so ``o2o/wsrl/hoper-medium`` finds
    ``o2o/wsrl/hopper-medium-local`` and ``hoper`` finds ``hopper``."""
    known = sorted(set(known))
    scored = []
    for name in known:
        tail = name.replace(".", "/").rsplit("/", 1)[-1]
        word_tail = word.replace(".", "/").rsplit("/", 1)[-1]
        score = max(difflib.SequenceMatcher(None, word, name).ratio(),
                    difflib.SequenceMatcher(None, word_tail, tail).ratio() - (0.0 if _same_prefix(word, name) else 0.2))
        if score >= 0.6:
            scored.append((-score, name))
    return [name for _, name in sorted(scored)[:n]]


def _same_prefix(word: str, name: str) -> bool:
    """Whether ``word`` and ``name`` agree on everything before their last part."""
    return word.replace(".", "/").rsplit("/", 1)[:-1] == name.replace(".", "/").rsplit("/", 1)[:-1]


def did_you_mean(word: str, known: Iterable[str], prefix: str = "") -> str:
    """``" (did you mean 'x'?)"``, ``" (did you mean 'x', 'y' or 'z'?)"``, or ``""`` when nothing is
    close; each shown name is ``prefix + name`` (a section's key shown with its section)."""
    quoted = [f"'{prefix}{m}'" for m in close_matches(word, known)]
    if not quoted:
        return ""
    return f" (did you mean {quoted[0] if len(quoted) == 1 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]}?)"
