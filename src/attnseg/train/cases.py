"""Which cases a run trains and validates on: the preprocessed case cache of ``data.root`` (and
``data.val_root``), the train/validation split, and this rank's share of the validation cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from attnseg.data.cache import CaseCache
from attnseg.data.readers import find_cases
from attnseg.train.data import Volume, cached_volume, preprocess_config, split_cases
from attnseg.train.distributed import DistInfo

LOG = logging.getLogger("attnseg.train")


def load_cases(cfg: dict[str, Any], dd: DistInfo) -> tuple[CaseCache, list[int], list[Volume], int]:
    """Training cache and the indices of the training cases in it, this rank's validation
    volumes, and the number of validation cases over all ranks.

    Rank 0 builds (or checks) the cache, the other ranks wait for it. Fills ``task.label_names``
    from ``dataset.json`` when the config has none (``classes`` tasks).
    """
    d, task = cfg["data"], cfg["task"]
    if not d["root"]:
        raise ValueError("data.root is not set (use --dataroot or --set data.root=DIR)")
    kw = {"channels": list(task["channel_names"])} if task.get("channel_names") else {}
    pcfg = preprocess_config(d["preprocess"])

    def cache_for(root: str) -> CaseCache:
        tag = hashlib.sha1(json.dumps(pcfg.to_json(), sort_keys=True).encode()).hexdigest()[:8]
        where = Path(d["cache_dir"]) if d["cache_dir"] else Path(cfg["output_dir"]) / ".cache"
        cache = CaseCache(find_cases(root, layout=d["layout"], **kw), where / f"{Path(root).resolve().name}-{tag}",
                          pcfg)
        if dd.main:
            cache.prepare(workers=max(int(d["workers"]), 1))
            for cid, why in cache.rebuilt.items():  # damaged or stale entries are never trained on
                LOG.warning("cache entry of %s rebuilt: %s", cid, why)
        if dd.world > 1:
            dist.barrier()  # the other ranks open what rank 0 built
        return cache

    cache = cache_for(d["root"])
    if task["kind"] == "classes":  # a class beyond the outputs would fail deep inside the loss
        k = int(task["num_classes"])
        for i in range(len(cache)):
            top = cache[i].fg_classes()
            if len(top) and int(top.max()) >= k:
                raise ValueError(f"{cache.cases[i].label_path}: label value {int(top.max())} but the model has "
                                 f"{k} output classes (task.num_classes); give --out_channels "
                                 f"{int(top.max()) + 1} or train without --config to plan from the data")
    names = cache.cases[0].extra.get("label_names") if cache.cases else None
    if not task.get("label_names") and names and task["kind"] == "classes":
        task["label_names"] = {int(k): str(v) for k, v in names.items()}  # dataset.json's names
    ids = [c.case_id for c in cache.cases]
    if d["train_cases"] is not None:
        train_ids, val_ids = list(d["train_cases"]), list(d["val_cases"] or [])
    elif d["val_root"]:
        train_ids, val_ids = ids, []
    else:
        train_ids, val_ids = split_cases(ids, float(d["val_fraction"]), int(d["split_seed"]))
        if d["use_all_for_training"]:
            train_ids = ids
    train_idx = [cache.index_of(i) for i in train_ids]
    val_cache = cache
    if d["val_root"]:
        val_cache = cache_for(d["val_root"])
        val_ids = val_ids or [c.case_id for c in val_cache.cases]
    shard = sorted(val_ids)[dd.rank::dd.world]
    return cache, train_idx, [cached_volume(val_cache[val_cache.index_of(i)]) for i in shard], len(val_ids)
