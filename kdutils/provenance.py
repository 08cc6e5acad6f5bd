"""What a finished run records about where it came from: the git commit, a
hash of the sources it ran, the declared versions, the library versions, the
device and the date. None of it is in the run's key (see ``kdutils.runs``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import subprocess
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .registry import get_method
from .runs import CORE_VERSION
from .version import __version__

__all__ = [
    "code_hash",
    "cpu_name",
    "git_commit",
    "machine_provenance",
    "method_sources",
    "provenance",
]

_PKG = Path(__file__).resolve().parent
# The source files of the computation every run shares; a method adds the
# files its Distiller's module draws on (see ``method_sources``).
_CORE_SOURCES = [
    "config.py",
    "data.py",
    "models.py",
    "inference.py",
    "loop.py",
    "teachers.py",
    "train.py",
]


def method_sources(method: str) -> list[str]:
    """The kdutils files (relative paths) that a method's Distiller draws on.

    The module that defines the method's class, and, transitively, every
    kdutils module whose functions, classes or self it imports (its loss
    module, ``distillers/base.py``, ``models.py``, ...). Adding a new method in
    another module leaves every other method's runs valid.
    """
    cls = get_method(method)
    seen: set[str] = set()
    stack = [cls.__module__]
    while stack:
        name = stack.pop()
        mod = sys.modules.get(name)
        if mod is None or name in seen:
            continue
        seen.add(name)
        for value in vars(mod).values():
            dep = (
                value.__name__
                if isinstance(value, types.ModuleType)
                else getattr(value, "__module__", None)
            )
            if isinstance(dep, str) and dep.startswith("kdutils.") and dep not in seen:
                stack.append(dep)
    root = Path(sys.modules["kdutils"].__file__).resolve().parent
    return sorted(
        Path(sys.modules[n].__file__).resolve().relative_to(root).as_posix()
        for n in seen
        if n.startswith("kdutils.")
    )


def code_hash(method: str = "ce") -> str:
    """Hash of the core training sources and of ``method``'s own sources."""
    h = hashlib.sha256()
    for rel in sorted({*_CORE_SOURCES, *method_sources(method)}):
        h.update(rel.encode())
        h.update((_PKG / rel).read_bytes())
    cls = get_method(method)
    if not cls.__module__.startswith("kdutils."):
        # A method registered by the user (a notebook, a script): its own source.
        try:
            h.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_PKG), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(_PKG), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: torch.device, method: str = "ce") -> dict:
    """A classification run's provenance: :func:`machine_provenance` plus the
    hash of the sources it ran and the declared versions."""
    return {
        **machine_provenance(device),
        "code_hash": code_hash(method),
        "versions": {"core": CORE_VERSION, method: get_method(method).version},
    }


def cpu_name() -> str:
    """The CPU's model name and its widest vector instructions, from
    /proc/cpuinfo where there is one (a CPU's speed depends on both), e.g.
    ``"Intel(R) Xeon(R) Processor (AVX-512 with bf16)"``."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", "x86_64"):
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    if "avx512_bf16" in flags:
        isa += " with bf16"
    return f"{name} ({isa})" if isa else name


def machine_provenance(device: torch.device) -> dict:
    """What any run records of where and when it ran: the git commit, the
    library versions, the device, the machine (its CPU and core count), the
    thread count, the platform, the date."""
    import torchvision

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor()
    )
    return {
        "git_commit": git_commit(),
        "kdutils": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": f"{device.type}: {name or platform.machine()}",
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
