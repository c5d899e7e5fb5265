"""The caches of preprocessed cases: in memory, reporting every unreadable case; on disk, safe
against kills, concurrent runs, changed files and files planted or copied into the cache."""

from __future__ import annotations

import codecs
import logging
import os
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.utils.enums import MetaKeys, SpaceKeys, TraceKeys

from resnext3d.data.errors import DataError, raise_for_problems
from resnext3d.data.transforms import data_errors_unwrapped
from resnext3d.files import PARTIAL_SUFFIX, atomic_file

log = logging.getLogger(__name__)

# A partial file this old belongs to a killed run, not to one still writing it.
STALE_PARTIAL_SECONDS = 3600

# The globals an entry's pickle names: torch's tensor rebuilding and bytes (as protocol 2 pickles
# them), MetaTensors, and in their metadata numpy arrays (NIfTI header fields, affines) and MONAI's
# key enums. Calling none of them runs other code. An entry is unpickled with these and nothing
# else (torch resolves storages itself), so a pickle planted in a cache folder is refused, not
# run. torch's own weights_only unpickler refuses as much but runs in Python: it loaded a
# segmentation entry's metadata (about 5000 opcodes) 15 times slower.
_ENTRY_GLOBALS = {
    (value.__module__, value.__qualname__): value
    for value in [
        torch._utils._rebuild_tensor_v2,
        torch._tensor._rebuild_from_type_v2,
        OrderedDict,
        codecs.encode,
        MetaTensor,
        MetaKeys,
        SpaceKeys,
        TraceKeys,
        np.ndarray,
        np.dtype,
        np.ndarray.__reduce__(np.zeros(0))[0],  # _reconstruct, in numpy.core or numpy._core
    ]
}


class _EntryUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ENTRY_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


# The pickle module torch.load unpickles an entry with: its Unpickler for torch's zip format,
# load for the legacy format's headers.
_ENTRY_PICKLE = SimpleNamespace(
    __name__="entry_pickle",
    Unpickler=_EntryUnpickler,
    load=lambda file, **kwargs: _EntryUnpickler(file, **kwargs).load(),
)


class MemoryCache(CacheDataset):
    """MONAI's CacheDataset, but filling the cache reports every case that cannot be read, in
    one DataError, after every thread has finished.

    MONAI's thread pool is terminated at the first error while other threads are still inside
    transforms, and the interpreter then aborts on exit (exit code 134, no message).
    """

    def _fill_cache(self, indices=None) -> list:
        indices = range(self.cache_num) if indices is None else indices
        with ThreadPoolExecutor(self.num_workers) as pool:  # waits for every thread
            futures = [pool.submit(self._load_cache_item, index) for index in indices]
        items, problems = [], []
        for future in futures:
            try:
                with data_errors_unwrapped():
                    items.append(future.result())
            except DataError as error:
                problems.append(str(error))
        raise_for_problems(problems, "cases that cannot be loaded")
        return items


class DiskCacheDataset(PersistentDataset):
    """MONAI's PersistentDataset made safe to share and to interrupt.

    - The key of a case hashes its item, the size and modification time of each input file and
      the preprocessing (the pickled deterministic transforms), so a file replaced after caching
      is preprocessed again instead of served stale, and other preprocessing of the same files
      (the predict pipeline, another voxel size) is another entry.
    - A cache file is written to a temporary file in the cache folder, then renamed into place
      (atomic on POSIX), so a run killed while writing leaves no half file under a cache name,
      and runs filling one cache at the same time never read each other's partial files. MONAI's
      own temporary folder may lie on another file system, where its move is a copy.
    - A cache file that cannot be loaded (damaged, or from other library versions) is
      preprocessed and written again.
    - A case is cached exactly as it is served (MONAI converts it to plain tensors first, which
      drops the affines): a case just computed and one loaded from the cache collate together,
      and metrics in mm (HD95) match those of the memory cache.

    - Entries are unpickled with the globals an entry needs (`_ENTRY_GLOBALS`) and no others: a
      file planted in the cache folder runs no code, and is preprocessed and written again.
    - Each entry records what it holds (its key, case id and the size and modification time of
      its files): an entry under another's name (copied, renamed) is preprocessed again instead
      of served as the wrong case.
    """

    def __init__(self, data: Sequence[dict], transform: Callable, cache_dir: str | Path) -> None:
        super().__init__(
            data,
            transform,
            cache_dir=cache_dir,
            hash_func=file_state_hashing,
            # The key also hashes the pickled transforms up to the first random one: without it,
            # the predict pipeline (no label) served the validation pipeline's cached items.
            hash_transform=pickle_hashing,
        )
        _remove_stale_partials(self.cache_dir)

    def _cachecheck(self, item_transformed: dict) -> dict:
        key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        cache_file = self.cache_dir / f"{key}.pt"
        identity = {
            "key": key,
            "case_id": item_transformed.get("case_id"),
            "files": _file_states(item_transformed),
        }
        entry = _load(cache_file) if cache_file.is_file() else None
        if isinstance(entry, dict) and entry.get("identity") == identity:
            return entry["item"]
        if entry is not None:
            log.warning(
                "%s: not the entry of case %s with these files and this preprocessing; "
                "preprocessing again",
                cache_file,
                identity["case_id"],
            )
        item = self._pre_transform(deepcopy(item_transformed))  # the hashed item stays intact
        _write_atomically({"identity": identity, "item": item}, cache_file)
        return item


def file_state_hashing(item: Mapping) -> bytes:
    """MONAI's pickle hash of `item` and of the size and modification time of every file it
    names, so that the key changes when a file does."""
    return pickle_hashing({"item": item, "files": _file_states(item)})


def _file_states(value: object) -> list[tuple[str, int, int]]:
    """The path, size and modification time (ns) of every existing file `value` names."""
    return [(path, stat.st_size, stat.st_mtime_ns) for path, stat in _file_stats(value)]


def _file_stats(value: object) -> Iterator[tuple[str, os.stat_result]]:
    if isinstance(value, Mapping):
        for entry in value.values():
            yield from _file_stats(entry)
    elif isinstance(value, (list, tuple)):
        for entry in value:
            yield from _file_stats(entry)
    elif isinstance(value, (str, Path)) and os.path.isfile(value):
        yield str(value), os.stat(value)


def _load(cache_file: Path) -> object | None:
    """The entry in `cache_file`, or None (with a warning) where it cannot be loaded or holds
    objects an entry never holds."""
    try:
        # Not torch's weights_only unpickler but a restricted one: see _ENTRY_GLOBALS.
        return torch.load(cache_file, weights_only=False, pickle_module=_ENTRY_PICKLE)
    except Exception as error:  # truncated, refused, or written by other library versions
        log.warning("%s: unreadable cache file (%s); preprocessing again", cache_file, error)
    return None


def _write_atomically(item: object, cache_file: Path) -> None:
    """Write `cache_file` whole or not at all; a run that cannot write (full disk, read-only
    folder) goes on uncached."""
    try:
        with atomic_file(cache_file) as file:
            torch.save(item, file)
    except OSError as error:
        log.warning("%s: cannot write the cache file (%s); going on without it", cache_file, error)


def _remove_stale_partials(cache_dir: Path) -> None:
    """Delete the temporary files of runs killed while writing (recent ones may be being
    written by a run in progress)."""
    now = time.time()
    for partial in cache_dir.glob(f".*{PARTIAL_SUFFIX}"):
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
        except FileNotFoundError:  # another run removed it first
            pass
