"""A shared test helper: stop a training run part-way, as a kill would."""

from __future__ import annotations

import pytest

from kdutils import data as kdata


def interrupt(m: pytest.MonkeyPatch, epoch: int, after: int) -> None:
    """Raise KeyboardInterrupt after ``after`` training batches of epoch index ``epoch``."""
    original = kdata.Loader.__iter__

    def wrapped(self):
        for i, batch in enumerate(original(self)):
            if self.shuffle and self.epoch == epoch and i == after:
                raise KeyboardInterrupt
            yield batch

    m.setattr(kdata.Loader, "__iter__", wrapped)
