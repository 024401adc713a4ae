"""``nexo audit``'s own parts: the state file (the remembered head) and its two option names."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nexo.transparency.audit import RememberedHead
from nexo.transparency.commands import read_state, register, write_state


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["audit", *argv])


def test_state_and_checkpoint_name_the_same_option() -> None:
    assert parse("--state", "a.json").state == "a.json"
    assert parse("--checkpoint", "b.json").state == "b.json"
    assert parse().state is None


def test_the_state_file_remembers_the_latest_head(tmp_path: Path) -> None:
    path = tmp_path / "cron" / "audit-state.json"
    assert read_state(path) is None
    latest = {"index": 7, "tree_size": 6, "sth_hash": "c3RoLWhhc2g="}
    write_state(path, latest)
    assert json.loads(path.read_text()) == latest
    assert not path.with_suffix(".json.tmp").exists()
    assert read_state(path) == RememberedHead(7, "c3RoLWhhc2g=", str(path))


def test_a_foreign_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"size": 3}')
    with pytest.raises(ValueError, match="not an STH remembered by nexo audit"):
        read_state(path)
