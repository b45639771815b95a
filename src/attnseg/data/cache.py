"""On-disk cache of preprocessed cases as uncompressed ``.npy`` files, memory-mapped on read,
so that an epoch never decodes ``.nii.gz`` again.

Layout: ``<cache_dir>/<case_id>/{image.npy, label.npy, fg.npy, meta.json}``. ``meta.json`` is
written last and records every source file's size and modification time plus the
preprocessing configuration; an entry whose sources or configuration changed is rebuilt.
``fg.npy`` holds up to ``fg_samples`` voxel coordinates per foreground class (rows
``(class, x, y, z)``) for foreground-oversampled patch sampling.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.errors import DataError
from attnseg.data.preprocess import PreprocessConfig, preprocess_case
from attnseg.data.readers import Case, load_case

CACHE_VERSION = 1


@dataclass
class CachedCase:
    """A cached case: memory-mapped ``image`` (C, *S) float32 and ``label`` (*S) uint8 (or None)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    fg: np.ndarray  # (N, 1 + ndim) int32 rows (class, *coords)
    meta: dict[str, Any]

    def fg_classes(self) -> np.ndarray:
        return np.unique(self.fg[:, 0]) if len(self.fg) else np.zeros(0, dtype=np.int32)


def _source_stamp(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError as exc:
            raise DataError(f"{p}: file not found") from exc
        out.append({"path": str(Path(p).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def foreground_samples(label: np.ndarray | None, max_per_class: int, seed: int = 0) -> np.ndarray:
    """Up to ``max_per_class`` random voxel coordinates of each non-zero class: (N, 1 + ndim) int32."""
    if label is None:
        return np.zeros((0, 4), dtype=np.int32)
    rng = np.random.default_rng(seed)
    flat = label.ravel()
    nz = np.flatnonzero(flat)
    rows = []
    if nz.size:
        cls = flat[nz]
        for k in np.unique(cls):
            idx = nz[cls == k]
            if idx.size > max_per_class:
                idx = rng.choice(idx, max_per_class, replace=False)
            coords = np.stack(np.unravel_index(np.sort(idx), label.shape), axis=1)
            rows.append(np.concatenate([np.full((len(coords), 1), k), coords], axis=1))
    if not rows:
        return np.zeros((0, 1 + label.ndim), dtype=np.int32)
    return np.concatenate(rows).astype(np.int32)


class CaseCache:
    """Preprocessed, memory-mapped cases.

    >>> cache = CaseCache(find_cases("data/BraTS"), "cache/brats", PreprocessConfig())
    >>> cache.prepare()            # builds missing or stale entries
    >>> c = cache[0]               # CachedCase with np.memmap arrays

    Args:
        cases: the :class:`~attnseg.data.readers.Case` list (order = index order), or a dataset
            folder (then ``find_cases(folder, **find_kw)``).
        cache_dir: where the entries live (created).
        config: preprocessing configuration (part of the cache key).
        fg_samples: stored foreground coordinates per class.
    """

    def __init__(self, cases: Sequence[Case] | str | os.PathLike, cache_dir: str | os.PathLike,
                 config: PreprocessConfig | None = None, fg_samples: int = 20000, **find_kw: Any):
        if isinstance(cases, (str, os.PathLike)):  # a dataset folder: find its cases (layout auto-detected)
            from attnseg.data.readers import find_cases

            cases = find_cases(cases, **find_kw)
        if not cases:
            raise DataError(f"{cache_dir}: empty dataset (no cases given to the cache)")
        ids = [c.case_id for c in cases]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"{cases[ids.index(dup[0])].image_paths[0]}: duplicate case id {dup[0]!r}")
        self.cases = list(cases)
        self.cache_dir = Path(cache_dir)
        self.config = config or PreprocessConfig()
        self.fg_samples = int(fg_samples)
        self._open: dict[int, CachedCase] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def entry_dir(self, i: int) -> Path:
        return self.cache_dir / self.cases[i].case_id

    def _key(self, i: int) -> dict[str, Any]:
        c = self.cases[i]
        return {"version": CACHE_VERSION, "sources": _source_stamp(c.files), "config": self.config.to_json(),
                "label_convention": c.label_convention, "fg_samples": self.fg_samples}

    def is_fresh(self, i: int) -> bool:
        """Whether entry ``i`` exists and matches its sources and the configuration."""
        meta_path = self.entry_dir(i) / "meta.json"
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return meta.get("key") == self._key(i)

    def build(self, i: int) -> None:
        """(Re)build entry ``i`` from the source files."""
        c = self.cases[i]
        d = self.entry_dir(i)
        key = self._key(i)
        data = load_case(c)
        out = preprocess_case(data, self.config, c.label_convention)
        tmp = d.with_name(f".tmp_{d.name}_{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        np.save(tmp / "image.npy", np.ascontiguousarray(out["image"], dtype=np.float32))
        if out["label"] is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(out["label"]))
        np.save(tmp / "fg.npy", foreground_samples(out["label"], self.fg_samples, seed=i))
        meta = dict(out["meta"])
        meta["key"] = key
        meta["channels"] = c.channels
        meta["has_label"] = out["label"] is not None
        (tmp / "meta.json").write_text(json.dumps(meta))
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)  # the whole entry appears at once
        self._open.pop(i, None)

    def prepare(self, workers: int = 1, progress: bool = False) -> list[int]:
        """Build every missing or stale entry (``workers`` processes); returns the rebuilt indices."""
        todo = [i for i in range(len(self)) if not self.is_fresh(i)]
        if not todo:
            return []
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if workers > 1 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as ex:
                list(ex.map(self.build, todo))
        else:
            it = todo
            if progress:
                from tqdm import tqdm

                it = tqdm(todo, desc="caching cases")
            for i in it:
                self.build(i)
        return todo

    def index_of(self, case_id: str) -> int:
        for i, c in enumerate(self.cases):
            if c.case_id == case_id:
                return i
        raise KeyError(f"case {case_id!r} not in cache {self.cache_dir}")

    def __getitem__(self, i: int | str) -> CachedCase:
        if isinstance(i, str):
            i = self.index_of(i)
        if i in self._open:
            return self._open[i]
        if not self.is_fresh(i):
            self.build(i)
        d = self.entry_dir(i)
        meta = json.loads((d / "meta.json").read_text())
        # copy-on-write maps: writable views (torch can share them without copying), the file is never modified
        image = np.load(d / "image.npy", mmap_mode="c")
        label = np.load(d / "label.npy", mmap_mode="c") if meta.get("has_label") else None
        fg = np.load(d / "fg.npy")
        cc = CachedCase(self.cases[i].case_id, image, label, fg, meta)
        self._open[i] = cc
        return cc

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in DataLoader workers
        s = dict(self.__dict__)
        s["_open"] = {}
        return s
