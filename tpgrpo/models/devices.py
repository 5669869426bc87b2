"""Whether this machine has the torch device a config or reward names: checked before any work."""

from __future__ import annotations

from typing import Any

import torch

from tpgrpo.errors import UserError

SUPPORTED = "cpu, cuda, cuda:N or mps"


def check_device(device: str, what: str = "model.device", processes: int = 1) -> torch.device:
    """The torch device `device`, if this machine has it.

    Args:
        device (`str`): e.g. `cpu`, `cuda`, `cuda:1`, `mps`.
        what (`str`): the setting it came from, for messages.
        processes (`int`): data-parallel processes that each need one GPU (`update.ddp_procs`).

    Raises:
        `UserError`: not a device name, a device type tpgrpo does not run on, or a device this machine
            lacks (no CUDA, fewer GPUs than the index or the processes need, no MPS).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UserError(f"{what} {device!r} is not a torch device ({err}); use {SUPPORTED}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"{what} {device!r}: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                "false); set it to cpu, or run on a GPU machine"
            )
        count = torch.cuda.device_count()
        needed = max(dev.index + 1 if dev.index is not None else 1, processes)
        if needed > count:
            raise UserError(
                f"{what} {device!r} needs {needed} GPU(s) (index {dev.index}, {processes} process(es)); "
                f"this machine has {count}: pick an index below {count} or fewer processes"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{what} {device!r}: MPS is not available on this machine; set it to cpu")
        return dev
    raise UserError(f"{what} {device!r}: tpgrpo does not run on {dev.type!r} devices; use {SUPPORTED}")


def check_model_device(cfg: Any) -> torch.device:
    """`check_device` for a `Config`'s model (and the update's data-parallel processes on CUDA)."""
    procs = cfg.update.ddp_procs if cfg.model.device.startswith("cuda") else 1
    return check_device(cfg.model.device, "model.device", procs)
