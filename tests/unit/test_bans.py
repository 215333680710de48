"""The bans file: round trip, atomic replace, and a clear error for anything it cannot trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pool.server.bans import Bans, BansFileError, load_bans, save_bans


def test_missing_file_is_no_bans(tmp_path: Path) -> None:
    assert load_bans(tmp_path / "bans.json") == Bans()


def test_round_trip_and_no_temporary_file_left(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    bans = Bans({"10.0.0.7", "::1"}, {"bcrt1qexample.rig1", "bcrt1qother"})
    save_bans(path, bans)
    assert load_bans(path) == bans
    assert json.loads(path.read_text())["ips"] == ["10.0.0.7", "::1"]  # sorted, readable
    save_bans(path, Bans())  # replaced, not appended
    assert load_bans(path) == Bans()
    assert [p.name for p in tmp_path.iterdir()] == ["bans.json"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a version-1 bans file"),
        ('{"ips": []}', "not a version-1 bans file"),
        ('{"version": 2, "ips": []}', "not a version-1 bans file"),
        ('{"version": 1, "ips": "10.0.0.1"}', "'ips' must be a list"),
        ('{"version": 1, "workers": [1]}', "'workers' must be a list"),
        ('{"version": 1, "workers": [""]}', "'workers' must be a list"),
        ('{"version": 1, "ip": ["10.0.0.1"]}', "unknown keys ['ip']"),
    ],
)
def test_a_file_it_cannot_trust_is_an_error_naming_it(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "bans.json"
    path.write_text(text)
    with pytest.raises(BansFileError) as info:
        load_bans(path)
    assert str(path) in str(info.value) and words in str(info.value)


def test_unreadable_bytes_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BansFileError, match="cannot read"):
        load_bans(path)
