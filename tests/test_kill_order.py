"""The order scripts/mutation runs a mutant's tests in (scripts/mutation_order.py): least cost per
chance to kill first, where the cost counts the module and session fixtures a test would set up."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "mutation_order", Path(__file__).resolve().parent.parent / "scripts" / "mutation_order.py"
)
order = sys.modules["mutation_order"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look it up there
_SPEC.loader.exec_module(order)

CHEAP, BUILDS = "tests/test_cheap.py", "tests/test_builds.py"
FILESYSTEMS = f"module|{BUILDS}|tests/test_builds.py|filesystems"  # a module fixture of test_builds.py


@dataclass
class Item:
    nodeid: str

    @property
    def path(self) -> str:
        return self.nodeid.split("::")[0]


def _order(own: dict[str, float], chance: dict[str, float] | None = None, needs=None, fixtures=None) -> list[str]:
    items = [Item(n) for n in own]
    needs = {n: (needs or {}).get(n, []) for n in own}
    chance = {n: (chance or {}).get(n, 0.1) for n in own}
    return [i.nodeid for i in order._greedy(items, own, fixtures or {}, needs, chance)]


def test_with_nothing_known_the_cheapest_test_runs_first_and_a_fixture_is_paid_once():
    own = {f"{BUILDS}::a": 0.2, f"{BUILDS}::b": 0.2, f"{CHEAP}::x": 0.5, f"{CHEAP}::y": 0.1}
    needs = {f"{BUILDS}::a": [FILESYSTEMS], f"{BUILDS}::b": [FILESYSTEMS]}
    assert _order(own, needs=needs, fixtures={FILESYSTEMS: 20.0}) == [
        f"{CHEAP}::y",
        f"{CHEAP}::x",
        f"{BUILDS}::a",
        f"{BUILDS}::b",
    ]
    assert _order(own, needs=needs, fixtures={FILESYSTEMS: 0.01}) == [
        f"{CHEAP}::y",
        f"{BUILDS}::a",
        f"{BUILDS}::b",
        f"{CHEAP}::x",
    ]


def test_a_test_that_killed_the_function_s_mutants_runs_first_unless_its_fixtures_cost_more():
    own = {f"{CHEAP}::x": 0.1, f"{CHEAP}::y": 0.1, f"{BUILDS}::killer": 0.3}
    chance = {f"{BUILDS}::killer": 0.9}
    assert _order(own, chance)[0] == f"{BUILDS}::killer"
    needs = {f"{BUILDS}::killer": [FILESYSTEMS]}
    assert _order(own, chance, needs, {FILESYSTEMS: 30.0})[-1] == f"{BUILDS}::killer"


def test_coming_back_to_a_file_sets_its_module_fixtures_up_again():
    own = {f"{BUILDS}::a": 0.1, f"{BUILDS}::b": 0.1, f"{CHEAP}::x": 0.1, f"{CHEAP}::z": 1.0}
    needs = {f"{BUILDS}::a": [FILESYSTEMS], f"{BUILDS}::b": [FILESYSTEMS]}
    chance = {f"{BUILDS}::a": 1.0, f"{CHEAP}::x": 0.01, f"{BUILDS}::b": 0.005, f"{CHEAP}::z": 0.005}
    # once x has left test_builds.py, b would build the filesystems again: z, slower alone, is cheaper
    assert _order(own, chance, needs, {FILESYSTEMS: 5.0}) == [
        f"{BUILDS}::a",
        f"{CHEAP}::x",
        f"{CHEAP}::z",
        f"{BUILDS}::b",
    ]
