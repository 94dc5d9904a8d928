"""Gate fixtures for the login-throttling tests of the emailed links."""

from tests.approvals.test_api_and_web import open_gate, open_gates  # noqa: F401
