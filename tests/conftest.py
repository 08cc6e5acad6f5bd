"""Shared test setup: one CPU thread, and caches that never touch the user's."""

from __future__ import annotations

import sys

import pytest
import torch
from tiny import DIGITS

# The test machine has 2 cores and often runs other work; tiny models gain
# nothing from more threads, and one thread keeps runs bitwise reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Point every cache at ``tmp_path`` and forget the user's data folder;
    close the figures a test left open."""
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))
    # kdutils.data's download cache is $XDG_CACHE_HOME/kdutils/data.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    yield
    # Figures a test drew and left open would pile up over the session.
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


@pytest.fixture
def digits_config():
    """A factory of tiny, fast configs on scikit-learn's 8x8 digits."""
    import kdutils as kd

    def make(**overrides):
        args = dict(DIGITS)
        args.update(overrides)
        return kd.make_config("smoke", **args)

    return make
