"""The torch device a user asks for, checked before any model or data is touched."""

from __future__ import annotations

import re

__all__ = ["DeviceError", "check_device"]


class DeviceError(ValueError):
    """A requested device does not exist on this machine (the message names it and what there is)."""


def check_device(device: str | None, option: str = "--device") -> None:
    """Refuse a device this machine does not have, in one line naming ``option`` and the device.

    ``None`` (the default device) and ``cpu`` always pass; ``cuda``/``cuda:N`` need CUDA and that
    index; ``mps`` needs Apple's backend.

    Example
    -------
    >>> check_device("cpu")
    >>> check_device("tpu:0")
    Traceback (most recent call last):
    ...
    sb_mal.devices.DeviceError: --device tpu:0: not a device name (use cpu, cuda, cuda:N or mps)
    """
    if device is None:
        return
    import torch

    name = str(device).strip().lower()
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", name)
    if match is None:
        raise DeviceError(f"{option} {device}: not a device name (use cpu, cuda, cuda:N or mps)")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {device}: this machine has no usable CUDA device "
                              "(torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise DeviceError(f"{option} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"{option} {device}: Apple's MPS backend is not available here; use --device cpu")
