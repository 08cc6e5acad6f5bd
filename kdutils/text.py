"""English text for the language-model chapter: Debian's ``fortunes``.

The corpus is the plain fortune files of the Debian package ``fortunes``
(about 2.6 MB of English: quotations, jokes, definitions, verse), read from
``/usr/share/games/fortunes`` (survey §5.5 runs on such a corpus here because
it ships offline; the works it cites use Wikipedia, books and GLUE).

- **Files.** Every plain file of the folder except the ``.dat`` index files
  and the ``.u8`` links; Debian's package holds no offensive set.
- **Fortunes.** A file holds entries separated by lines that are a single
  ``%``; an entry, stripped of surrounding blank lines, is one fortune.
- **Vocabulary.** Characters: the newline and the 95 printable ASCII
  characters (space to ``~``), 96 symbols. Reading a file expands tabs to
  8-column stops and *drops* every other character (the few backspaces, bells
  and non-ASCII letters of the package, about 0.02% of it). A prompt given
  by a user is not cleaned: a character outside the vocabulary is an error.
- **Split.** By fortune, never by character: a fortune's split is decided by
  the SHA-256 of its text (90% train, 5% validation, 5% test), so it is the
  same on every machine and Python version, and duplicated fortunes fall in
  the same split.
- **Stream.** Each split's fortunes, in file order, joined into one text as
  in the files: every fortune followed by ``"\\n%\\n"``; the model learns the
  ``%`` line as the end of a fortune.

Look-up order for the folder: explicit ``root``, then ``$KD_DATA_DIR/fortunes``,
then ``/usr/share/games/fortunes``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import EnvironmentProblem

__all__ = [
    "SEPARATOR",
    "SPLITS",
    "SYSTEM_DIR",
    "VOCAB",
    "Corpus",
    "TextUnavailable",
    "clean",
    "decode",
    "encode",
    "find_fortunes",
    "load_corpus",
    "read_fortunes",
    "split_of",
    "windows",
]

SYSTEM_DIR = Path("/usr/share/games/fortunes")
# Index 0 is the newline, then ' ' (1) ... '~' (95).
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
SPLITS = ("train", "val", "test")
# What follows every fortune in a split's stream (the files' own separator).
SEPARATOR = "\n%\n"


class TextUnavailable(EnvironmentProblem):
    """The fortune files are not on this machine."""


def clean(text: str) -> str:
    """``text`` in the vocabulary: tabs expanded to 8-column stops, carriage
    returns and every other character outside :data:`VOCAB` dropped."""
    text = text.replace("\r", "").expandtabs(8)
    if set(text) <= _INDEX.keys():
        return text
    return "".join(ch for ch in text if ch in _INDEX)


def encode(text: str) -> Tensor:
    """Character ids of ``text`` (a ``(len(text),)`` long tensor).

    ``ValueError`` naming the characters outside :data:`VOCAB` (the newline and
    printable ASCII); :func:`clean` maps a text into it.
    """
    bad = sorted(set(text) - _INDEX.keys())
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:10])
        raise ValueError(
            f"the text has {len(bad)} character(s) outside the vocabulary ({shown}); "
            "allowed: the newline and printable ASCII (' ' to '~'); "
            "kd.text.clean(text) drops the others"
        )
    if not text:
        return torch.zeros(0, dtype=torch.long)
    # newline (10) -> 0, ' ' (32) ... '~' (126) -> 1 ... 95
    codes = torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8)
    return torch.where(codes == 10, 0, codes.long() - 31)


def decode(ids: Tensor | list[int]) -> str:
    """The text of character ids (the inverse of :func:`encode`)."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if any(not 0 <= i < len(VOCAB) for i in ids):
        raise ValueError(f"character ids must be in [0, {len(VOCAB)})")
    return "".join(VOCAB[i] for i in ids)


def _fortune_files(folder: Path) -> list[Path]:
    """The plain fortune files of ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and not p.name.startswith(".")
    )


def find_fortunes(root: str | os.PathLike | None = None) -> Path:
    """The folder of fortune files: ``root``, else ``$KD_DATA_DIR/fortunes``,
    else :data:`SYSTEM_DIR`; :class:`TextUnavailable` if none has any."""
    candidates = []
    if root is not None:
        candidates.append(Path(root))
    if os.environ.get("KD_DATA_DIR"):
        candidates.append(Path(os.environ["KD_DATA_DIR"]) / "fortunes")
    candidates.append(SYSTEM_DIR)
    for folder in candidates:
        if _fortune_files(folder):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise TextUnavailable(
        f"no fortune files found (looked in {looked}). On Debian or Ubuntu: "
        "`apt install fortunes` (what `make setup` does); elsewhere, put plain "
        "fortune files (entries separated by lines '%') in $KD_DATA_DIR/fortunes "
        "or pass root=<folder>."
    )


def read_fortunes(root: str | os.PathLike | None = None) -> list[str]:
    """Every fortune of the folder :func:`find_fortunes` finds, cleaned, in
    file order (files sorted by name); empty entries are skipped."""
    fortunes: list[str] = []
    for path in _fortune_files(find_fortunes(root)):
        text = path.read_bytes().decode("utf-8", errors="replace")
        entry: list[str] = []
        for line in [*text.split("\n"), "%"]:
            if line.rstrip("\r") == "%":
                body = clean("\n".join(entry)).strip("\n")
                if body.strip():
                    fortunes.append(body)
                entry = []
            else:
                entry.append(line)
    return fortunes


def split_of(fortune: str) -> str:
    """``"train"`` (90%), ``"val"`` (5%) or ``"test"`` (5%), from the SHA-256
    of the fortune's UTF-8 text."""
    bucket = int(hashlib.sha256(fortune.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else ("val" if bucket < 95 else "test")


@dataclass(frozen=True)
class Corpus:
    """The three splits as character-id streams, and how many fortunes each
    holds."""

    train: Tensor
    val: Tensor
    test: Tensor
    counts: dict[str, int]
    folder: str

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def load_corpus(root: str | os.PathLike | None = None) -> Corpus:
    """The fortunes split by :func:`split_of`, each split one stream of ids
    (every fortune followed by :data:`SEPARATOR`)."""
    folder = find_fortunes(root)
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for fortune in read_fortunes(folder):
        parts[split_of(fortune)].append(fortune + SEPARATOR)
    return Corpus(
        **{s: encode("".join(parts[s])) for s in SPLITS},
        counts={s: len(parts[s]) for s in SPLITS},
        folder=str(folder),
    )


def windows(
    ids: Tensor, context: int, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A batch of random windows of a stream: inputs ``(B, context)`` and
    targets ``(B, context)``, the inputs shifted by one character."""
    if len(ids) < context + 1:
        raise ValueError(
            f"the stream has {len(ids)} characters, fewer than context + 1 = {context + 1}"
        )
    start = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    idx = start[:, None] + torch.arange(context + 1)
    chunk = ids[idx]
    return chunk[:, :-1], chunk[:, 1:]
