"""On-disk cache of preprocessed cases as uncompressed ``.npy`` files, memory-mapped on read,
so that an epoch never decodes ``.nii.gz`` again.

Layout: ``<cache_dir>/<case_id>/{image.npy, label.npy, fg.npy, meta.json}``. An entry is built
in a temporary folder and renamed into place whole. ``meta.json`` is its manifest: every
source file's size and modification time, the preprocessing configuration, and the size and
BLAKE2 checksums (whole file, and first + last 64 KiB) of each ``.npy``. Before an entry is
used it is checked (sizes and the quick checksum; ``verify="full"`` reads every byte); an
entry that is missing, truncated, altered, or built from other sources or another
preprocessing configuration is rebuilt and the reason recorded in :attr:`CaseCache.rebuilt`
and logged (logger ``attnseg.data.cache``), never used as it is.
``fg.npy`` holds up to ``fg_samples`` voxel coordinates per foreground class (rows
``(class, x, y, z)``) for foreground-oversampled patch sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from attnseg.data.errors import DataError
from attnseg.data.preprocess import PreprocessConfig, preprocess_case
from attnseg.data.readers import Case, find_cases, load_case

CACHE_VERSION = 2  # 2: meta.json records the size and checksums of every array file
LOG = logging.getLogger("attnseg.data.cache")
_EDGE = 1 << 16  # bytes hashed at each end of a file by the quick check


def _digests(path: Path) -> dict[str, Any]:
    """Size, BLAKE2b of the whole file and of its first + last 64 KiB (the quick check)."""
    size = path.stat().st_size
    full, quick = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            full.update(chunk)
        fh.seek(0)
        quick.update(fh.read(_EDGE))
        fh.seek(max(size - _EDGE, 0))
        quick.update(fh.read(_EDGE))
    return {"size": size, "blake2b": full.hexdigest(), "quick": quick.hexdigest()}


def _quick_digest(path: Path, size: int) -> str:
    quick = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        quick.update(fh.read(_EDGE))
        fh.seek(max(size - _EDGE, 0))
        quick.update(fh.read(_EDGE))
    return quick.hexdigest()


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
        self.rebuilt: dict[str, str] = {}  # case id -> why its existing entry was rebuilt

    def __len__(self) -> int:
        return len(self.cases)

    def entry_dir(self, i: int) -> Path:
        return self.cache_dir / self.cases[i].case_id

    def _key(self, i: int) -> dict[str, Any]:
        c = self.cases[i]
        return {"version": CACHE_VERSION, "sources": _source_stamp(c.files), "config": self.config.to_json(),
                "label_convention": c.label_convention, "fg_samples": self.fg_samples}

    def problem(self, i: int, verify: str = "quick") -> str | None:
        """Why entry ``i`` cannot be used as it is (None: it can).

        ``verify``: ``"quick"`` checks sizes and the first/last 64 KiB of each array file,
        ``"full"`` the checksum of every byte.
        """
        d = self.entry_dir(i)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            return "missing metadata (meta.json)" if d.exists() else "not built yet"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return f"unreadable meta.json ({exc})"
        old, key = meta.get("key") or {}, self._key(i)
        if old.get("version") != key["version"]:
            return f"cache format version {old.get('version')} (this attnseg writes {key['version']})"
        if old.get("config") != key["config"]:
            return "built with another preprocessing configuration"
        if old != key:
            return "its source files changed"
        for name, want in (meta.get("files") or {}).items():
            f = d / name
            if not f.is_file():
                return f"{name} is missing"
            size = f.stat().st_size
            if size != want["size"]:
                return f"{name} is truncated or altered ({size} bytes, manifest says {want['size']})"
            if verify == "full":
                if _digests(f)["blake2b"] != want["blake2b"]:
                    return f"{name} does not match its checksum"
            elif _quick_digest(f, size) != want["quick"]:
                return f"{name} does not match its checksum"
        if not meta.get("files"):
            return "meta.json lists no array files"
        return None

    def is_fresh(self, i: int) -> bool:
        """Whether entry ``i`` exists, is intact and matches its sources and the configuration."""
        return self.problem(i) is None

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
        meta["files"] = {f.name: _digests(f) for f in sorted(tmp.glob("*.npy"))}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)  # the whole entry appears at once
        self._open.pop(i, None)

    def prepare(self, workers: int = 1, progress: bool = False, verify: str = "quick") -> list[int]:
        """Build every missing, stale or damaged entry (``workers`` processes); returns the rebuilt
        indices. Entries that existed but could not be used are listed in :attr:`rebuilt`
        (``{case_id: reason}``) and logged as warnings."""
        reasons = {i: self.problem(i, verify) for i in range(len(self))}
        todo = [i for i, r in reasons.items() if r is not None]
        for i in todo:
            if reasons[i] != "not built yet":
                cid = self.cases[i].case_id
                self.rebuilt[cid] = str(reasons[i])
                LOG.warning("cache entry %s: %s; rebuilding it", self.entry_dir(i), reasons[i])
        if not todo:
            return []
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers) as ex:
                list(ex.map(self.build, todo))
        else:
            it = todo
            if progress:
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
        why = self.problem(i)
        if why is not None:
            if why != "not built yet":
                self.rebuilt[self.cases[i].case_id] = why
                LOG.warning("cache entry %s: %s; rebuilding it", self.entry_dir(i), why)
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
