"""Private attributes under the Retain Safe Private option: an allowlist plus what the file itself declares.

A private element survives only when its (creator, element) pair is on the package allowlist or the file's
Private Data Element Characteristics Sequence (0008,0300) declares it non-identifying; everything else is removed.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag


@functools.cache
def allowlist() -> frozenset[tuple[str, int, int]]:
    """(creator, group, element byte) triples from safe_private.json."""
    text = resources.files("medseg.deid").joinpath("data", "safe_private.json").read_text(encoding="utf-8")
    return frozenset((e["creator"], int(e["group"], 16), int(e["element"], 16)) for e in json.loads(text)["elements"])


def declared_safe(ds: Dataset) -> frozenset[tuple[str, int, int]]:
    """(creator, group, element byte) pairs that (0008,0300) marks non-identifying in this dataset."""
    found: set[tuple[str, int, int]] = set()
    for item in ds.get("PrivateDataElementCharacteristicsSequence", None) or []:
        group, creator = item.get("PrivateGroupReference"), item.get("PrivateCreatorReference")
        status = str(item.get("BlockIdentifyingInformationStatus", "")).upper()
        if group is None or not creator:
            continue
        if status == "SAFE":
            found.update((str(creator), int(group), e) for e in range(256))
        elif status == "MIXED":
            found.update(
                (str(creator), int(group), int(e) & 0xFF) for e in item.get("NonidentifyingPrivateElements", []) or []
            )
    return frozenset(found)


def creator_of(ds: Dataset, tag: BaseTag) -> str | None:
    """The private creator string reserving the block of `tag`, or None when there is none."""
    creator_tag = (tag.group << 16) | (tag.element >> 8)
    elem = ds.get(creator_tag)
    return None if elem is None else str(elem.value).strip()


def keep_private(ds: Dataset, tag: BaseTag, extra: frozenset[tuple[str, int, int]]) -> bool:
    """True when the private data element `tag` is safe to keep (creators are decided by their elements)."""
    creator = creator_of(ds, tag)
    if creator is None:
        return False
    key = (creator, tag.group, tag.element & 0xFF)
    return key in allowlist() or key in extra
