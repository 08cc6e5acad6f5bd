"""Result records (one JSON file per run, with provenance) and tables."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config

__all__ = [
    "Result",
    "load_results",
    "summarize",
    "compare",
    "survey_table1",
    "atomic_write_bytes",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Result:
    """A finished run: its config, per-epoch history, final metrics, provenance."""

    name: str
    key: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    final: dict[str, Any]
    provenance: dict[str, Any]
    teacher: dict[str, Any] | None = None
    # Set by scripts/rekey_cache.py when a run was carried over to a new code
    # version verified to compute the same (old key, old code hash, commit).
    rekeyed: dict[str, Any] | None = None
    path: str | None = field(default=None, compare=False)  # run folder, not saved
    from_cache: bool = field(default=False, compare=False)
    # Set by ``load_run("<folder>@e<N>")``: the student after epoch N of this
    # run (one of its ``save_epochs``), not the final one. Not saved.
    epoch: int | None = field(default=None, compare=False)

    @property
    def cfg(self) -> Config:
        return Config.from_dict(self.config)

    @property
    def test_acc(self) -> float:
        if self.epoch is not None:
            return self.history[self.epoch - 1]["test_acc"]
        return self.final["test_acc"]

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path"), d.pop("from_cache"), d.pop("epoch")
        return json.dumps(d, indent=1, sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        path = Path(path)
        d = json.loads(path.read_text())
        return cls(**d, path=str(path.parent))

    def load_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained student (or teacher) of this run, in eval mode."""
        from .train import build_model

        if self.path is None:
            raise ValueError("this result has no run folder to load weights from")
        model = build_model(self.cfg.student, self.cfg.dataset)
        weights = "model.pt" if self.epoch is None else f"model-e{self.epoch}.pt"
        state = torch.load(
            Path(self.path) / weights, map_location=device, weights_only=True
        )
        model.load_state_dict(state)
        return model.to(device).eval()

    def __repr__(self) -> str:
        at = "" if self.epoch is None else f" after epoch {self.epoch}"
        acc = self.test_acc
        shown = "not evaluated" if acc is None else f"{100 * acc:.2f}%"
        return f"Result({self.name}{at}: test acc {shown})"


def load_results(folder: str | os.PathLike) -> list[Result]:
    """Every ``result.json`` below ``folder``."""
    return [Result.load(p) for p in sorted(Path(folder).rglob("result.json"))]


def summarize(results: list[Result], by: tuple[str, ...] = ("method",)):
    """Mean, std and count of test accuracy (%) per group, as a DataFrame."""
    import pandas as pd

    rows = []
    for r in results:
        row = {
            k: (r.config.get(k) if k in r.config else r.config["method_args"].get(k))
            for k in by
        }
        row["seed"] = r.config["seed"]
        row["acc"] = 100 * r.test_acc
        rows.append(row)
    df = pd.DataFrame(rows)
    out = (
        df.groupby(list(by), sort=False, dropna=False)["acc"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    return out.rename(columns={"mean": "acc_mean", "std": "acc_std", "count": "seeds"})


def survey_table1() -> list[dict[str, Any]]:
    """The survey's Table 1 (CIFAR-10, ResNet56 -> ResNet20), as the survey reports it."""
    text = resources.files("kdutils").joinpath("survey_table1.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    for r in rows:
        r["survey_acc"] = float(r["survey_acc"])
    return rows


def compare(name_a: str, accs_a: list[float], name_b: str, accs_b: list[float]) -> str:
    """A sentence reading ``a`` against ``b`` (accuracies in %, one per seed).

    The test is Welch's two-sided t-test over seeds at the 5% level; with one
    seed per side there is no test and the sentence says so.
    """
    from scipy import stats

    a, b = np.asarray(accs_a, float), np.asarray(accs_b, float)
    diff = a.mean() - b.mean()
    spread = max(
        a.std(ddof=1) if len(a) > 1 else 0.0, b.std(ddof=1) if len(b) > 1 else 0.0
    )
    text = (
        f"{name_a} {a.mean():.2f}% vs {name_b} {b.mean():.2f}%: {diff:+.2f} points\n"
        f"({len(a)} vs {len(b)} seeds, largest seed std {spread:.2f} points)\n"
    )
    if len(a) < 2 or len(b) < 2:
        return text + "too few seeds for a test."
    if a.std() == 0 and b.std() == 0:
        p = 0.0 if diff != 0 else 1.0
    else:
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    verdict = "a significant difference" if p < 0.05 else "no significant difference"
    return text + f"Welch t-test p = {p:.3f}: {verdict} at the 5% level."
