"""``attnseg plan``: fingerprint a dataset and write the training config derived from it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="fingerprint a dataset and derive a training config (as nnU-Net plans)",
        description="Read every training case of DATA once (shapes, spacings, foreground intensities, labels, "
                    "lesion sizes) and derive a training config the way nnU-Net v2 plans: target spacing, patch "
                    "size and batch for a memory budget, normalisation per channel, network depth, task and label "
                    "names. Prints the reasoning as a table; --out writes the config (usable with "
                    "`attnseg train --config`). See docs/data.md.")
    p.add_argument("data", help="dataset folder (nnU-Net, MSD, BraTS, images/+masks/, manifest)")
    p.add_argument("--out", default=None, help="write the config here (YAML); never overwrites without --force")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--layout", default="auto", help="dataset layout (default: detected)")
    p.add_argument("--memory-gb", dest="memory_gb", type=float, default=None,
                   help="memory budget of one training process (default: the GPU's memory, else a quarter of "
                        "the RAM, at most 8)")
    p.add_argument("--model", default="unet", help="model to plan for (default: unet)")
    p.add_argument("--device", default="auto", help="plan for this device: auto, cpu, cuda")
    p.add_argument("--precision", default=None, choices=["fp32", "mixed"],
                   help="training precision the budget assumes (default: mixed on CUDA, fp32 on CPU)")
    p.set_defaults(func=run)


def print_plan(plan: dict) -> None:
    """The reasoning table of a plan (setting, value, why)."""
    from attnseg.report.table import print_table

    fp = plan["fingerprint"]
    rows = [{"setting": s, "value": v, "why": w} for s, v, w in plan["reasons"]]
    print_table(rows, ["setting", "value", "why"],
                title=f"attnseg plan: {fp['root']} ({fp['layout']}, {fp['n_cases']} cases, "
                      f"channels {', '.join(f'{c} ({m})' for c, m in zip(fp['channels'], fp['modalities']))})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnseg.data.plan import plan_dataset
    from attnseg.train.config import dump_yaml

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"{out}: exists; pass --force to overwrite it")
    plan = plan_dataset(args.data, args.layout, args.memory_gb, model=args.model, device=args.device,
                        precision=args.precision)
    print_plan(plan)
    if out is not None:
        from attnseg.data.io import write_text_atomic

        write_text_atomic(out, "# written by `attnseg plan`; train with: attnseg train --config "
                               f"{out}\n" + dump_yaml(plan["config"]))
        print(f"wrote {out}")
    return 0
