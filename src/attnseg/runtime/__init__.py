"""Process-level safety shared by training and prediction: folder locks, atomic writes,
disk-full and out-of-memory diagnosis (see docs/reliability.md).

Depends on nothing else in attnseg, so ``attnseg.train`` and ``attnseg.infer`` can both use it.
"""

from attnseg.runtime.errors import DiskFullError, FaultError, FolderLockedError, OutOfMemoryFault
from attnseg.runtime.fs import disk_full_error, is_disk_full, payload_bytes, remove_stale_temp_files
from attnseg.runtime.lock import FolderLock
from attnseg.runtime.memory import is_out_of_memory, out_of_memory_message

__all__ = ["DiskFullError", "FaultError", "FolderLock", "FolderLockedError", "OutOfMemoryFault", "disk_full_error",
           "is_disk_full", "is_out_of_memory", "out_of_memory_message", "payload_bytes", "remove_stale_temp_files"]
