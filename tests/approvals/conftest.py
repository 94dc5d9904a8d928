"""Gate fixtures for every approvals module: runs paused at a real approval node."""

from tests.approvals.test_api_and_web import open_gate, open_gates  # noqa: F401
