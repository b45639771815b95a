"""``attnseg train``: train a model from a YAML config, with overrides and the reference tools' flags.

Precedence (lowest first): built-in defaults → ``--config`` file (and its ``base:`` chain), or,
without a config, the plan ``attnseg plan`` derives from ``--data`` → explicit flags / reference
aliases → ``--set key.path=value`` items (mappings merge). See docs/training.md and docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

# AMIS --dataset_mode values → (data.layout, task.kind)
DATASET_MODES = {
    "singlebratstumor18": ("brats", "brats-regions"),
    "brats": ("brats", "brats-regions"),
    "malc": ("malc", "classes"),
    "hvsmr": ("hvsmr", "classes"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a segmentation model (YAML config + overrides; torchrun for DDP)",
        description="Train a model. Config keys can be overridden with --set key.path=value or the "
                    "explicit flags below; the flags of the PANet and AttentionBased-MIS reference "
                    "scripts are accepted as aliases. Multi-GPU / multi-node: "
                    "torchrun --nproc_per_node N -m attnseg train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.optimizer.lr=3e-4 (repeatable)")
    g = p.add_argument_group("common settings")
    g.add_argument("--name", help="run name (folder under the output dir) [AMIS --name]")
    g.add_argument("--output-dir", "--checkpoints_dir", dest="output_dir",
                   help="parent folder of run folders [AMIS --checkpoints_dir]")
    g.add_argument("--dataroot", "--data", dest="dataroot", help="dataset folder (data.root)")
    g.add_argument("--layout", "--dataset_mode", dest="layout",
                   help="dataset layout: auto, brats, nnunet, malc, hvsmr, folder; the AMIS values "
                        "SingleBratsTumor18, MALC, HVSMR are accepted [AMIS --dataset_mode]")
    g.add_argument("--model", help="registered model name (model.name), e.g. panet, unet3d")
    g.add_argument("--attention", help="attention module of the model (model.kwargs.attention), e.g. pam-adaptive")
    g.add_argument("--memory-gb", dest="memory_gb", type=float,
                   help="memory budget of the plan made from --data when no --config is given")
    g.add_argument("--no-plan", action="store_true",
                   help="without --config: start from the built-in defaults instead of planning from --data")
    g.add_argument("--in_channels", "--in-channels", dest="in_channels", type=int,
                   help="input channels (task.in_channels and the model's input width)")
    g.add_argument("--out_channels", "--out-channels", "--num-classes", dest="out_channels", type=int,
                   help="output channels (task.num_classes and the model's output width)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--iterations", type=int, help="iterations per epoch")
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, help="patches per process")
    g.add_argument("--patch-size", dest="patch_size", type=int, nargs="+",
                   help="training patch size; two values train a 2-D model on slices of the volumes")
    g.add_argument("--slice-axis", dest="slice_axis", choices=["axial", "coronal", "sagittal", "all"],
                   help="train a 2-D model on slices along this axis (all: a random axis per sample)")
    g.add_argument("--context", type=int,
                   help="2.5-D: feed slices z-k..z+k of every modality as input channels (k = CONTEXT)")
    g.add_argument("--lr", "--init_learningrate", dest="lr", type=float, help="base learning rate")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "mixed"],
                   help="auto (default): fp32 on CPU; CUDA: bf16 where native, else fp16 + GradScaler")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N (under torchrun: auto/cuda, local rank r -> cuda:r)")
    g.add_argument("--workers", "--num_threads", dest="workers", type=int, help="data loader workers")
    g.add_argument("--val-interval", dest="val_interval", type=int, help="validate every N epochs")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    r = p.add_argument_group("reference aliases (PANet train.py / AMIS demo_train.py)")
    r.add_argument("--mixed", action="store_true",
                   help="mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    r.add_argument("--ds", action="store_true", help="deep supervision on (loss.deep_supervision.enabled)")
    r.add_argument("--trainset", action="store_true",
                   help="train on every case (data.use_all_for_training); validation still runs on the split")
    r.add_argument("--patch_test", action="store_true",
                   help="accepted for compatibility: validation always uses the sliding-window inferer")
    r.add_argument("-c", "--checkpoint", "--resume", dest="resume", nargs="?", const="last", default=None,
                   metavar="CKPT",
                   help="resume exactly from a checkpoint (or run folder); without a value: "
                        "<run>/checkpoints/last.pt. Without --config the checkpoint's config is used")
    r.add_argument("--gpu_ids", "--gpu-ids",
                   help="GPUs to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES; several ids start one "
                        "process per GPU through torchrun); -1 = CPU")
    p.set_defaults(func=run)


def _model_width_keys(model_name: str) -> tuple[str | None, str | None]:
    """Names of the input/output channel kwargs of a registered model: its ``channel_args`` tag
    (``("in_channels", "out_channels")`` unless the model declares others). A name that is not
    registered (yet: ``model.imports`` load it later) gets ``in_channels`` only."""
    from attnseg.models import get_model_entry

    try:
        entry = get_model_entry(model_name)
    except KeyError:
        return "in_channels", None
    in_key, out_key = entry.tags["channel_args"]
    return in_key, out_key


def build_config(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The raw (unresolved) config dict for ``args`` and the resume target."""
    from attnseg.runtime.checkpoint import load_checkpoint
    from attnseg.train.config import apply_overrides, load_yaml, set_by_path

    resume = args.resume
    cfg: dict[str, Any] = {}
    stored_imports: list[str] = []
    if args.config:
        cfg = load_yaml(args.config)
    elif resume:
        path = resume
        if resume == "last":  # the run named by --name/--output-dir (documented: --resume --name X)
            from attnseg.train.config import DEFAULTS

            path = os.path.join(args.output_dir or DEFAULTS["output_dir"], args.name or DEFAULTS["name"])
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoints", "last.pt")
        ckpt = load_checkpoint(path)
        if "config" not in ckpt:
            raise ValueError(f"{path}: checkpoint holds no training config; pass --config")
        cfg = ckpt["config"]
        # a checkpoint never makes us import code: its model.imports apply only when given again
        stored_imports = list((cfg.get("model") or {}).get("imports") or [])
        if stored_imports:
            cfg["model"]["imports"] = []
        resume = path
    elif args.dataroot and not args.no_plan:
        cfg = plan_config(args)
    elif not args.print_config and not args.dataroot and not args.overrides:
        raise ValueError("give --data DIR (planned from the data), --config FILE (see configs/) or --resume CKPT")

    def put(key: str, value: Any) -> None:
        if value is not None:
            set_by_path(cfg, key, value)

    put("name", args.name)
    put("output_dir", args.output_dir)
    put("data.root", args.dataroot)
    if args.layout:
        layout, kind = DATASET_MODES.get(args.layout.lower(), (args.layout, None))
        put("data.layout", layout)
        put("task.kind", kind)
    put("model.name", args.model)
    put("model.kwargs.attention", args.attention)
    model_name = cfg.get("model", {}).get("name", "panet-brats")
    in_key, out_key = _model_width_keys(model_name) if (args.in_channels or args.out_channels) else (None, None)
    if args.in_channels:
        put("task.in_channels", args.in_channels)
        if in_key:
            put(f"model.kwargs.{in_key}", args.in_channels)
    if args.out_channels:
        put("task.num_classes", args.out_channels)
        if out_key:
            put(f"model.kwargs.{out_key}", args.out_channels)
    put("train.epochs", args.epochs)
    put("train.iterations_per_epoch", args.iterations)
    put("data.batch_size", args.batch_size)
    if args.patch_size:
        ps = args.patch_size * 3 if len(args.patch_size) == 1 else args.patch_size
        put("data.patch_size", list(ps))
    put("data.slice_axis", args.slice_axis)
    put("data.context", args.context)
    if (args.patch_size and len(args.patch_size) == 2) or args.slice_axis:
        # a 2-D model was asked for on the command line: it wins over a config's (or plan's) 3-D one
        kw = cfg.get("model", {}).get("kwargs") or {}
        if "spatial_dims" in kw:
            put("model.kwargs.spatial_dims", 2)
    put("train.optimizer.lr", args.lr)
    put("train.precision", "mixed" if args.mixed else args.precision)
    put("seed", args.seed)
    put("device", args.device)
    put("data.workers", args.workers)
    put("validation.interval", args.val_interval)
    if args.ds:
        put("loss.deep_supervision.enabled", True)
    if args.trainset:
        put("data.use_all_for_training", True)
    if args.gpu_ids is not None:
        ids = [i.strip() for i in str(args.gpu_ids).split(",") if i.strip()]
        if ids == ["-1"]:
            put("device", "cpu")
        elif ids:
            put("device", "cuda")
    cfg = apply_overrides(cfg, args.overrides)
    if stored_imports and not (cfg.get("model") or {}).get("imports"):
        from attnseg.models import MODELS

        name = cfg["model"].get("name")
        if name not in MODELS:
            mods = ",".join(stored_imports)
            raise ValueError(f"{path}: model {name!r} comes from module(s) {stored_imports} named in the "
                             f"checkpoint's model.imports, which a checkpoint never imports by itself; if you "
                             f"trust them, pass --set model.imports=[{mods}]")
    return cfg, resume


def plan_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config ``attnseg plan`` derives from ``--data`` (printed as a table, rank 0 only)."""
    from attnseg.data.plan import plan_dataset

    layout = DATASET_MODES.get(args.layout.lower(), (args.layout, None))[0] if args.layout else "auto"
    model = args.model or "unet"
    plan = plan_dataset(args.dataroot, layout, args.memory_gb, model=model,
                        device="cpu" if str(args.device or "auto") == "cpu" else "auto")
    if int(os.environ.get("RANK", "0")) == 0 and not args.print_config:
        from attnseg.cli.plan import print_plan

        print_plan(plan)
    cfg = plan["config"]
    kw, task = cfg["model"]["kwargs"], cfg["task"]
    in_key, out_key = _model_width_keys(model)
    if in_key:  # models the plan has no widths for still get the data's channels and classes
        kw.setdefault(in_key, task["in_channels"])
    if out_key:
        kw.setdefault(out_key, task["num_classes"])
    if args.name is None:
        cfg["name"] = cfg["name"] + (f"-{args.attention}" if args.attention else "")
    return cfg


def _torchrun_argv(argv: list[str], n: int) -> list[str]:
    """Re-launch this command under torchrun with one process per GPU (``--gpu_ids`` removed)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--gpu_ids", "--gpu-ids"):
            skip = True
            continue
        if a.startswith(("--gpu_ids=", "--gpu-ids=")):
            continue
        out.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "attnseg", *out]


def run(args: argparse.Namespace) -> int:
    if args.gpu_ids and args.gpu_ids.strip() != "-1":
        ids = [i.strip() for i in args.gpu_ids.split(",") if i.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        if len(ids) > 1 and "WORLD_SIZE" not in os.environ and not args.print_config:
            argv = sys.argv[1:]
            if argv and argv[0] != "train":  # called as a library: rebuild a plain command line
                raise ValueError("--gpu_ids with several GPUs must be used from the command line")
            return subprocess.call(_torchrun_argv(argv, len(ids)), env=os.environ.copy())
    cfg, resume = build_config(args)
    from attnseg.train.config import dump_yaml, resolve_config

    resolved = resolve_config(cfg)
    if args.print_config:
        print(dump_yaml(resolved), end="")
        return 0
    from attnseg.train.trainer import run_training

    try:
        result = run_training(resolved, resume=resume)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            run_dir = os.path.join(resolved["output_dir"], resolved["name"])
            last = os.path.join(run_dir, "checkpoints", "last.pt")
            if os.path.isfile(last):
                print(f"\ninterrupted; the last checkpoint is {last}. Continue with:\n"
                      f"  attnseg train --resume {run_dir}", file=sys.stderr)
            else:
                print("\ninterrupted before the first checkpoint; nothing to resume. Start again with the same "
                      "command.", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f} (epoch {result.best_epoch})"
        print(f"run folder: {result.run_dir}  best {resolved['validation']['metric']}: {best}")
    return 0
