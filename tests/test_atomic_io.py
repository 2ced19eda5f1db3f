"""objpretrain.utils.atomic_io: a failed write leaves the previous file whole and no temporary file behind."""
import json
import os

import pytest

from objpretrain.utils.atomic_io import atomic_write, atomic_write_bytes, atomic_write_json


def test_atomic_writes_replace_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_bytes(str(path), b"[2]")
    assert json.loads(path.read_text()) == [2]


def test_a_failing_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "checkpoint.bin"
    atomic_write_bytes(str(path), b"good")

    def half_then_crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), half_then_crash)
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["checkpoint.bin"]
