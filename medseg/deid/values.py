"""Reading a value from a data set without converting the element stored there: an element that is only read
(patient key, identifying words, snapshot, risk checks, names) stays raw, so the writer copies it byte for byte."""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset


def element_of(ds: Dataset, keyword: str) -> DataElement | None:
    """An element converted without converting the one stored in `ds`: a kept element read here stays raw, so
    it is written byte for byte (None when absent)."""
    tag = tag_for_keyword(keyword)
    elem = ds.get_item(tag) if tag is not None else None
    if isinstance(elem, RawDataElement):
        return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)
    return elem


def value_of(ds: Dataset, keyword: str, default: object = None) -> object:
    """`ds.get(keyword, default)` without converting the stored element (see element_of)."""
    elem = element_of(ds, keyword)
    return default if elem is None else elem.value
