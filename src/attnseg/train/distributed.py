"""Device, process-group and RNG helpers of the trainer (single process and ``torchrun``).

Everything here is device-aware so one code path is right on CPU (gloo) and on CUDA (nccl):

* :func:`pick_device` maps ``LOCAL_RANK`` to a GPU and refuses a rank without one;
* :func:`backend_for` chooses ``cpu:gloo,cuda:nccl`` on CUDA (collectives on CPU tensors, e.g.
  ``all_gather_object``, keep working next to the nccl ones) and ``gloo`` on CPU;
* :func:`all_reduce_sum` / :func:`any_rank` put their tensors on the device the backend
  serves (``DistInfo.reduce_device``): nccl cannot reduce a CPU tensor;
* :func:`rng_state` / :func:`set_rng_state` save and restore the generator of the device the
  process used (not one per GPU visible at save time), so a run resumes with fewer GPUs;
* :func:`param_digest` fingerprints parameters only (BatchNorm running statistics are per
  rank by design and would raise false alarms in the cross-rank check);
* :func:`configure_determinism` and :func:`resolve_precision` hold the GPU defaults
  (docs/training.md, "GPU defaults").
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

LOG = logging.getLogger("attnseg.train")


@dataclass
class DistInfo:
    """This process's place in the job and where its collectives run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    reduce_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env.get(key, default))
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={env.get(key)!r} is not an integer") from exc


def pick_device(spec: str, env: Mapping[str, str] | None = None, cuda_count: int | None = None) -> torch.device:
    """The device of this process for ``device: spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Under ``torchrun`` local rank ``r`` takes ``cuda:r``; a rank without a GPU of its own is an
    error (it would otherwise share a GPU or fail with "invalid device ordinal" later).
    ``cuda:N`` names one GPU: allowed with one rank per node, refused with several (every rank
    would land on GPU N). ``env``/``cuda_count`` default to the process's (tests pass their own).
    """
    env = os.environ if env is None else env
    local = _env_int(env, "LOCAL_RANK", 0)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", 1)
    if spec == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if cuda_count is None else int(cuda_count)
    if spec == "auto" and count == 0:
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        if count == 0:
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if local >= count:
            raise ValueError(f"local rank {local} has no GPU: {count} visible on this node for {local_world} ranks "
                             f"per node; start at most {count} processes per node (torchrun --nproc_per_node "
                             f"{count}) or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
        return torch.device(f"cuda:{local}")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if count == 0:
            raise ValueError(f"device {spec!r} requested but CUDA is not available")
        index = 0 if dev.index is None else dev.index
        if local_world > 1:
            raise ValueError(f"device {spec!r} names one GPU, but {local_world} ranks run on this node and all "
                             f"would use it; use device 'cuda' (local rank r -> cuda:r) and choose the GPUs with "
                             f"CUDA_VISIBLE_DEVICES")
        if index >= count:
            raise ValueError(f"device {spec!r}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})")
        return torch.device(f"cuda:{index}")
    return dev


def backend_for(spec: str, device: torch.device) -> str:
    """Process-group backend for ``distributed.backend: spec`` on ``device``.

    ``auto``: ``cpu:gloo,cuda:nccl`` on CUDA (nccl for the tensors on the GPU, gloo for any
    CPU tensor a collective meets), ``gloo`` on CPU.
    """
    if spec != "auto":
        return spec
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def reduce_device(device: torch.device, backend: str) -> torch.device:
    """Where collectives of ``backend`` should find their tensors: the GPU when nccl serves
    CUDA tensors (nccl has no CPU support), the CPU otherwise (gloo)."""
    if device.type == "cuda" and "nccl" in backend:
        return device
    return torch.device("cpu")


def setup_distributed(spec: str, device: torch.device, env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the ``torchrun`` process group (``WORLD_SIZE > 1``); one process: a trivial :class:`DistInfo`."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    backend = backend_for(spec, device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    else:
        backend = str(dist.get_backend())
    return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int(env, "LOCAL_RANK", 0),
                    reduce_device(device, backend))


def all_reduce_sum(values: torch.Tensor, dd: DistInfo) -> torch.Tensor:
    """Sum ``values`` over ranks (float64 on the backend's device); returned on the CPU."""
    t = values.detach().to(device=dd.reduce_device, dtype=torch.float64)
    if dd.world > 1:
        dist.all_reduce(t)
    return t.cpu()


def any_rank(flag: bool, dd: DistInfo) -> bool:
    """True when ``flag`` holds on any rank (ranks must stop at the same epoch)."""
    if dd.world <= 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=dd.reduce_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ----------------------------------------------------------------------------------------------
# RNG


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Global RNG states as tensors/lists (loadable with ``weights_only=True``).

    On CUDA only the generator of ``device`` (the one this process used) is saved, with its
    index: the state restores on any machine with at least one GPU, whatever it has visible.
    """
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
        state["cuda_device"] = int(device.index or 0)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; the CUDA generator goes to ``device`` (every rank restores the
    saving rank's state: all ranks are seeded alike and draw alike).

    Checkpoints written before per-device states hold a list (one state per GPU visible when
    saved): the entry of ``device``'s index is used, the last one when fewer were saved. A CUDA
    state met on a CPU run is skipped with a warning.
    """
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or (isinstance(cuda, (list, tuple)) and not cuda):
        return
    if device is None or device.type != "cuda":
        LOG.warning("the checkpoint holds a CUDA RNG state but this run is on %s: CUDA random draws will differ "
                    "from the uninterrupted run", device or "cpu")
        return
    index = int(device.index or 0)
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[min(index, len(cuda) - 1)]
    torch.cuda.set_rng_state(cuda, device)


# ----------------------------------------------------------------------------------------------
# weights


def param_digest(model: nn.Module) -> str:
    """SHA-1 of every parameter (bit-exact fingerprint of the trained weights).

    Buffers are left out: BatchNorm running statistics are computed per rank from each rank's
    own batches under DDP (not synchronised), so they differ legitimately between ranks.
    """
    h = hashlib.sha1()
    for k, v in sorted(model.named_parameters()):
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def all_digests(model: nn.Module, dd: DistInfo) -> list[str]:
    """:func:`param_digest` of every rank, in rank order."""
    d = param_digest(model)
    if dd.world == 1:
        return [d]
    out: list[Any] = [None] * dd.world
    dist.all_gather_object(out, d)
    return [str(x) for x in out]


def unused_parameters(model: nn.Module, step: Callable[[], torch.Tensor]) -> list[str]:
    """Names of trainable parameters that get no gradient from ``step()`` (one forward + loss).

    Runs one backward on the model outside DDP and puts everything back: gradients, buffers
    (BatchNorm statistics) and the RNG states. DDP needs ``find_unused_parameters=True``
    exactly when this list is not empty (and the graph does not change between iterations);
    otherwise the flag only costs a traversal of the autograd graph every iteration.
    """
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    grads = {k: p.grad for k, p in model.named_parameters()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        for p in model.parameters():
            p.grad = None
        with torch.random.fork_rng(devices=devices):
            step().backward()
        return [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        for k, p in model.named_parameters():
            p.grad = grads[k]


# ----------------------------------------------------------------------------------------------
# GPU defaults


def deterministic_for(spec: bool | str, device: torch.device) -> bool:
    """``train.deterministic``: ``auto`` = deterministic on CPU (free: the CPU kernels used are
    deterministic), fast (cuDNN autotuning) on CUDA."""
    if spec == "auto":
        return device.type != "cuda"
    return bool(spec)


def configure_determinism(deterministic: bool, device: torch.device) -> dict[str, Any]:
    """Set the global cuDNN / deterministic-algorithm flags; returns the previous ones for
    :func:`restore_determinism`.

    Deterministic: ``cudnn.deterministic``, no autotuning and
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (ops without a deterministic
    CUDA kernel, e.g. the backward of trilinear upsampling, ``grid_sample`` and
    ``avg_pool3d``, warn instead of failing). Otherwise ``cudnn.benchmark = True`` (cuDNN times
    the convolution algorithms once per shape and keeps the fastest).
    """
    prev = {"benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "fill": torch.utils.deterministic.fill_uninitialized_memory}
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic and device.type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible results (read when cuBLAS starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # filling every torch.empty with NaN costs a pass over memory and changes no result here
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(False)
    return prev


def restore_determinism(prev: dict[str, Any]) -> None:
    torch.backends.cudnn.benchmark = prev["benchmark"]
    torch.backends.cudnn.deterministic = prev["cudnn_deterministic"]
    torch.use_deterministic_algorithms(prev["algorithms"], warn_only=prev["warn_only"])
    torch.utils.deterministic.fill_uninitialized_memory = prev["fill"]


def cuda_bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has native bf16 (Ampere and newer)."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(spec: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``train.precision`` → (autocast dtype or None, use a GradScaler).

    ``auto`` (default): fp32 on CPU; on CUDA bf16 where the GPU has it natively (no scaler
    needed: bf16 has fp32's range), else fp16 + GradScaler. ``mixed`` (``--mixed``, as the
    PANet reference): fp16 + GradScaler on CUDA, bf16 on CPU.
    """
    if spec == "auto":
        spec = "fp32" if device.type != "cuda" else ("bf16" if cuda_bf16_supported(device) else "fp16")
    if spec == "mixed":
        spec = "fp16" if device.type == "cuda" else "bf16"
    if spec == "bf16":
        return torch.bfloat16, False
    if spec == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 autocast needs CUDA; use precision bf16 (or --mixed) on CPU")
        return torch.float16, True
    return None, False


def inference_precision(spec: str, device: torch.device) -> str:
    """The sliding-window precision (``fp32``/``bf16``) that matches a training precision:
    bf16 when training ran in bf16, fp32 otherwise (fp16 logits would be blended in a range
    the training never checked; fp32 inference of an fp16-trained model is safe)."""
    if spec in ("auto", "mixed"):
        spec = "bf16" if resolve_precision(spec, device)[0] == torch.bfloat16 else "fp32"
    return "bf16" if spec == "bf16" else "fp32"


# ----------------------------------------------------------------------------------------------
# persistent DataLoader workers


class EpochTagged(torch.utils.data.Dataset):
    """A dataset indexed by ``(epoch, index)``: each worker selects the epoch itself.

    Persistent DataLoader workers hold their own copy of the dataset made when they started,
    so a ``set_epoch`` in the main process never reaches them; the epoch travels with every
    index instead (see :class:`EpochTaggedBatches`).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class EpochTaggedBatches(torch.utils.data.Sampler):
    """Batch sampler over ``plan`` (an :class:`~attnseg.train.data.EpochPlan`) yielding
    ``[(epoch, index), ...]``; :meth:`set_epoch` before each epoch's iteration."""

    def __init__(self, plan: Any) -> None:
        self.plan, self.epoch = plan, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.plan.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.plan:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.plan)
