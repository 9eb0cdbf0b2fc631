"""`make test` runs the suite in two pytest-xdist workers (tests/xdist_groups.py): each test module
whole on one worker, in its order, its module-scoped fixtures set up once; the modules sharing a
session-scoped live server on one worker; the heavy ones first.

Checked on a small suite of its own in a subprocess, with the real hooks, so that the project's
suite is not needed to see it (with ``xdist_group`` marks under pytest 9.2 the modules were dealt
out test by test, pytest-dev/pytest-xdist#1386)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.live_server import ROOT

pytestmark = pytest.mark.slow

# The small suites' pytest options: two workers; neither Django nor the cache; and, as the project's
# own addopts (pyproject.toml, which their folder does not read), not the langsmith and schemathesis
# plugins, whose imports cost each of the run's 3 processes 1.5 s of CPU.
NESTED_OPTIONS = ["-n", "2", "-p", "no:django", "-p", "no:cacheprovider", "-q"]
NESTED_OPTIONS += ["-p", "no:langsmith_plugin", "-p", "no:schemathesis"]

CONFTEST = """
import json, os
import pytest
from tests.xdist_groups import pytest_collection_modifyitems, pytest_xdist_make_scheduler

LOG = os.environ["SUITE_LOG"]

def note(**event):
    event["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(LOG, "a") as log:
        log.write(json.dumps(event) + "\\n")

@pytest.fixture(scope="session")
def api_server():
    note(setup="api_server")
    return "server"

@pytest.fixture(scope="module")
def state(request):
    note(setup="state", module=request.module.__name__)
    return []
"""

# An ordered module: each test checks that the ones before it ran, in this process, on this state.
ORDERED = """
import pytest
{marks}
@pytest.mark.parametrize("step", range(8))
def test_step(state, step):
    assert state == list(range(step))
    state.append(step)
"""

SHARED = """
def test_uses_the_shared_server(api_server, state):
    assert api_server == "server"
"""


def run_suite(tmp_path: Path) -> list[dict]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name in ("a", "b", "c", "d"):
        (suite / f"test_ordered_{name}.py").write_text(ORDERED.format(marks=""))
    (suite / "test_ordered_heavy.py").write_text(ORDERED.format(marks="pytestmark = pytest.mark.slow"))
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    for name in ("x", "y"):
        (suite / f"test_shared_{name}.py").write_text(SHARED)
    log = tmp_path / "log.jsonl"
    log.touch()
    options = [*NESTED_OPTIONS, f"--basetemp={tmp_path}/base"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options, str(suite)],
        cwd=suite,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},  # this run's xdist
            "PYTHONPATH": str(ROOT),
            "SUITE_LOG": str(log),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "42 passed" in done.stdout, done.stdout[-2000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_each_module_runs_whole_on_one_worker_and_shared_servers_start_once(tmp_path: Path) -> None:
    events = run_suite(tmp_path)
    setups = [e for e in events if e["setup"] == "state"]
    # One set-up per module: no module was split between the workers or torn down part-way.
    modules = [e["module"] for e in setups]
    assert sorted(modules) == sorted(set(modules)) and len(modules) == 7, setups
    # The two modules of the shared server ran on one worker, which started it once.
    servers = [e for e in events if e["setup"] == "api_server"]
    assert len(servers) == 1, servers
    shared = {e["worker"] for e in setups if e["module"].startswith("test_shared_")}
    assert shared == {servers[0]["worker"]}, setups
    # Both workers had work, and the heavy module was handed out first: the first its worker ran.
    # (Not "among the first two in the log": a worker slow to start logs its first module after the
    # other's first two, as once in a full run on three workers.)
    assert {e["worker"] for e in setups} == {"gw0", "gw1"}, setups
    heavy = next(e["worker"] for e in setups if e["module"] == "test_ordered_heavy")
    assert next(e["module"] for e in setups if e["worker"] == heavy) == "test_ordered_heavy", setups


# A slow cpu_exclusive test on one worker; on the other, tests with a short timeout that wait for
# the lock while it runs. The wait is not theirs: it must not count against their timeout.
EXCLUSIVE = """
import os, time
from pathlib import Path
from types import SimpleNamespace
import pytest
pytestmark = pytest.mark.slow  # handed out first

def someone_waits_for(lock: Path) -> bool:
    # A blocked flock request on the file: a "->" line of /proc/locks with its inode.
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line for line in open("/proc/locks"))

@pytest.mark.cpu_exclusive
@pytest.mark.timeout(120)
def test_holds_the_cores(tmp_path_factory):
    # Either the other worker's tests began first (then this test took the lock between two of
    # them, and the file is there), or this one holds the lock and they wait for it from their
    # first: wait until the other worker does wait for the lock. Both ways they then wait longer
    # than their own timeout.
    run = tmp_path_factory.getbasetemp().parent
    started = run / "shared-started"
    deadline = time.monotonic() + 60
    while not (started.exists() or someone_waits_for(run / "cpu.lock")):
        assert time.monotonic() < deadline, "the other worker neither ran a test nor waited"
        time.sleep(0.05)
    time.sleep(4)  # a slow exclusive test: they wait longer than their timeout (3 s)
"""

WAITING = """
import pytest

@pytest.mark.timeout(3)
@pytest.mark.parametrize("i", range(6))
def test_short(tmp_path_factory, i):
    (tmp_path_factory.getbasetemp().parent / "shared-started").touch()
"""


def test_waiting_for_an_exclusive_test_does_not_count_against_a_tests_timeout(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (suite / "test_exclusive.py").write_text(EXCLUSIVE)
    (suite / "test_waiting.py").write_text(WAITING)
    (suite / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    slow: slow\n    cpu_exclusive: exclusive\n    model: m\n    browser: b\n"
    )
    options = [*NESTED_OPTIONS, f"--basetemp={tmp_path}/base"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options, str(suite)],
        cwd=suite,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "7 passed" in done.stdout, done.stdout[-2000:]


def test_a_checkout_with_no_cache_of_its_own_orders_by_the_kept_figures() -> None:
    """A fresh clone (CI's first run) has no module times in pytest's cache: it takes those of
    tests/module_seconds.json, so its longest modules still go first; a checkout's own times win."""
    from tests import xdist_groups

    kept = json.loads((ROOT / "tests" / "module_seconds.json").read_text())
    assert kept and all(isinstance(seconds, float | int) for seconds in kept.values())
    assert xdist_groups.recorded_seconds(SimpleNamespace(cache=None)) == kept
    module = max(kept, key=kept.get)
    own = SimpleNamespace(cache=SimpleNamespace(get=lambda key, default: {module: 0.5}))
    assert xdist_groups.recorded_seconds(own) == {**kept, module: 0.5}
