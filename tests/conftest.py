"""Shared test set-up. Model fixtures live in tests/fixtures_model.py, not here."""

from __future__ import annotations

import os

import pytest


def _skipped_under_ci(config: pytest.Config) -> list[pytest.TestReport]:
    """Under CI=true a skipped test fails the run: CI has every service and the model, so a skip
    there means something is missing, never something to shrug off."""
    if os.environ.get("CI") != "true":
        return []
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.OK and _skipped_under_ci(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped_under_ci(config)
    if skipped:
        terminalreporter.write_sep(
            "=", f"CI=true: {len(skipped)} test(s) skipped, and under CI nothing may be skipped", red=True
        )
