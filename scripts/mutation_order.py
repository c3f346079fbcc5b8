"""pytest plugin of scripts/mutation: the order of a mutant's tests, and a bound on each test's time.

Under mutmut a mutant's run stops at its first failing test, so its cost is what runs before that
test. In the stats run (every selected test, once, unmutated) this plugin records what each test
costs: its own setup, call and teardown, and apart from those the module and session fixtures it
needs, which only the first of their tests pays (mutmut's own durations count only the call). Under
a mutant, it records which test killed it (or that none did), in mutants/mutation-kills/, one file
per function. The next mutants of that function run their tests greedily by cost per expected kill:
a test's chance to kill is its record on the function's earlier mutants, drawn towards its record on
the whole run while there are few; its cost includes the fixtures not yet set up where it would run
(a module's fixtures are built again when the run comes back to its file).

A test taking more than TIME_FACTOR times its cost in the stats run, plus SLACK seconds, fails (a
mutant looping forever is killed in seconds, not after mutmut's bound on the whole run).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

COSTS = Path("mutation-costs.json").absolute()  # in mutants/, where mutmut starts pytest (tests may chdir)
KILLS = Path("mutation-kills").absolute()
TIMED = Path("mutation-timed").absolute()  # the mutants a test's time bound killed, one per line
TIME_FACTOR = 10
SLACK = 4.0
PRIOR = 2.0  # earlier mutants of other functions weigh as this many of the function's own
SURVIVED = "-"


def _mutant() -> str:
    return os.environ.get("MUTANT_UNDER_TEST", "")


def _function(mutant: str) -> str:
    return mutant.split("__mutmut_")[0]


# --- the stats run: what each test costs ---------------------------------------------------------
@dataclass
class _Costs:
    own: Counter = field(default_factory=Counter)  # nodeid -> seconds without the shared fixtures
    fixtures: dict[str, float] = field(default_factory=dict)  # key -> its setup's seconds
    needs: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> keys of its shared fixtures
    built: float = 0.0  # shared fixtures' setup within the current test's setup

    def save(self) -> None:
        """Merged into the saved costs: with --keep, mutmut's stats run covers only new tests."""
        saved = json.loads(COSTS.read_text()) if COSTS.is_file() else {}
        mine = {"own": self.own, "fixtures": self.fixtures, "needs": self.needs}
        COSTS.write_text(json.dumps({k: {**saved.get(k, {}), **v} for k, v in mine.items()}))


def _key(fixturedef, path: Path) -> str:
    """Session fixtures live for the whole run; the others (module, class, package) for one file."""
    where = "" if fixturedef.scope == "session" else str(path)
    return f"{fixturedef.scope}|{where}|{fixturedef.baseid}|{fixturedef.argname}"


def _shared(item) -> list:
    defs = getattr(item, "_fixtureinfo", None)
    found = []
    for name in item.fixturenames:
        chain = defs.name2fixturedefs.get(name) if defs else None
        if chain and chain[-1].scope != "function":
            found.append(chain[-1])
    return found


class _Recorder:
    def __init__(self) -> None:
        self.costs = _Costs()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        started = time.perf_counter()
        yield
        if fixturedef.scope != "function":
            took = time.perf_counter() - started
            self.costs.fixtures[_key(fixturedef, request.node.path)] = took
            self.costs.built += took

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item) -> None:
        self.costs.built = 0.0
        self.costs.needs[item.nodeid] = [_key(d, item.path) for d in _shared(item)]

    def pytest_runtest_logreport(self, report) -> None:
        took = report.duration - (self.costs.built if report.when == "setup" else 0.0)
        self.costs.own[report.nodeid] += max(took, 0.0)

    def pytest_sessionfinish(self) -> None:
        self.costs.save()


# --- under a mutant: the order, the bound, the record ---------------------------------------------
def _records() -> tuple[dict[str, str], Counter, int]:
    """The function's earlier mutants' killers (SURVIVED: none), and the whole run's kills per test."""
    mine: dict[str, str] = {}
    everywhere: Counter = Counter()
    total = 0
    if KILLS.is_dir():
        for path in KILLS.iterdir():
            lines = path.read_text().splitlines()
            total += len(lines)
            everywhere.update(line.split(" ", 1)[1] for line in lines if " " in line)
            if path.name == _function(_mutant()):
                mine = {m: k for m, k in (line.split(" ", 1) for line in lines if " " in line)}
    return mine, everywhere, total


def _chances(nodeids: list[str]) -> dict[str, float]:
    mine, everywhere, total = _records()
    own = Counter(mine.values())
    seen = len(mine)
    chance = {}
    for nodeid in nodeids:
        prior = (everywhere[nodeid] + 0.5) / (total + 1)
        chance[nodeid] = (own[nodeid] + PRIOR * prior) / (seen + PRIOR)
    return chance


def _load_costs(nodeids: list[str]) -> tuple[dict[str, float], dict[str, float], dict[str, list[str]]]:
    from mutmut.state import state

    saved = json.loads(COSTS.read_text()) if COSTS.is_file() else {}
    measured = state().duration_by_test
    own = {n: saved.get("own", {}).get(n, measured.get(n, 0.0)) for n in nodeids}
    return own, saved.get("fixtures", {}), {n: saved.get("needs", {}).get(n, []) for n in nodeids}


def _greedy(
    items: list,
    own: dict[str, float],
    fixtures: dict[str, float],
    needs: dict[str, list[str]],
    chance: dict[str, float],
) -> list:
    """Next, always the test with the least cost per chance to kill, where it would run."""
    remaining = list(items)
    order = []
    live: set[str] = set()
    current = None

    def cost(item) -> float:
        keep = item.path == current
        missing = (k for k in needs[item.nodeid] if k not in live or (not keep and not k.startswith("session|")))
        return own[item.nodeid] + sum(fixtures.get(k, 0.0) for k in missing)

    while remaining:
        best = min(remaining, key=lambda i: cost(i) / chance[i.nodeid])
        if best.path != current:
            live = {k for k in live if k.startswith("session|")}
            current = best.path
        live.update(needs[best.nodeid])
        order.append(best)
        remaining.remove(best)
    return order


class _UnderMutant:
    def __init__(self) -> None:
        self.limit: dict[str, float] = {}
        self.killer: str | None = None
        self.timed = False

    def pytest_collection_modifyitems(self, items: list) -> None:
        nodeids = [i.nodeid for i in items]
        own, fixtures, needs = _load_costs(nodeids)
        items[:] = _greedy(items, own, fixtures, needs, _chances(nodeids))
        self.limit = {n: TIME_FACTOR * (own[n] + sum(fixtures.get(k, 0.0) for k in needs[n])) + SLACK for n in nodeids}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item) -> None:
        limit = self.limit.get(item.nodeid, SLACK)

        def expired(signum, frame):
            self.timed = True
            pytest.fail(
                f"took over {limit:.0f} s under the mutant ({TIME_FACTOR} times its clean run, and {SLACK:.0f} s)"
            )

        signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, limit)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and self.killer is None:
            self.killer = report.nodeid

    def pytest_sessionfinish(self, exitstatus) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.killer is None and exitstatus != 0:
            return  # neither killed by a test nor passed (collection error, interrupted): nothing learnt
        KILLS.mkdir(exist_ok=True)
        with open(KILLS / _function(_mutant()), "a") as out:  # one short line: appends do not interleave
            out.write(f"{_mutant()} {self.killer or SURVIVED}\n")
        if self.timed:
            TIMED.mkdir(exist_ok=True)
            with open(TIMED / _function(_mutant()), "a") as out:
                out.write(f"{_mutant()}\n")


def pytest_configure(config) -> None:
    if _mutant() == "stats":
        config.pluginmanager.register(_Recorder(), "mutation-costs")
    elif "__mutmut_" in _mutant():
        config.pluginmanager.register(_UnderMutant(), "mutation-order")
