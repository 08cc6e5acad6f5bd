"""book/settings.md states exactly the settings kdutils uses, profile by profile.

The page is hand-written prose around tables; each table row is a setting, and
each profile's cell opens with the value in code font. Here every such value is
compared with what kdutils computes, so the page cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import kdutils as kd
from kdutils.config import make_config
from kdutils.data import DATASETS
from kdutils.loop import make_optimizer
from kdutils.reproduce import table1_rows

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "quick", "paper")
# Described in words only (how results are read), not held in one kdutils value.
DESCRIPTIVE = {"evaluation", "statistic"}


def page_values() -> dict[str, dict[str, object]]:
    """``{setting: {profile: value}}`` from the page's tables."""
    out: dict[str, dict[str, object]] = {}
    header = None
    for line in (ROOT / "book" / "settings.md").read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells, strict=True))
        assert row["setting"] not in out, f"{row['setting']} is on the page twice"
        values = {}
        for p in PROFILES:
            m = re.match(r"`([^`]*)`", row[p])
            assert m, f"{row['setting']}: the {p} cell has no value in code font"
            # literals, and a fraction such as `80 / 300`
            values[p] = eval(m.group(1), {"__builtins__": {}})
        out[row["setting"]] = values
    return out


def kdutils_values() -> dict[str, dict[str, object]]:
    """The same settings as kdutils holds them."""
    fields = [
        "dataset",
        "train_subset",
        "test_subset",
        "val_fraction",
        "augment",
        "teacher",
        "student",
        "epochs",
        "teacher_epochs",
        "momentum",
        "weight_decay",
        "lr",
        "schedule",
        "milestones",
        "gamma",
        "batch_size",
        "teacher_seed",
    ]
    amp = inspect.signature(kd.run).parameters["amp"].default
    t: dict[str, dict[str, object]] = {}
    for p in PROFILES:
        c = make_config(p, method="kd")
        for f in fields:
            t.setdefault(f, {})[p] = getattr(c, f)
        info = DATASETS[c.dataset]
        t.setdefault("normalisation", {})[p] = (info.mean, info.std)
        opt, _ = make_optimizer(kd.build("ce", kd.create_model("resnet8")), c)
        t.setdefault("optimizer", {})[p] = type(opt).__name__
        t.setdefault("nesterov", {})[p] = opt.defaults["nesterov"]
        t.setdefault("precision", {})[p] = "float32" if amp is None else amp
        t.setdefault("takd.assistants", {})[p] = kd.profiles.pipeline_models("takd", p)
        t.setdefault("amtmlkd.teachers", {})[p] = kd.profiles.pipeline_models(
            "multi_teacher", p
        )
        for r in table1_rows():
            if r.family != "direct training":
                for k, v in r.config(p, 0).method_args.items():
                    t.setdefault(f"{r.method}.{k}", {})[p] = v
    # seeds: chapter 13's settings in the profile table (the reproduction's)
    for p in PROFILES:
        t.setdefault("seeds", {})[p] = kd.profiles.chapter("13_comparison", p)["seeds"]
        t.setdefault("tune_seed", {})[p] = kd.reproduce.TUNE_SEED
    return t


PAGE = page_values()
TRUTH = kdutils_values()


def test_the_page_lists_enough_settings():
    assert len(PAGE) >= 80
    for key in ("epochs", "lr", "batch_size", "kd.T", "kd.ce_weight", "seeds"):
        assert key in PAGE


@pytest.mark.parametrize("setting", sorted(set(PAGE) - DESCRIPTIVE))
def test_each_value_on_the_page_is_kdutils_value(setting):
    assert setting in TRUTH, f"{setting} is on the page but not in kdutils"
    for p in PROFILES:
        page, code = PAGE[setting][p], TRUTH[setting][p]
        assert type(page) is type(code), (setting, p, page, code)
        if isinstance(code, float):
            assert page == pytest.approx(code, rel=1e-12), (setting, p)
        else:
            assert page == code, (setting, p)


def test_every_table1_loss_setting_is_on_the_page():
    """A loss setting that matters (its term has a weight) has a row."""
    # Temperatures of terms whose weight is 0, and FitNet's stage-1 lr when
    # there is no stage 1, change nothing; the page says so in prose.
    inert = {"crd.T", "fitnet.T", "irg.T", "rkd.T", "sp.T", "fitnet.init_lr"}
    missing = sorted(k for k in TRUTH if k not in PAGE and k not in inert)
    assert not missing, f"settings of kdutils missing from the page: {missing}"


def test_the_page_credits_no_recipe_to_the_survey():
    text = (ROOT / "book" / "settings.md").read_text()
    assert "the survey does not state its own" in text
    assert not re.search(r"survey's (240|recipe|training recipe)", text)
