"""Stand-ins for what this machine cannot have (GPUs), shared by the test modules."""

from __future__ import annotations

import sys
import types

import pytest


class FakeNVML(types.ModuleType):
    """Stands in for pynvml: several GPUs cannot exist on this machine.

    Parameters
    ----------
    gpus : list of (name, total_bytes, free_bytes)
        The devices NVML reports, by index.
    """

    def __init__(self, gpus: list[tuple[str, int, int]]) -> None:
        super().__init__("pynvml")
        self._gpus = gpus
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=self._gpus[h][1], free=self._gpus[h][2])

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self._gpus[h][0].encode()


def install_fake_nvml(monkeypatch: pytest.MonkeyPatch, gpus: list[tuple[str, int, int]]) -> FakeNVML:
    """Make ``import pynvml`` return a :class:`FakeNVML` for ``gpus``, all visible."""
    fake = FakeNVML(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake
