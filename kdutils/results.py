"""Result records (one JSON file per run, with provenance) and tables."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import stats
from .config import Config
from .errors import CorruptArtifact
from .models import build_model

__all__ = [
    "Result",
    "load_results",
    "summarize",
    "seed_mean",
    "compare",
    "survey_table1",
    "atomic_write_bytes",
    "write_checked",
    "remove_checked",
    "verify_file",
    "set_aside",
    "CorruptArtifact",
]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader never sees a partial file.

    The file gets the permissions of a plain ``open()`` under the user's umask
    (``mkstemp`` alone makes it 0600, which a cache shared by a group cannot
    read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- checksums: a cached file is used only if it is what was written ---------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checked(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` atomically with a ``<name>.sha256`` file beside it, for
    files that no run record lists (a teacher's logits, a checkpoint).
    Returns the checksum."""
    path = Path(path)
    digest = sha256_bytes(data)
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), f"{digest}  {path.name}\n".encode())
    return digest


def remove_checked(path: str | os.PathLike) -> None:
    """Delete a file written by :func:`write_checked` and its ``.sha256``."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def verify_file(path: str | os.PathLike, expected: str | None = None) -> None:
    """Raise :class:`CorruptArtifact` unless ``path`` exists and has the
    checksum ``expected`` (default: the one in its ``.sha256`` file). A file
    with neither was written before kdutils kept checksums and is trusted."""
    path = Path(path)
    if not path.is_file():
        raise CorruptArtifact(f"{path} is missing")
    if expected is None:
        side = _sidecar(path)
        if not side.is_file():
            return
        expected = side.read_text().split(maxsplit=1)[0] if side.stat().st_size else ""
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptArtifact(
            f"{path} is not the file that was written (sha256 {actual[:12]}, "
            f"recorded {expected[:12] or 'nothing'})"
        )


def set_aside(path: str | os.PathLike, into: str | os.PathLike) -> Path:
    """Move a broken file or folder (and a file's ``.sha256``) to ``into``,
    under a name with the time, never deleting it. Returns where it went."""
    path, into = Path(path), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    # A file keeps its folder's name (the run it belonged to) in its new name.
    where = "" if path.is_dir() else f"{path.parent.name}--"
    dest = into / f"{where}{path.name}.{stamp}"
    os.replace(path, dest)
    side = _sidecar(path)
    if side.is_file():
        os.replace(side, into / f"{where}{side.name}.{stamp}")
    return dest


def _key_sorted(value: Any) -> Any:
    """``value`` with every dict's keys in sorted order (lists kept in order)."""
    if isinstance(value, dict):
        return {k: _key_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_key_sorted(v) for v in value]
    return value


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
    # Set by the former scripts/rekey_cache.py (run keys now hold declared
    # versions, see kdutils.runs) on runs it carried over to a new code
    # version; kept so that those records still load.
    rekeyed: dict[str, Any] | None = None
    # The sha256 of each file the run wrote to its folder (model.pt, ...),
    # checked before any of them is used; None for runs from before.
    files: dict[str, str] | None = None
    path: str | None = field(default=None, compare=False)  # run folder, not saved
    from_cache: bool = field(default=False, compare=False)
    # Set by ``load_run("<folder>@e<N>")``: the student after epoch N of this
    # run (one of its ``save_epochs``), not the final one. Not saved.
    epoch: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Keys in sorted order at every depth, as the saved record has them
        # (``to_json`` sorts): a run trained now and the same run loaded from
        # the cache then print their history's entries in one order.
        for name in ("config", "history", "final", "provenance", "teacher"):
            setattr(self, name, _key_sorted(getattr(self, name)))

    @property
    def cfg(self) -> Config:
        return Config.from_dict(self.config)

    @property
    def test_acc(self) -> float:
        if self.epoch is not None:
            return self.history[self.epoch - 1]["test_acc"]
        return self.final["test_acc"]

    @property
    def best_val_epoch(self) -> int | None:
        """The evaluated epoch with the highest validation accuracy (the
        earliest of ties); None for a run without a validation split."""
        evaluated = [h for h in self.history if h.get("val_acc") is not None]
        if not evaluated:
            return None
        return max(evaluated, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"]

    @property
    def test_acc_at_best_val(self) -> float | None:
        """The test accuracy at :attr:`best_val_epoch`: an epoch chosen without
        looking at the test set (None without a validation split)."""
        e = self.best_val_epoch
        if e is None:
            return None
        return next(h["test_acc"] for h in self.history if h["epoch"] == e)

    @property
    def best_test_acc(self) -> float:
        """The highest test accuracy of any evaluated epoch. Reported as a
        result it is biased upwards (the test set chose the epoch); it is here
        to measure that bias, not to report."""
        return max(h["test_acc"] for h in self.history if h.get("test_acc") is not None)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("path"), d.pop("from_cache"), d.pop("epoch")
        if d["files"] is None:
            d.pop("files")  # records from before checksums read as they did
        return json.dumps(d, indent=1, sort_keys=True)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        """Read a run record; :class:`CorruptArtifact` (naming the file) if it
        is not one: truncated, not JSON, or with missing or wrong fields."""
        path = Path(path)
        try:
            d = json.loads(path.read_bytes().decode())
            res = cls(**d, path=str(path.parent))
            res._check_fields()
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise CorruptArtifact(
                f"{path} is not a valid run record ({type(e).__name__}: {why})"
            ) from None
        return res

    def _check_fields(self) -> None:
        if not isinstance(self.config, dict) or not isinstance(self.history, list):
            raise TypeError("config must be an object and history a list")
        if not isinstance(self.final, dict) or "test_acc" not in self.final:
            raise KeyError("final.test_acc")
        acc = self.final["test_acc"]
        if acc is not None and not isinstance(acc, (int, float)):
            raise TypeError(f"final.test_acc is {acc!r}")
        self.cfg  # noqa: B018 - the config must still be a valid Config
        if self.files is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.files.items()
        ):
            raise TypeError("files must map names to checksums")

    def verify_files(self, names: list[str] | None = None) -> None:
        """Check the run's files against the checksums in its record (all of
        them, or ``names``); :class:`CorruptArtifact` on the first that is
        missing or changed. A record from before checksums were kept is
        checked by loading its ``model.pt``."""
        if self.path is None:
            raise ValueError("this result has no run folder")
        folder = Path(self.path)
        if self.files is None:
            try:
                torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is corrupt
                raise CorruptArtifact(
                    f"{folder / 'model.pt'} cannot be read ({type(e).__name__})"
                ) from None
            return
        for name in names if names is not None else sorted(self.files):
            if name in self.files:
                verify_file(folder / name, self.files[name])

    def load_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained student (or teacher) of this run, in eval mode."""
        if self.path is None:
            raise ValueError("this result has no run folder to load weights from")
        model = build_model(self.cfg.student, self.cfg.dataset)
        weights = "model.pt" if self.epoch is None else f"model-e{self.epoch}.pt"
        if self.files is not None:
            self.verify_files([weights])
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
        .agg([seed_mean, "std", "count"])
        .reset_index()
    )
    return out.rename(
        columns={"seed_mean": "acc_mean", "std": "acc_std", "count": "seeds"}
    )


def seed_mean(values) -> float:
    """The mean over seeds, summed exactly (``math.fsum``): the same runs give
    the same mean to the last bit whatever order they are added in, so a
    table (:func:`summarize`) and a sentence (:func:`compare`) that print it
    round it the same way."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan
    return math.fsum(vals) / len(vals)


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
    a, b = np.asarray(accs_a, float), np.asarray(accs_b, float)
    mean_a, mean_b = seed_mean(a), seed_mean(b)
    diff = mean_a - mean_b
    spread = max(
        a.std(ddof=1) if len(a) > 1 else 0.0, b.std(ddof=1) if len(b) > 1 else 0.0
    )
    text = (
        f"{name_a} {mean_a:.2f}% vs {name_b} {mean_b:.2f}%: {diff:+.2f} points\n"
        f"({len(a)} vs {len(b)} seeds, largest seed std {spread:.2f} points)\n"
    )
    if len(a) < 2 or len(b) < 2:
        return text + "too few seeds for a test."
    p = stats.welch_p(a, b)
    verdict = "a significant difference" if p < 0.05 else "no significant difference"
    return text + f"Welch t-test p = {p:.3f}: {verdict} at the 5% level."
