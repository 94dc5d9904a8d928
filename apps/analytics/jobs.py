"""RQ jobs of the analytics app."""

from __future__ import annotations

from django.db import close_old_connections


def run_export(export_id: int) -> None:
    """Write a background export's file (apps.analytics.exports.run_export)."""
    from apps.analytics.exports import run_export as write

    close_old_connections()
    write(export_id)
