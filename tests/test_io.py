"""rankers.io: the one atomic write and the one JSON metadata reader."""
from __future__ import annotations

import pytest

from rankers.io.atomic import atomic_write
from rankers.io.metadata import read_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "run.trec"
    with atomic_write(path) as handle:
        handle.write("first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path) as handle:
        handle.write("half a file")
        raise RuntimeError("boom")
    assert path.read_text() == "first\n"  # the old content, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.trec"]  # no temporary left behind
    with atomic_write(tmp_path / "x.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"


def test_read_json_names_the_file_and_line(tmp_path):
    good = tmp_path / "meta.json"
    good.write_text('{"a": 1}')
    assert read_json(good) == {"a": 1}
    with pytest.raises(ValueError, match=r"missing\.json: not found; not an index"):
        read_json(tmp_path / "missing.json", missing="not an index")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"bad\.json:3: invalid JSON \(.*\); delete it"):
        read_json(bad, invalid="delete it")
