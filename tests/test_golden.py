"""Golden fingerprints: every method still computes what its version says.

Run keys hold declared versions (``CORE_VERSION``, ``Distiller.version``),
not source files. Each method's tiny fixed run (``kdutils.fingerprint``) is
compared here with the numbers stored when its version was set; a method
whose arithmetic changed without a version bump fails, naming what moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdutils as kd
from kdutils.fingerprint import compare, fingerprint

GOLDEN = json.loads(
    (Path(__file__).resolve().parent / "golden_fingerprints.json").read_text()
)


def test_every_registered_method_has_a_fingerprint_and_no_other():
    assert sorted(GOLDEN) == sorted(kd.METHODS), (
        "write the missing ones: python scripts/golden.py --write METHOD"
    )


@pytest.mark.parametrize("method", sorted(kd.METHODS))
def test_a_method_computes_what_its_version_says(method):
    problem = compare(method, GOLDEN[method], fingerprint(method))
    assert problem is None, problem


def test_a_changed_computation_is_caught(monkeypatch):
    """KD's loss without its T^2 factor is another computation: caught."""
    from kdutils.distillers import traditional

    real = traditional.kd_loss

    def without_t_squared(s, t, T=4.0):
        return real(s, t, T) / T**2

    monkeypatch.setattr(traditional, "kd_loss", without_t_squared)
    problem = compare("kd", GOLDEN["kd"], fingerprint("kd"))
    assert problem is not None and "kd computes something else" in problem
    assert "e1_train_kd" in problem and "bump KD.version" in problem
