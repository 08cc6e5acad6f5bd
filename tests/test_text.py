"""The fortune corpus: files, entries, vocabulary, the split by fortune, windows."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from kdutils import text
from kdutils.errors import EnvironmentProblem

FILE_A = "First fortune.\n\t-- Someone\n%\nSecond\none.\n%\n%\n\n%\nCaf\u00e9 \u00fcber\x08\x07 ok\n"
FILE_B = "Only one, without a final separator"


def write_fortunes(folder, files=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (files or {"alpha": FILE_A, "beta": FILE_B}).items():
        (folder / name).write_text(body, encoding="utf-8")
    # what the Debian package ships beside each file: an index and a link
    (folder / "alpha.dat").write_bytes(b"\x00\x01binary index")
    os.symlink(folder / "alpha", folder / "alpha.u8")
    return folder


def test_vocabulary_is_newline_and_printable_ascii():
    assert len(text.VOCAB) == 96 and text.VOCAB[0] == "\n"
    assert text.VOCAB[1:] == "".join(chr(c) for c in range(32, 127))
    s = "Hello, World!\n~ {x}"
    ids = text.encode(s)
    assert ids.dtype == torch.long
    assert ids.tolist() == [text.VOCAB.index(ch) for ch in s]
    assert text.decode(ids) == s
    assert text.encode("").shape == (0,)


def test_a_character_outside_the_vocabulary_is_one_clear_error():
    with pytest.raises(
        ValueError, match=r"outside the vocabulary.*'é'.*printable ASCII"
    ):
        text.encode("café")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        text.encode("a\tb")
    with pytest.raises(ValueError, match=r"in \[0, 96\)"):
        text.decode([0, 96])


def test_clean_expands_tabs_and_drops_the_rest():
    assert text.clean("a\tb") == "a" + " " * 7 + "b"
    assert text.clean("\tx") == " " * 8 + "x"
    assert text.clean("Caf\u00e9 \u00fcber\x08\x07\r\n") == "Caf ber\n"


def test_read_fortunes_splits_entries_and_skips_index_files(tmp_path):
    folder = write_fortunes(tmp_path / "f")
    got = text.read_fortunes(folder)
    assert got == [
        "First fortune.\n        -- Someone",
        "Second\none.",
        "Caf ber ok",
        "Only one, without a final separator",
    ]


def test_lookup_order_root_then_env_then_system(tmp_path, monkeypatch):
    root = write_fortunes(tmp_path / "root", {"r": "from root\n"})
    write_fortunes(tmp_path / "env" / "fortunes", {"e": "from env\n"})
    system = write_fortunes(tmp_path / "system", {"s": "from system\n"})
    monkeypatch.setattr(text, "SYSTEM_DIR", system)
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "env"))
    assert text.read_fortunes(root) == ["from root"]
    assert text.read_fortunes() == ["from env"]
    monkeypatch.delenv("KD_DATA_DIR")
    assert text.read_fortunes() == ["from system"]
    # an empty explicit folder falls through to the next candidate
    (tmp_path / "empty").mkdir()
    assert text.find_fortunes(tmp_path / "empty") == system


def test_missing_fortunes_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(text.TextUnavailable, match="apt install fortunes") as e:
        text.load_corpus()
    assert isinstance(e.value, EnvironmentProblem)
    assert str(tmp_path / "nowhere") in str(e.value)


def test_split_is_by_fortune_hash_and_stable():
    def independent(s):
        bucket = (
            int.from_bytes(hashlib.sha256(s.encode("utf-8")).digest()[:4], "big") % 100
        )
        return "train" if bucket < 90 else "val" if bucket < 95 else "test"

    fortunes = [f"fortune number {i}\n-- nobody" for i in range(4000)]
    splits = [text.split_of(f) for f in fortunes]
    assert splits == [independent(f) for f in fortunes]
    share = {s: splits.count(s) / len(splits) for s in text.SPLITS}
    assert 0.87 < share["train"] < 0.93
    assert 0.03 < share["val"] < 0.07 and 0.03 < share["test"] < 0.07
    # fixed values: the split must not change between machines or versions
    golden = {"q7": "train", "q8": "val", "q34": "test", "A": "train"}
    assert {k: text.split_of(k) for k in golden} == golden
    assert text.split_of("duplicate") == text.split_of("duplicate")


def test_corpus_streams_hold_each_split_in_file_order(tmp_path):
    body = "\n%\n".join(f"Saying {i}: keep calm." for i in range(300)) + "\n"
    folder = write_fortunes(tmp_path / "f", {"sayings": body})
    corpus = text.load_corpus(folder)
    fortunes = [f"Saying {i}: keep calm." for i in range(300)]
    for split in text.SPLITS:
        mine = [f for f in fortunes if text.split_of(f) == split]
        assert corpus.counts[split] == len(mine)
        assert text.decode(corpus.split(split)) == "".join(f + "\n%\n" for f in mine)
    assert sum(corpus.counts.values()) == 300
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.split("dev")


def test_windows_are_shifted_by_one():
    ids = torch.arange(50)
    g = torch.Generator().manual_seed(0)
    x, y = text.windows(ids, 8, 5, g)
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)  # the stream is 0, 1, 2, ...
    assert int(y.max()) <= 49
    with pytest.raises(ValueError, match="fewer than context"):
        text.windows(torch.arange(8), 8, 2, g)
