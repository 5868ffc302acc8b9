"""highdicom's tables of the DICOM standard, made fast for a CT source and its SEG (each change keeps every answer).

1. The module table. highdicom reads `module_attribute_map.json` (22.6 MB: every attribute of the 436 modules of
   the standard) on first use, to copy the Patient, Study, ... modules of the source image into the SEG: about 0.24 s
   of JSON parsing with the GIL held, in every `medseg infer` process. A CT SEG asks about 35 of those modules (1 MB):
   those of the CT Image and Segmentation IODs. `install_module_table` hands highdicom a table that holds these from
   a cached copy and loads the whole table at the first question about any other module (or about the list of all
   modules), so every answer is the one highdicom's own table gives; the copy is keyed by highdicom's version and the
   table file's size and modification time, and written atomically.
2. The multi-frame check, asked once per source image: memoised per SOP Class (`memoise_multiframe_check`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medseg.cache import cache_subdir

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PRELOADED_SOP_CLASSES = (CT_IMAGE_STORAGE, SEGMENTATION_STORAGE)

Modules = dict[str, list[dict[str, Any]]]


class ModuleTable(Mapping[str, list]):
    """highdicom's module -> attributes table: the preloaded modules first, the whole table for anything else."""

    def __init__(self, preloaded: Modules, load_all: Callable[[], Modules]) -> None:
        self._preloaded = preloaded
        self._load_all = load_all
        self._all: Modules | None = None

    def _whole(self) -> Modules:
        if self._all is None:
            self._all = self._load_all()
        return self._all

    @property
    def whole_table_loaded(self) -> bool:
        """Whether a question went beyond the preloaded modules (tests and benchmarks check it)."""
        return self._all is not None

    def __getitem__(self, key: str) -> list:
        found = self._preloaded.get(key)
        return found if found is not None else self._whole()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._preloaded or key in self._whole()

    def __iter__(self) -> Iterator[str]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())


def _source_file() -> Path:
    import highdicom

    return Path(highdicom.__file__).parent / "_standard" / "module_attribute_map.json"


def preloaded_modules(load_all: Callable[[], Modules], cache: Path) -> Modules:
    """The modules of the CT Image and Segmentation IODs, from the cache, or cut from the whole table and cached."""
    import highdicom
    from highdicom._standard_utils import get_iod_module_map, get_sop_class_iod_map

    source = _source_file().stat()
    key = f"{highdicom.__version__}|{source.st_size}|{source.st_mtime_ns}|{','.join(PRELOADED_SOP_CLASSES)}"
    path = cache / "highdicom" / f"modules-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        pass  # absent or damaged: cut it again
    whole = load_all()
    iods, sop_classes = get_iod_module_map(), get_sop_class_iod_map()
    names = sorted({m["key"] for uid in PRELOADED_SOP_CLASSES for m in iods[sop_classes[uid]]})
    modules = {name: whole[name] for name in names if name in whole}
    try:
        cache_subdir(path.parent.name, root=cache)  # owner-only: the export cache refuses a 0775 root
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(modules))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the speed-up
    return modules


def install_module_table(cache: Path) -> ModuleTable:
    """Make every highdicom module that asks for the module table get a `ModuleTable`; once per process."""
    import sys

    import highdicom._standard_utils as standard

    current = standard.get_module_attribute_map
    installed = getattr(current, "medseg_table", None)
    if installed is not None:
        return installed
    table = ModuleTable(preloaded_modules(current, cache), current)

    def get_module_attribute_map() -> ModuleTable:
        return table

    get_module_attribute_map.medseg_table = table  # type: ignore[attr-defined]
    get_module_attribute_map.__wrapped__ = current  # type: ignore[attr-defined]
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "highdicom" and getattr(module, "get_module_attribute_map", None) is current:
            module.get_module_attribute_map = get_module_attribute_map  # type: ignore[attr-defined]
    return table


def memoise_multiframe_check() -> None:
    """Make highdicom ask its IOD tables once per SOP Class instead of once per source image.

    `highdicom.utils.get_plane_positions_of_series` calls `is_multiframe_image` on every source, a walk of the IOD
    module tables costing about 3 ms each (0.9 s of a 300-slice SEG); its answer depends only on the SOP Class UID
    (`is_attribute_in_iod('NumberOfFrames', SOPClassUID)`), so it is memoised per class. Same answers for every SOP
    Class highdicom knows, same SEG (tests/test_infer_seg_fast.py). Installed once; safe to call again."""
    import highdicom.utils as hd_utils

    if getattr(hd_utils.is_multiframe_image, "medseg_memoised", False):
        return
    original = hd_utils.is_multiframe_image
    answers: dict[str, bool] = {}

    def is_multiframe_image(dataset: Any) -> bool:
        uid = str(dataset.SOPClassUID)
        if uid not in answers:
            answers[uid] = bool(original(dataset))
        return answers[uid]

    is_multiframe_image.medseg_memoised = True  # type: ignore[attr-defined]
    is_multiframe_image.__wrapped__ = original  # type: ignore[attr-defined]
    hd_utils.is_multiframe_image = is_multiframe_image
