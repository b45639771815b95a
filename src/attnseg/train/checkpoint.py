"""Checkpoint functions under their first import path (kept for existing code and scripts).

File I/O (atomic writes, ``weights_only`` loading) is :mod:`attnseg.runtime.checkpoint`;
rebuilding the model a checkpoint describes is :mod:`attnseg.models.checkpoint`. Both sit below
``train`` and ``infer``, which share them.
"""

from attnseg.models.checkpoint import build_model_from_checkpoint, model_checkpoint, unwrap_state_dict
from attnseg.runtime.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["FORMAT", "CheckpointError", "build_model_from_checkpoint", "load_checkpoint", "model_checkpoint",
           "save_checkpoint", "unwrap_state_dict"]
