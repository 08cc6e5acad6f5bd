"""The command line: listings, one-line errors with exit status 2, a real tiny run."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.datasets

import kdutils as kd
from kdutils import data as kdata
from kdutils import train as ktrain
from kdutils.cli import main
from kdutils.results import Result

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--profile",
    "smoke",
    "--dataset",
    "digits",
    "--teacher",
    "resnet8",
    "--student",
    "resnet8",
]
TINY += ["--epochs", "1", "--no-progress", "--device", "cpu"]


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "kdutils", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_python_m_kdutils_methods_lists_every_method_with_its_section():
    proc = _python_m("methods")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, cls in kd.METHODS.items():
        i = next((i for i, ln in enumerate(lines) if ln.split()[:1] == [name]), None)
        assert i is not None, f"{name} missing from:\n{proc.stdout}"
        assert "§" + cls.survey_section in lines[i]
        status = kd.distillers.describe_status(
            cls.status, cls.survey_section, year=cls.status_year
        )
        assert status in lines[i]
        if cls.status == "stand-in":
            assert f"stands in for {cls.status_note}" in lines[i + 1]
    assert any(ln.startswith("kd ") and "in the survey, §1 " in ln for ln in lines)


@functools.cache  # one `python -m kdutils methods` for every row checked below
def _methods_listing() -> str:
    proc = _python_m("methods")
    assert proc.returncode == 0, proc.stderr[-1500:]
    return proc.stdout


# What the survey describes, and what it does not (its reference list has no
# Heo, Kim 2018, Ahn, Huang & Wang, Passalis, Peng, Jin 2019 or Furlanello).
@pytest.mark.parametrize(
    "name, line",
    [
        ("ab", "added by this book, beside §2.2.1"),
        ("ft", "added by this book, beside §2.2.1"),
        ("vid", "added by this book, beside §2.2.1"),
        ("nst", "added by this book, beside §2.2.2"),
        ("pkt", "added by this book, beside §2.2.3"),
        ("cc", "added by this book, beside §2.2.3"),
        ("rco", "added by this book, beside §2.3.4"),
        ("avgkd", "stand-in, §2.3.3"),
        ("advfeat", "stand-in, §2.3.5"),
        ("fitnet", "in the survey, §2.2.1"),
        ("dkd", "after the survey (2022), beside §2.1"),
        ("dist", "after the survey (2022), beside §2.1"),
        ("nkd", "after the survey (2023), beside §2.1"),
        ("ctkd", "after the survey (2023), beside §2.1"),
        ("kd_ls", "after the survey (2024), beside §2.1"),
        ("dkd_ls", "after the survey (2024), beside §2.1"),
        ("ce", "baseline, Table 1 (§4)"),
        ("pipelines.kd_search", "stand-in, §3.1"),
        ("pipelines.channel_planting", "stand-in, §3.1"),
        ("pipelines.born_again", "added by this book, beside §2.3.4"),
        ("pipelines.takd", "in the survey, §3.2"),
        ("rocket", "in the survey, §2.2.1"),
        ("kp", "stand-in, §2.2.1"),
        ("mgd", "in the survey, §2.2.2"),
        ("crcd", "in the survey, §2.2.3"),
        ("feed", "stand-in, §2.3.3"),
        ("advonline", "stand-in, §2.3.5"),
        ("mlkd", "after the survey (2023), beside §2.1"),
        ("pipelines.stepwise_rkd", "stand-in, §3.2"),
    ],
)
def test_methods_says_where_each_method_comes_from(name, line):
    out = _methods_listing().splitlines()
    row = next(ln for ln in out if ln.split()[:1] == [name])
    assert line in row


def test_python_m_kdutils_unknown_method_is_one_line_and_status_2():
    proc = _python_m("train", "--method", "nosuch", "--profile", "smoke")
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "nosuch" in line and "kd" in line and "ce" in line


def test_models_lists_the_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    resnet20 = next(ln for ln in out.splitlines() if ln.startswith("resnet20 "))
    assert "272,474" in resnet20


@pytest.mark.parametrize(
    "args, bad, choices",
    [
        (["--method", "nosuch"], "nosuch", list(kd.METHODS)),
        (["--student", "resnet7"], "resnet7", ["resnet8", "resnet20", "resnet56"]),
        (["--teacher", "resnet9"], "resnet9", ["resnet8", "resnet20", "resnet56"]),
        (["--dataset", "svhn"], "svhn", list(kdata.DATASETS)),
        (["--profile", "fast"], "fast", ["smoke", "quick", "paper"]),
        (["--set", "temperature=4"], "temperature", ["T", "ce_weight", "kd_weight"]),
        (["--epochs", "0"], "epochs", []),
    ],
)
def test_bad_train_arguments_exit_2_with_one_line(args, bad, choices, capsys, tmp_path):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    line = _one_line_error(err)
    assert bad in line
    for c in choices:
        assert c in line
    assert not (tmp_path / "kd-cache" / "runs").exists()


@pytest.mark.parametrize(
    "args", [["train", "--seed", "abc"], ["bogus"], ["train", "--set", "T"]]
)
def test_usage_errors_exit_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    _one_line_error(capsys.readouterr().err)


def test_invalid_hyperparameter_value_exits_2_before_training_anything(
    capsys, tmp_path, monkeypatch
):
    """``train --set T=-1`` must fail at once, not after training the teacher."""

    def no_training(*args, **kwargs):
        raise AssertionError("kdutils trained a model before validating T=-1")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(ktrain, "fit", no_training)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    assert main(["train", "--set", "T=-1"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "T" in line and "-1" in line
    assert not (tmp_path / "kd-cache" / "runs").exists()


def test_a_real_tiny_train(capsys):
    assert main(["train", *TINY, "--set", "T=8"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip().splitlines()[-1].removeprefix("result: "))
    assert path.name == "result.json" and path.exists()
    res = Result.load(path)
    assert res.config["method"] == "kd" and res.config["dataset"] == "digits"
    assert res.config["epochs"] == 1 and res.config["method_args"]["T"] == 8
    assert res.teacher is not None
    assert main(["train", *TINY, "--set", "T=8"]) == 0
    assert "[cache]" in capsys.readouterr().out


def test_ctrl_c_then_resume(capsys, monkeypatch):
    original = kdata.Loader.__iter__

    def interrupted(self):
        for i, batch in enumerate(original(self)):
            if self.shuffle and self.epoch == 1 and i == 1:
                raise KeyboardInterrupt
            yield batch

    args = ["train", *TINY, "--method", "ce", "--epochs", "2"]
    with monkeypatch.context() as m:
        m.setattr(kdata.Loader, "__iter__", interrupted)
        assert main(args) == 130
    captured = capsys.readouterr()
    assert "--resume" in captured.out + captured.err
    # Without --resume or --restart the partial run is an error ...
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--resume" in line and "--restart" in line
    # ... and with --resume it finishes.
    assert main([*args, "--resume"]) == 0
    assert "[resume]" in capsys.readouterr().out


def test_cifar10_without_data_or_network_exits_1_with_what_to_do(capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    code = main(
        ["train", "--profile", "smoke", "--dataset", "cifar10", "--no-progress"]
    )
    assert code == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "KD_DATA_DIR" in line and "fashion-mnist" in line


def test_train_with_amp_is_its_own_run_and_fp16_needs_cuda(capsys):
    assert main(["train", *TINY, "--amp", "bf16"]) == 0
    path = Path(
        capsys.readouterr().out.strip().splitlines()[-1].removeprefix("result: ")
    )
    res = Result.load(path)
    assert res.provenance["amp"] == "bf16" and "amp-bf16" not in res.name
    # The float32 run is another cache entry: it trains, it is not loaded.
    assert main(["train", *TINY]) == 0
    out = capsys.readouterr().out
    assert f"[train] {res.name}" in out  # the student trains again, in float32
    plain = Path(out.strip().splitlines()[-1].removeprefix("result: "))
    assert plain.parent != path.parent
    if not torch.cuda.is_available():
        assert main(["train", *TINY, "--amp", "fp16", "--device", "cpu"]) == 2
        assert "fp16" in _one_line_error(capsys.readouterr().err)


def test_reproduce_with_a_bad_profile_creates_nothing(tmp_path):
    out = tmp_path / "table"
    proc = _python_m("reproduce", "--profile", "bogus", "--out", str(out))
    assert proc.returncode == 2
    assert "bogus" in _one_line_error(proc.stderr)
    assert not out.exists()


def test_an_interrupt_says_whether_anything_was_checkpointed(tmp_path, monkeypatch):
    from kdutils.cli import _interrupted

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    old = tmp_path / "runs" / "kd-old-run" / "checkpoint.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    os.utime(old, (1, 1))  # written long before this command
    assert "nothing was checkpointed" in _interrupted(since=100.0)
    new = tmp_path / "runs" / "kd-this-run" / "checkpoint.pt"
    new.parent.mkdir()
    new.write_bytes(b"x")
    line = _interrupted(since=100.0)
    assert "kd-this-run" in line and "--resume" in line and "kd-old-run" not in line
