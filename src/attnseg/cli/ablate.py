"""``attnseg ablate``: backbone × attention table under one budget."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="train every backbone × attention combination and tabulate",
                       description="Train every backbone × attention combination under the same budget and "
                                   "data split, evaluate, and write a Markdown model-zoo table. Finished "
                                   "cells are skipped (resumable).")
    p.add_argument("--config", required=True, help="training config (YAML) shared by every cell")
    p.add_argument("--backbones", required=True,
                   help="comma-separated model names, e.g. unet,vnet; 2-D rows on slices of the same volumes: "
                        "unet-2d, unet-2.5d (k=2 neighbouring slices), deeplabv3plus-2d")
    p.add_argument("--attention", required=True, help="comma-separated attention names; 'none' = without")
    p.add_argument("--budget-minutes", type=float, default=None, help="training time per cell")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per cell: each cell trained N times on the same split (mean ± sd over seeds)")
    p.add_argument("--test-data", default=None, metavar="DIR",
                   help="held-out BraTS-layout cases every cell's best checkpoint segments; adds per-case "
                        "bootstrap CIs, paired Wilcoxon tests against the backbone without attention (Holm) "
                        "and a forest plot to the table")
    p.add_argument("--out", default="ablation", help="output folder")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: write the page from the finished cells in OUT/cells (lists the missing ones)")
    p.add_argument("--devices", default="", help="comma-separated devices to run cells on in parallel, "
                                                 "e.g. cuda:0,cuda:1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every cell (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnseg.attention import get_attention
    from attnseg.experiments.ablate import backbone_model, run_ablation
    from attnseg.models import get_model_entry
    from attnseg.train.config import apply_overrides, load_yaml

    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    attentions = [a.strip() for a in args.attention.split(",") if a.strip()]
    cfg = apply_overrides(load_yaml(args.config), args.overrides)
    for b in backbones:
        get_model_entry(backbone_model(cfg, b))  # unknown names fail before any training
    for a in attentions:
        if a != "none":
            get_attention(a)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    path = run_ablation(cfg, backbones, attentions, args.out, budget_minutes=args.budget_minutes,
                        seeds=args.seeds, devices=devices, command="attnseg " + shlex.join(sys.argv[1:]),
                        test_dir=args.test_data, table_only=args.table_only)
    print(path.read_text())
    print(f"table: {path}")
    return 0
