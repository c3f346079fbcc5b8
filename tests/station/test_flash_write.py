"""flash's write path: ranges copied in the kernel while a thread checks their sha256; a fresh
file target skips the first zeroing; a checksum mismatch stops before the partition table is
written, so the card never looks finished."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from support.units import one_unit

from imagetools.image.probe import TABLE_AREA
from imagetools.published import materialize
from imagetools.station import flash as station
from imagetools.station.plan import plan_unit

pytestmark = pytest.mark.integration


@pytest.fixture
def unit(make_image, tmp_path) -> tuple[Path, Path]:
    return one_unit(make_image, tmp_path)


@pytest.mark.parametrize("prefill", [None, b"", b"random"])
def test_flash_writes_exactly_the_materialized_image(unit, tmp_path, prefill):
    base, unit_dir = unit
    card = tmp_path / "card.img"
    if prefill == b"random":
        card.write_bytes(os.urandom(base.stat().st_size))
    elif prefill == b"":
        card.write_bytes(b"")
    [result] = station.flash([(str(card), plan_unit(base, unit_dir))], again=True)
    assert result["ok"], result["error"]
    materialize(unit_dir, tmp_path / "m.sdimg", base)
    assert card.read_bytes() == (tmp_path / "m.sdimg").read_bytes()


def test_a_checksum_mismatch_leaves_no_partition_table(unit, tmp_path):
    base, unit_dir = unit
    plan = plan_unit(base, unit_dir)
    bad = dataclasses.replace(plan.ranges[-1], sha256="0" * 64)
    plan = dataclasses.replace(plan, ranges=plan.ranges[:-1] + (bad,))
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(plan.size))  # a used card: its old table must not survive either
    [result] = station.flash([(str(card), plan)])
    assert not result["ok"] and "do not match their bmap checksum" in result["error"]
    with open(card, "rb") as f:
        assert f.read(TABLE_AREA) == bytes(TABLE_AREA)
        f.seek(plan.size - TABLE_AREA)
        assert f.read() == bytes(TABLE_AREA)


def test_a_read_error_while_checking_fails_the_flash_and_leaves_no_partition_table(unit, tmp_path, monkeypatch):
    """The checksum thread reads the source on its own (preadv, while copy_file_range copies): an
    error there must fail the card like a mismatch, not pass as 'nothing wrong found'."""
    base, unit_dir = unit
    plan = plan_unit(base, unit_dir)

    def failing_preadv(fd, buffers, offset):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing_preadv)
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(plan.size))
    [result] = station.flash([(str(card), plan)])
    assert not result["ok"] and result["error"] == f"{card}: Input/output error"
    with open(card, "rb") as f:
        assert f.read(TABLE_AREA) == bytes(TABLE_AREA)
        f.seek(plan.size - TABLE_AREA)
        assert f.read() == bytes(TABLE_AREA)
