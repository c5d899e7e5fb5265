"""The caches of preprocessed cases: in memory, reporting every unreadable case; on disk, safe
against kills, concurrent runs and changed files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path

import torch
from monai.data import CacheDataset, PersistentDataset
from monai.data.utils import pickle_hashing

from resnext3d.data.errors import DataError, raise_for_problems
from resnext3d.data.transforms import data_errors_unwrapped
from resnext3d.files import PARTIAL_SUFFIX, atomic_file

log = logging.getLogger(__name__)

# A partial file this old belongs to a killed run, not to one still writing it.
STALE_PARTIAL_SECONDS = 3600


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

    The cache folder holds pickles that are loaded with ``weights_only=False`` (MetaTensors
    carry their metadata): use only a cache folder this project wrote.
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
            weights_only=False,
        )
        _remove_stale_partials(self.cache_dir)

    def _cachecheck(self, item_transformed: dict) -> dict:
        key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        cache_file = self.cache_dir / f"{key}.pt"
        if cache_file.is_file():
            try:
                return torch.load(cache_file, weights_only=False)
            except Exception as error:  # truncated, or pickled by other library versions
                log.warning(
                    "%s: unreadable cache file (%s); preprocessing again", cache_file, error
                )
        item = self._pre_transform(deepcopy(item_transformed))  # the hashed item stays intact
        _write_atomically(item, cache_file)
        return item


def file_state_hashing(item: Mapping) -> bytes:
    """MONAI's pickle hash of `item` and of the size and modification time of every file it
    names, so that the key changes when a file does."""
    states = [(path, stat.st_size, stat.st_mtime_ns) for path, stat in _file_stats(item)]
    return pickle_hashing({"item": item, "files": states})


def _file_stats(value: object) -> Iterator[tuple[str, os.stat_result]]:
    if isinstance(value, Mapping):
        for entry in value.values():
            yield from _file_stats(entry)
    elif isinstance(value, (list, tuple)):
        for entry in value:
            yield from _file_stats(entry)
    elif isinstance(value, (str, Path)) and os.path.isfile(value):
        yield str(value), os.stat(value)


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
