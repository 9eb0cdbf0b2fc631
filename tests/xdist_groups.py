"""How `make test` hands the suite to its pytest-xdist workers: each test module whole, on one
worker, in its order; the modules that share a session-scoped live server together; the long ones
first. tests/conftest.py wires these hooks in.

Why not ``--dist loadgroup`` and ``xdist_group`` marks: pytest-xdist 3.8 groups by appending
``@group`` to ``item._nodeid``, and from pytest 9.2 the node id is ``item._id``, so the suffix is
silently lost and every test becomes a group of its own (pytest-dev/pytest-xdist#1386). The suite's
modules were then dealt out test by test: a module's tests ran on both workers, each worker set up
its module-scoped server and browser, and the ordered browser modules lost their state part-way.

Here the groups travel in a file instead: each worker, once it has collected, writes the group of
every test (the node ids it reports to the controller) next to its temporary folder, and the
controller's scheduler (a LoadScopeScheduling whose scope is that group) reads it. Without the
file a test's group is its module.

After the heavy groups, the longest go first: each run records how long each module's tests took
(set-up, call and teardown: the reports the controller gets) in pytest's cache, and the next run
hands the groups out longest first, so that the end of the run is short groups on both workers
rather than one long group on one while the other has finished. A checkout with no cache (a fresh
clone) takes the figures of tests/module_seconds.json, kept from a quiet run. Only the order
depends on them: a module neither knows goes after the known ones, as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Modules that share a session-scoped live server (tests/conftest.py) run on one worker, which
# starts it once.
SHARED_SERVERS = ("api_server", "tiny_api_server")
# Groups with a test of these marks are handed out first, so that none is left to run alone at the end.
HEAVY_MARKS = ("slow", "model", "browser")
# ...except groups with a test of this mark (a model on two threads, run while the other workers
# wait: tests/conftest.py), handed out last: the other workers are then finishing short tests, so
# the wait for them is short, and at the very end such a test has the cores to itself anyway.
EXCLUSIVE_MARK = "cpu_exclusive"
GROUPS_FILE = "xdist-groups.json"
SECONDS_KEY = "chatsite/module-seconds"  # pytest's cache: {module: seconds its tests took}
# The same figures from one quiet run (2026-12-07, SQLite, 3 workers), for a checkout with no cache
# of its own (a fresh clone: CI's first run). Only the order depends on them; a stale figure
# costs some balance, never a test.
SEED_FILE = Path(__file__).with_name("module_seconds.json")


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def groups_of(items: list[pytest.Item]) -> dict[str, str]:
    """Each test module's group: the first shared server it uses, else the module itself."""
    group_of: dict[str, str] = {}
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        shared = [name for name in SHARED_SERVERS if name in used]
        if shared:
            group_of[module_of(item.nodeid)] = shared[0]
    for item in items:
        group_of.setdefault(module_of(item.nodeid), module_of(item.nodeid))
    return group_of


def order_for_workers(items: list[pytest.Item], seconds: dict[str, float] | None = None) -> dict[str, str]:
    """Sort ``items`` in place so that each group's tests are together, heavy groups first, then
    the longest (by ``seconds``, each module's time in an earlier run), groups with a cpu_exclusive
    test last, and within a group in the order pytest (and pytest-django) gave them; return
    {node id: group}."""
    seconds = seconds or {}
    group_of = groups_of(items)
    length: dict[str, float] = {}
    for module in {module_of(item.nodeid) for item in items}:
        group = group_of[module]
        length[group] = length.get(group, 0.0) + float(seconds.get(module, 0.0))
    first: dict[str, int] = {}  # group: index of its first test
    heavy: set[str] = set()
    exclusive: set[str] = set()
    for i, item in enumerate(items):
        group = group_of[module_of(item.nodeid)]
        first.setdefault(group, i)
        if any(item.get_closest_marker(name) for name in HEAVY_MARKS):
            heavy.add(group)
        if item.get_closest_marker(EXCLUSIVE_MARK):
            exclusive.add(group)
    order = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[bool, bool, float, int, int]:
        group = group_of[module_of(item.nodeid)]
        return (group in exclusive, group not in heavy, -length[group], first[group], order[id(item)])

    items.sort(key=key)
    return {item.nodeid: group_of[module_of(item.nodeid)] for item in items}


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def run_folder(config: pytest.Config) -> Path:
    """The run's temporary folder: the controller's basetemp, the parent of each worker's."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if is_worker(config) else base


def write_groups(config: pytest.Config, groups: dict[str, str]) -> None:
    """Atomically (the workers write the same content at about the same time)."""
    target = run_folder(config) / GROUPS_FILE
    part = target.with_name(f"{GROUPS_FILE}.{os.getpid()}.part")
    part.write_text(json.dumps(groups))
    os.replace(part, target)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: order the tests by group (after pytest-django's reordering, hence
    trylast) and write the groups for the controller. Elsewhere: nothing."""
    if is_worker(config):
        write_groups(config, order_for_workers(items, recorded_seconds(config)))


def recorded_seconds(config: pytest.Config) -> dict[str, float]:
    """Each module's time in the runs this checkout made, else in SEED_FILE's."""
    return {**seed_seconds(), **cached_seconds(config)}


def seed_seconds() -> dict[str, float]:
    try:
        found = json.loads(SEED_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def cached_seconds(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)
    found = cache.get(SECONDS_KEY, {}) if cache is not None else {}
    return found if isinstance(found, dict) else {}


_seconds: dict[str, float] = {}  # this run's, by module (in the controller, or a run without xdist)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[module_of(report.nodeid)] = _seconds.get(module_of(report.nodeid), 0.0) + report.duration


def record_seconds(session: pytest.Session, exitstatus: int) -> None:
    """In the controller of a run on workers that passed, not narrowed to some tests (-k, --lf, a
    node id): save the time of each module it ran over the earlier runs'."""
    config = session.config
    cache = getattr(config, "cache", None)
    narrowed = config.getoption("keyword", "") or config.getoption("lf", False)
    narrowed = narrowed or any("::" in arg for arg in config.args)
    on_workers = not is_worker(config) and (config.getoption("numprocesses", None) or 0) != 0
    if cache is None or not on_workers or narrowed or not _seconds or exitstatus != pytest.ExitCode.OK:
        return
    cache.set(SECONDS_KEY, {**cached_seconds(config), **{m: round(s, 3) for m, s in _seconds.items()}})


def _scheduler_class():
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        """LoadScopeScheduling with a test's scope its group (above): the workers take whole
        groups, in the collection's order (heavy first)."""

        _groups: dict[str, str] | None = None

        def __init__(self, config: pytest.Config, log=None) -> None:
            super().__init__(config, log)
            # The workers' order is the one wanted; xdist's reorder (most tests first) undoes it.
            config.option.loadscopereorder = False

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                path = run_folder(self.config) / GROUPS_FILE
                self._groups = json.loads(path.read_text()) if path.exists() else {}
            return self._groups.get(nodeid) or module_of(nodeid)

    return ModuleGroupScheduling


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """The scheduler above for ``--dist`` load, loadscope or loadgroup (``-n 2`` alone means
    load); the other modes as xdist has them."""
    if config.getvalue("dist") not in ("load", "loadscope", "loadgroup"):
        return None
    return _scheduler_class()(config, log)
