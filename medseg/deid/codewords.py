"""Words of the DICOM standard's own vocabulary, as pydicom ships it: the code meanings of its concept dictionary
(SNOMED CT, DCM...) and the words of the data dictionary's attribute names and keywords.

A code string that is one of these words (PELVIS, PLANAR, MANUAL, NORMAL, RENAL, LINEAR, SPINE) is a term of the
standard even when a patient's name part sits inside it (ELVIS, LANA, MANU, NORMA, RENA, LINE, PINE): the affix rule
of the run (`engine.embeds_identity`) and of the check (`leakcheck.embedded_hits`) does not apply to it (re-probe 20
#1). A name glued to a code ('MILLERB') is no such word and is still found.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"[A-Z0-9]+")
_CAMEL = re.compile(r"[A-Z][a-z]+|[A-Z0-9]+(?![a-z])")


@functools.cache
def vocabulary() -> frozenset[str]:
    """Upper-case words of pydicom's concept dictionary code meanings and of its data dictionary's names and
    keywords (about 10,000 words; loaded once, when a code string first holds a name part)."""
    from pydicom.datadict import DicomDictionary
    from pydicom.sr._concepts_dict import concepts

    words: set[str] = set()
    for scheme in concepts.values():
        for codes in scheme.values():
            for meaning, _cids in codes.values():
                words.update(_WORD.findall(meaning.upper()))
    for entry in DicomDictionary.values():
        words.update(_WORD.findall(entry[2].upper()))
        words.update(w.upper() for w in _CAMEL.findall(entry[4]))
    return frozenset(words)


def standard_word(token: str) -> bool:
    """Whether one word of a code string (letters and digits, upper case) is a word of the standard's vocabulary."""
    return token.upper() in vocabulary()
