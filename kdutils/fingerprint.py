"""Golden fingerprints: what each method computes, in numbers a test can compare.

A run's key holds declared versions, not source files (see :mod:`kdutils.runs`).
What keeps those versions honest is a *fingerprint* per method: a tiny,
deterministic training run (digits, ResNet8 from a fixed random
initialisation, a random but fixed ResNet8 teacher, two epochs of two
batches at a small learning rate, so that rounding is not amplified),
summarised by each epoch's mean of every loss term, the test accuracy and
the sum of the student's absolute weights. ``tests/golden_fingerprints.json``
stores them with the versions they were made at; ``tests/test_golden.py``
retrains every registered method and compares. A change to a method's
arithmetic without a bump of its ``version`` (or of ``CORE_VERSION`` for the
shared loop) fails there; a refactor passes.

``python scripts/golden.py --write [METHOD ...]`` rewrites the stored ones.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from . import data as kdata
from .config import make_config, method_defaults
from .distillers import build, get_method
from .loop import fit
from .models import create_model
from .runs import CORE_VERSION

__all__ = ["fingerprint", "compare", "TOLERANCE"]

# Relative tolerance. The same arithmetic with AVX2 against AVX-512 and two
# threads against one moved these by at most 7e-5 (AMTML-KD's relation term);
# a changed factor, reduction or pooling moves them by far more than 1e-3.
TOLERANCE = 1e-3
TRAIN, TEST, BATCH, EPOCHS, LR = 64, 64, 32, 2, 0.01


def _args(method: str) -> dict[str, Any]:
    """Method arguments that keep the run tiny: one epoch for any stage
    counted in epochs, a memory bank smaller than the 64 images, one
    snapshot cycle per epoch."""
    defaults = method_defaults(method)
    args: dict[str, Any] = {}
    for k, v in defaults.items():
        if k.endswith("epochs") and isinstance(v, int) and v > 1:
            args[k] = 1
    # A schedule stated in epochs of the reference run keeps its default here:
    # make_config would scale it to the 2 epochs (see Distiller.epoch_args).
    for k in get_method(method).epoch_args:
        args.setdefault(k, defaults[k])
    if "nce_k" in defaults:
        args["nce_k"] = 32
    if "cycles" in defaults:  # snapshot: a cycle per epoch
        args["cycles"] = EPOCHS
    return args


def fingerprint(method: str) -> dict[str, Any]:
    """Train ``method`` on the tiny fixed run; its versions and numbers."""
    cfg = make_config(
        "smoke",
        method=method,
        dataset="digits",
        teacher="resnet8",
        student="resnet8",
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        train_subset=TRAIN,
        test_subset=TEST,
        **_args(method),
    )
    train = kdata.load("digits", train=True).subset(TRAIN)
    test = kdata.load("digits", train=False).subset(TEST)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cls = get_method(method)
    teacher = create_model("resnet8", 10, 1).eval() if cls.needs_teacher else None
    torch.manual_seed(1)
    student = create_model("resnet8", 10, 1)
    distiller = build(method, student, teacher, **cfg.method_args)
    distiller.setup(train)
    loader = kdata.Loader(train, BATCH, shuffle=True, seed=0)
    history = fit(distiller, loader, test, cfg, progress=False)
    last = history[-1]
    # Every epoch's mean of every loss term (not the accuracies: counts of
    # right answers jump by a whole sample for a tiny difference).
    losses = {
        f"e{h['epoch']}_{k}": v
        for h in history
        for k, v in sorted(h.items())
        if k.startswith("train_") and k != "train_acc"
    }
    weights = sum(
        float(v.double().abs().sum())
        for v in student.state_dict().values()
        if v.is_floating_point()
    )
    return {
        "core": CORE_VERSION,
        "version": cls.version,
        "losses": losses,
        "test_acc": last["test_acc"],
        "weights_l1": weights,
    }


def compare(method: str, stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """None if ``now`` matches ``stored``; else one line saying what to do."""
    if stored["core"] != now["core"] or stored["version"] != now["version"]:
        return (
            f"{method}: the stored fingerprint is of core {stored['core']}, "
            f"version {stored['version']}; the code is core {now['core']}, "
            f"version {now['version']}. If the bump is meant, rewrite it: "
            f"python scripts/golden.py --write {method}"
        )
    diffs = []
    for k in sorted({*stored["losses"], *now["losses"]}):
        a, b = stored["losses"].get(k), now["losses"].get(k)
        if (
            a is None
            or b is None
            or not math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=1e-6)
        ):
            diffs.append(f"{k} {a} -> {b}")
    if not math.isclose(stored["weights_l1"], now["weights_l1"], rel_tol=TOLERANCE):
        diffs.append(
            f"weights_l1 {stored['weights_l1']:.6g} -> {now['weights_l1']:.6g}"
        )
    if abs(stored["test_acc"] - now["test_acc"]) > 1.5 / TEST:
        diffs.append(f"test_acc {stored['test_acc']} -> {now['test_acc']}")
    if not diffs:
        return None
    return (
        f"{method} computes something else than at version {stored['version']} "
        f"({'; '.join(diffs)}). If that is meant, bump {get_method(method).__name__}"
        ".version (or runs.CORE_VERSION if every method moved) and rewrite the "
        "fingerprints; if not, the change broke the method"
    )
