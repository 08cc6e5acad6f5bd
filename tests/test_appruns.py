"""The application runs' engine: cache, key, resume, corruption, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from kdutils import appruns
from kdutils.errors import CorruptArtifact
from kdutils.loop import NonFiniteLoss


@dataclass(frozen=True)
class Toy:
    seed: int = 0
    epochs: int = 3
    eval_every: int | None = None
    lr: float = 0.1
    nan_at: int = -1  # the epoch whose loss becomes NaN (tests only)

    @property
    def name(self) -> str:
        return f"toy-s{self.seed}"


class Stop(Exception):
    pass


class ToySession:
    """A linear regression on fixed data, with dropout so the global torch
    seed matters, trained by SGD over batches drawn from ``gen``."""

    stop_after: int | None = None  # raise Stop after this many epochs

    def __init__(self, cfg: Toy, device: torch.device) -> None:
        self.cfg = cfg
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(64, 5, generator=g)
        self.y = self.x @ torch.arange(5.0) + 0.1 * torch.randn(64, generator=g)
        self.model = nn.Sequential(nn.Dropout(0.2), nn.Linear(5, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9)
        self.state = {"model": self.model, "opt": self.opt}
        self.steps_per_epoch = 4
        self.epochs_done = 0

    def train_epoch(self, epoch, gen, tick):
        self.model.train()
        order = torch.randperm(64, generator=gen)
        total = 0.0
        for i in range(4):
            idx = order[16 * i : 16 * (i + 1)]
            loss = ((self.model(self.x[idx]).squeeze(1) - self.y[idx]) ** 2).mean()
            if epoch == self.cfg.nan_at:
                loss = loss * float("nan")
            value = appruns.check_finite(loss, {"mse": loss.item()})
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += value
            tick()
        self.epochs_done += 1
        if (
            ToySession.stop_after is not None
            and self.epochs_done >= ToySession.stop_after
        ):
            raise Stop
        return {"mse": total / 4}

    def evaluate(self):
        self.model.eval()
        with torch.no_grad():
            err = ((self.model(self.x).squeeze(1) - self.y) ** 2).mean()
        return {"mse": float(err)}

    def files(self):
        return {"model.pt": self.model.state_dict()}

    def info(self):
        return {"params": sum(p.numel() for p in self.model.parameters())}


def _run(cfg: Toy, **kw) -> appruns.AppResult:
    return appruns.run_app(
        cfg,
        kind="toy",
        version=1,
        setup=ToySession,
        headline=lambda m: f"mse {m['mse']:.4f}",
        progress=False,
        **kw,
    )


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    ToySession.stop_after = None


def test_a_run_is_trained_once_then_loaded_with_the_same_record(capsys):
    first = _run(Toy())
    assert "[done] toy-s0" in capsys.readouterr().out
    again = _run(Toy())
    assert "[cache] toy-s0" in capsys.readouterr().out
    assert again.from_cache and not first.from_cache
    assert again.metrics == first.metrics and again.history == first.history
    assert again.info == {"params": 6}
    assert [h["epoch"] for h in first.history] == [1, 2, 3]
    assert [h["test"] is None for h in first.history] == [True, True, False]
    w = again.load_into(nn.Sequential(nn.Dropout(0.2), nn.Linear(5, 1)))
    assert not w.training
    assert torch.equal(w[1].weight, again.state_dict()["1.weight"])
    assert first.provenance["versions"] == {"core": appruns.CORE_VERSION, "toy": 1}


def test_the_key_holds_the_config_and_version_but_not_eval_every():
    key = appruns.app_key(Toy(), "toy", 1)
    assert appruns.app_key(Toy(eval_every=1), "toy", 1) == key
    assert appruns.app_key(Toy(lr=0.2), "toy", 1) != key
    assert appruns.app_key(Toy(), "toy", 2) != key
    assert appruns.app_key(Toy(), "other", 1) != key


def test_a_cached_run_that_did_not_evaluate_an_epoch_asked_for_is_trained_again(
    capsys,
):
    _run(Toy())
    capsys.readouterr()
    res = _run(Toy(eval_every=1))
    assert "did not evaluate every epoch" in capsys.readouterr().out
    assert all(h["test"] is not None for h in res.history)
    assert not res.from_cache


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, monkeypatch, capsys
):
    whole = _run(Toy())
    w_whole = whole.state_dict()
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "other"))
    ToySession.stop_after = 2
    with pytest.raises(Stop):
        _run(Toy())
    ToySession.stop_after = None
    capsys.readouterr()
    resumed = _run(Toy())
    assert "[resume] toy-s0: continuing after epoch 1/3" in capsys.readouterr().out
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, w_whole[k]), k
    assert resumed.metrics == whole.metrics
    assert [h["train"] for h in resumed.history] == [h["train"] for h in whole.history]


def test_resume_false_discards_the_partial_run(capsys):
    ToySession.stop_after = 2
    with pytest.raises(Stop):
        _run(Toy())
    ToySession.stop_after = None
    capsys.readouterr()
    _run(Toy(), resume=False)
    assert "[restart] toy-s0" in capsys.readouterr().out


def test_a_corrupt_record_or_file_is_set_aside_and_the_run_trained_again(capsys):
    res = _run(Toy())
    model = f"{res.path}/model.pt"
    with open(model, "r+b") as f:
        f.write(b"xx")
    capsys.readouterr()
    again = _run(Toy())
    assert "[corrupt]" in capsys.readouterr().out and not again.from_cache
    with open(f"{again.path}/result.json", "w") as f:
        f.write("{not json")
    with pytest.raises(CorruptArtifact):
        appruns.AppResult.load(f"{again.path}/result.json")
    third = _run(Toy())
    assert not third.from_cache
    assert third.metrics == res.metrics


def test_a_nonfinite_loss_stops_the_run_with_one_clear_error():
    with pytest.raises(NonFiniteLoss, match="mse=nan"):
        _run(Toy(nan_at=1))


def test_a_missing_file_and_a_non_dataclass_config_are_refused():
    res = _run(Toy())
    with pytest.raises(KeyError, match="kept no file 'adapters.pt'"):
        res.state_dict("adapters.pt")
    with pytest.raises(ValueError, match="must be a dataclass"):
        appruns.app_key(object(), "toy", 1)


def test_the_record_is_json_with_sorted_keys_and_no_local_fields():
    res = _run(Toy())
    d = json.loads(open(f"{res.path}/result.json").read())
    assert "path" not in d and "from_cache" not in d
    assert d["config"] == {
        "seed": 0,
        "epochs": 3,
        "eval_every": None,
        "lr": 0.1,
        "nan_at": -1,
    }
    assert appruns.evaluated_epochs(6, 4) == {4, 6}
    assert appruns.evaluated_epochs(3, None) == {3}
