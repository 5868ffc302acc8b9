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


MODALITY_CIDS = frozenset({29, 33})  # PS3.16 CID 29 Acquisition Modality, CID 33 Modality: Modality's Defined Terms


@functools.cache
def defined_terms() -> dict[int, frozenset[str]]:
    """Tag -> the values a CS attribute may hold that are terms of the standard, as pydicom ships them: Specific
    Character Set (pydicom's charset table), Modality (the DCM codes of CID 29 and 33), Photometric Interpretation
    (its enumerated values). Such a value is kept whatever the patient's words: a patient ID '100' or '192' is no
    reason to destroy 'ISO_IR 100' (re-probe 20 #5: the text was then decoded wrongly)."""
    from pydicom.charset import python_encoding
    from pydicom.pixels.common import PhotometricInterpretation
    from pydicom.sr._concepts_dict import concepts

    modalities = {code for entry in concepts["DCM"].values() for code, (_m, cids) in entry.items()
                  if MODALITY_CIDS & set(cids)}  # fmt: skip
    return {
        0x00080005: frozenset(python_encoding),
        0x00080060: frozenset(modalities),
        0x00280004: frozenset(p.value for p in PhotometricInterpretation),
    }


def defined_term(tag: int, value: str) -> bool:
    """Whether `value` is one of the standard's terms for the CS attribute `tag` (`defined_terms`)."""
    terms = defined_terms().get(tag)
    return terms is not None and value in terms


# the glued-identity rule's limits, shared by the run (`engine.embeds_identity`) and its independent check
# (`leakcheck.embedded_hits`): an ID of 5+ characters anywhere, a name part of 4+ letters leaving at most 2 others
MIN_EMBEDDED_ID = 5
MIN_EMBEDDED_NAME = 4
MAX_NAME_AFFIX = 2


@functools.cache
def structured_terms() -> frozenset[str]:
    """The enumerated values of the SR content item attributes (Value Type, Relationship Type, Graphic Type,
    Temporal Range Type: PS3.3 C.17.3 and C.18, as highdicom lists them): codes of the standard, never identity
    glued to text ('PNAME' for a patient whose name has the part NAME)."""
    from highdicom.sr import enum as sr

    enums = (sr.ValueTypeValues, sr.RelationshipTypeValues, sr.GraphicTypeValues, sr.TemporalRangeTypeValues)
    return frozenset(str(v.value) for e in enums for v in e)
