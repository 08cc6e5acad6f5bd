"""Can any teacher verify the held-out classes better than chapter 17's student?

    python scripts/face_teacher_search.py [--seeds 0 1 2] [--out FILE.json]

At the ``quick`` scale of chapter 17 the teacher verified the held-out pairs
no better than the student alone, so no distillation method had anything to
hand on. This script asks whether that is the teacher's recipe or the
stand-in itself: it trains (or loads from the run cache, ``KD_CACHE_DIR``)
the chapter's ``quick`` face runs with one setting changed at a time, for
the teacher network (training length, data, depth, ArcFace's margin and
scale, weight decay) and for students of decreasing width, over the seeds,
and writes every run's metrics, key, training time and provenance to
``results/faces/teacher_search.json``. Chapter 17 reads that file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdutils.face_train import FACE_PROFILES, face_config, run_face  # noqa: E402
from kdutils.provenance import cpu_name  # noqa: E402

TEACHER = FACE_PROFILES["quick"]["teacher"]
# (name, what changed, overrides of face_config("quick", "none")); the first
# two are the chapter's own student and teacher.
VARIANTS: list[tuple[str, str, dict]] = [
    ("student", "the chapter's student (2 epochs)", {}),
    ("teacher", "the chapter's teacher (3 epochs)", dict(model=TEACHER, epochs=3)),
    ("teacher, 1 epoch", "shorter training", dict(model=TEACHER, epochs=1)),
    ("teacher, 2 epochs", "shorter training", dict(model=TEACHER, epochs=2)),
    (
        "teacher, all images",
        "all 36000 training images (3 epochs)",
        dict(model=TEACHER, epochs=3, train_images=None),
    ),
    (
        "teacher, 2 convs a stage",
        "twice the depth (3 epochs)",
        dict(model=TEACHER + "_c2", epochs=3),
    ),
    (
        "teacher, margin 0.1",
        "ArcFace margin 0.1",
        dict(model=TEACHER, epochs=3, margin=0.1),
    ),
    (
        "teacher, margin 0",
        "no margin (a normalised softmax)",
        dict(model=TEACHER, epochs=3, margin=0.0),
    ),
    ("teacher, scale 8", "ArcFace scale 8", dict(model=TEACHER, epochs=3, scale=8.0)),
    (
        "teacher, weight decay 5e-3",
        "ten times the weight decay",
        dict(model=TEACHER, epochs=3, weight_decay=5e-3),
    ),
    ("student, 1 epoch", "shorter training", dict(epochs=1)),
    ("student, half width", "widths 4-8-16", dict(model="cnn_w4-8-16")),
    ("student, quarter width", "widths 2-4-8", dict(model="cnn_w2-4-8")),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "results/faces/teacher_search.json"))
    args = ap.parse_args(argv)
    rows = []
    for name, change, overrides in VARIANTS:
        for seed in args.seeds:
            res = run_face(face_config("quick", "none", seed=seed, **overrides))
            rows.append(
                {
                    "variant": name,
                    "change": change,
                    "overrides": overrides,
                    "seed": seed,
                    "model": res.config["model"],
                    "params": res.info["params"],
                    "metrics": res.metrics,
                    "seconds": res.seconds,
                    "key": res.key,
                    "provenance": res.provenance,
                }
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "what": __doc__.split("\n\n")[2].strip().replace("\n", " "),
        "profile": "quick",
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "seeds": args.seeds,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": rows,
    }
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(rows)} runs -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
