"""attnseg next to nnU-Net v2 on the same network, side by side in one run (CPU).

The network is nnU-Net's ``PlainConvUNet`` from ``dynamic-network-architectures`` with the BraTS
3d_fullres plan: 6 stages of 32-64-128-256-320-320 features, 3×3×3 kernels, strides 1,2,2,2,2,2,
two convolutions per stage, instance norm (affine), leaky ReLU, deep supervision, 4 input
channels, 3 region outputs (WT, TC, ET). Both sides get the same initial weights.

* **training iteration** (patch 128³, batch 2; data loading excluded on both sides):
  attnseg — the trainer's step (``attnseg.train.step.forward_loss``: CPU fast path with
  channels-last oneDNN convolutions, Dice + BCE region loss with nnU-Net's deep-supervision
  weights on down-sampled targets, backward, gradient clipping at 12, SGD/Nesterov 0.99);
  nnU-Net — ``nnUNetTrainer.train_step`` (``device=cpu``; its own loss, clipping and optimizer) on the
  same batch.
* **whole case** (one 4×240×240×155 volume, ROI 128³, step 0.5, Gaussian weighting, mirroring off
  and on): attnseg — the ``attnseg predict`` pipeline (CPU fast path + ``SlidingWindowInferer``)
  vs ``nnUNetPredictor.predict_sliding_window_return_logits`` (``perform_everything_on_device=False``).
  Logits are compared (same weights): the max |difference| is printed.

The two sides alternate (A B A B ...) for ``--rounds`` rounds; wall seconds, min / median / max.
Needs the ``bench`` extra: ``pip install "torch==<installed>" -e ".[bench]"``.

    python benchmarks/nnunet_peer.py                      # training 128³ x2, one case, mirroring off/on
    python benchmarks/nnunet_peer.py --quick              # patch 64³, a 128x128x96 case, mirroring off
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

FEATURES = [32, 64, 128, 256, 320, 320]


def plans_and_dataset(patch: int, batch: int) -> tuple[dict, dict]:
    """A BraTS-like nnU-Net v2 plans dict (3d_fullres) and dataset.json (region training)."""
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 6, "features_per_stage": FEATURES, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
            "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resamp = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch, "patch_size": [patch] * 3, "median_image_size_in_voxels": [140, 171, 137],
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 4,
        "use_mask_for_norm": [True] * 4, "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resamp,
        "resampling_fn_seg_kwargs": {**resamp, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resamp, "order": 1}, "architecture": arch, "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset900_BraTSBench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [155, 240, 240], "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": conf},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                     "percentile_99_5": 1.0, "std": 1.0} for i in range(4)},
    }
    dataset = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
               "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
               "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset


def nnunet_trainer(patch: int, batch: int, workdir: str):
    os.environ.setdefault("nnUNet_results", os.path.join(workdir, "results"))
    os.environ.setdefault("nnUNet_preprocessed", os.path.join(workdir, "preprocessed"))
    os.environ.setdefault("nnUNet_raw", os.path.join(workdir, "raw"))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans, dataset = plans_and_dataset(patch, batch)
    # initialize() only looks at the preprocessed folder's file type (no data is loaded here)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], plans["dataset_name"], "nnUNetPlans_3d_fullres")
    os.makedirs(pre, exist_ok=True)
    open(os.path.join(pre, "none.npz"), "wb").close()
    # (nnunetv2 2.8 pops "continue_training" from the plans it is given)
    tr = nnUNetTrainer({**plans, "continue_training": False}, "3d_fullres", 0, dataset, device=torch.device("cpu"))
    tr.initialize()
    return tr, plans, dataset


class DictOutputs(nn.Module):
    """PlainConvUNet's deep-supervision list as attnseg's output dict (``out``, ``level1``, ...)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        y = self.net(x)
        if isinstance(y, (list, tuple)):
            return {"out" if i == 0 else f"level{i}": t for i, t in enumerate(y)}
        return y


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the system between the two sides (outside the timed
    region): with attnseg's malloc tuning (no trimming) one process holding both sides' freed
    activations at 2x4x128^3 needed ~20 GB and was killed by the OOM killer on a 24 GB machine."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def ds_weights(n: int) -> list[float]:
    """nnU-Net's deep-supervision weights: 1/2^i, the lowest resolution 0, normalised."""
    w = np.array([1 / (2 ** i) for i in range(n)])
    w[-1] = 0
    return list(w / w.sum())


def time_training(args: argparse.Namespace, workdir: str) -> list[dict]:
    from attnseg.infer import fastpath
    from attnseg.train.data import region_target
    from attnseg.train.losses import build_training_loss
    from attnseg.train.step import clip_gradients, forward_loss

    p, b = args.patch, args.batch
    tr, _, _ = nnunet_trainer(p, b, workdir)
    nn_net = tr.network
    torch.manual_seed(0)
    x = torch.randn(b, 4, p, p, p)
    lab = torch.zeros(b, p, p, p, dtype=torch.long)
    c = p // 2
    lab[:, c - 20:c + 20, c - 20:c + 20, c - 20:c + 20] = 2
    lab[:, c - 12:c + 12, c - 12:c + 12, c - 12:c + 12] = 1
    lab[:, c - 6:c + 6, c - 6:c + 6, c - 6:c + 6] = 3
    # nnU-Net's batch: region maps (WT, TC, ET), down-sampled (nearest) to every output scale
    regions = torch.stack([lab > 0, (lab == 1) | (lab == 3), lab == 3], 1).float()
    scales = [p // (2 ** i) for i in range(5)]
    targets = [nn.functional.interpolate(regions, size=[s] * 3, mode="nearest") for s in scales]
    nn_batch = {"data": x, "target": targets}
    # attnseg: the same network and initial weights, its trainer's step
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    net = PlainConvUNet(4, 6, FEATURES, nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], [2] * 6, 3, [2] * 5, conv_bias=True,
                        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    net.load_state_dict(nn_net.state_dict())
    fastpath.enable_cpu_fastpaths()
    model = fastpath.prepare_model(DictOutputs(net).train(), 3)
    weights = dict(zip(["out", "level1", "level2", "level3", "level4"], ds_weights(5)))
    crit = build_training_loss({"name": "dice_ce", "kwargs": {"ce": "bce", "squared": False},
                                "deep_supervision": {"enabled": True, "weights": weights,
                                                     "mode": "downsample_target"}}, "brats-regions")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    # brats-regions: region_target() inside forward_loss maps labels 1/2/3 (NCR, ED, ET) to WT/TC/ET
    a_batch = {"image": x, "label": lab}
    assert region_target(lab[:1], 3).shape[1] == 3

    def attnseg_step() -> float:
        t0 = time.perf_counter()
        loss, _, _ = forward_loss(model, crit, a_batch, torch.device("cpu"), True, None, "brats-regions")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, 12.0)
        opt.step()
        return time.perf_counter() - t0

    def nnunet_step() -> float:
        t0 = time.perf_counter()
        tr.train_step(nn_batch)
        return time.perf_counter() - t0

    attnseg_step(), _release_free_memory(), nnunet_step(), _release_free_memory()  # warm-up (oneDNN, allocator)
    times = _alternate(attnseg_step, nnunet_step, args.rounds, "train")
    return _rows(times, f"training iteration, 2x4x{p}^3" if b == 2 else f"training iteration, {b}x4x{p}^3")


def _alternate(attnseg_fn, nnunet_fn, rounds: int, label: str) -> dict[str, list[float]]:
    """Seconds of ``rounds`` alternating calls (A B, B A, ...), free heap handed back after each."""
    times: dict[str, list[float]] = {"attnseg": [], "nnU-Net": []}
    for r in range(rounds):
        order = [("attnseg", attnseg_fn), ("nnU-Net", nnunet_fn)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            times[name].append(fn())
            _release_free_memory()
        print(f"# {label} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return times


def _rows(times: dict[str, list[float]], what: str) -> list[dict]:
    a, n = times["attnseg"], times["nnU-Net"]
    ratios = sorted(y / x for x, y in zip(a, n))
    return [{"what": what, "attnseg s (min/med/max)": " / ".join(f"{v:.1f}" for v in (min(a), statistics.median(a),
                                                                                      max(a))),
             "nnU-Net s (min/med/max)": " / ".join(f"{v:.1f}" for v in (min(n), statistics.median(n), max(n))),
             "nnU-Net/attnseg paired (min/med/max)": " / ".join(f"{v:.2f}" for v in
                                                                (ratios[0], statistics.median(ratios), ratios[-1])),
             "runs": len(a)}]


def time_case(args: argparse.Namespace, workdir: str, mirror: bool) -> list[dict]:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from attnseg.infer import fastpath
    from attnseg.infer.sliding_window import SlidingWindowInferer

    tr, plans, dataset = nnunet_trainer(128, 2, workdir)
    net = tr.network.eval()
    net.decoder.deep_supervision = False  # as nnU-Net's own loading of a trained model does
    pm = PlansManager(plans)
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)
    pred.manual_initialization(net, pm, pm.get_configuration("3d_fullres"), [net.state_dict()], dataset,
                               "nnUNetTrainer", (0, 1, 2))
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    mine = PlainConvUNet(4, 6, FEATURES, nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], [2] * 6, 3, [2] * 5, conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False).eval()
    mine.load_state_dict(net.state_dict())
    fastpath.enable_cpu_fastpaths()
    fastpath.prepare_model(mine, 3, channels_last=False)  # as attnseg predict / load_predictor
    inferer = SlidingWindowInferer(128, overlap=0.5, blend="gaussian", mirror_axes=(0, 1, 2) if mirror else None)
    shape = args.case
    torch.manual_seed(0)
    vol = torch.randn(4, *shape)
    out: dict[str, torch.Tensor] = {}

    def attnseg_case() -> float:
        t0 = time.perf_counter()
        out["a"] = inferer(vol[None], mine)[0]
        return time.perf_counter() - t0

    def nnunet_case() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            out["n"] = pred.predict_sliding_window_return_logits(vol)
        return time.perf_counter() - t0

    times = _alternate(attnseg_case, nnunet_case, args.case_rounds, f"case (mirror {mirror})")
    diff = (out["a"].float() - out["n"].float()).abs().max().item()
    rows = _rows(times, f"whole case 4x{'x'.join(map(str, shape))}, ROI 128, step 0.5, Gaussian, "
                        f"mirroring {'on (8x)' if mirror else 'off'}")
    rows[0]["max |logit diff|"] = f"{diff:.2e}"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating training-iteration rounds")
    ap.add_argument("--case", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--case-rounds", type=int, default=2)
    ap.add_argument("--mirroring", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--mirror-case", type=int, nargs=3, default=None,
                    help="a smaller volume for the mirroring-on rows (8 network calls per window)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "case"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="bold title (the table is Markdown either way)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.patch, args.rounds, args.case, args.case_rounds, args.mirroring = 64, 2, [128, 128, 96], 1, ["off"]
    torch.set_num_threads(args.threads)
    try:
        import dynamic_network_architectures  # noqa: F401  (optional: the bench extra)
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        print(f"nnU-Net peer comparison not run: {exc.name} is not installed (pip install -e '.[bench]')")
        return
    from attnseg.infer.fastpath import onednn_bf16_supported
    from attnseg.report.table import markdown_table

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as wd:
        if "train" not in args.skip:
            rows += time_training(args, wd)
        if "case" not in args.skip:
            for m in args.mirroring:
                if m == "on" and args.mirror_case:
                    full = args.case
                    args.case = args.mirror_case
                    rows += time_case(args, wd, True)
                    args.case = full
                else:
                    rows += time_case(args, wd, m == "on")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    title = (f"attnseg vs nnU-Net v2 (PlainConvUNet, BraTS 3d_fullres plan), fp32, {args.threads} threads, "
             f"wall s; native bf16: {onednn_bf16_supported()}")
    print(f"{'**' + title + '**' if args.markdown else title}\n\n{markdown_table(rows, cols)}\n")


if __name__ == "__main__":
    main()
