"""Times in the user's own time zone: the browser tells it (opsflow.js sets the `opsflow_tz`
cookie from Intl), and each request renders in it. A name that is not an IANA zone is ignored:
the times stay in UTC."""

from __future__ import annotations

import functools
import zoneinfo

from django.utils import timezone

COOKIE = "opsflow_tz"


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_named(name: str | None) -> zoneinfo.ZoneInfo | None:
    if not name or len(name) > 64 or name not in _zones():
        return None
    return zoneinfo.ZoneInfo(name)


def zone_or_utc(name: str | None) -> zoneinfo.ZoneInfo:
    """An organization's zone (`Organization.time_zone`): UTC when the name is not a zone."""
    return zone_named(name) or zoneinfo.ZoneInfo("UTC")


def validate_time_zone(name: str) -> None:
    """A model field's validator: an IANA zone name, or a clear error."""
    from django.core.exceptions import ValidationError

    if zone_named(name) is None:
        raise ValidationError(f"{name!r} is not an IANA time zone (for example Europe/Paris).")


class TimezoneMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        zone = zone_named(request.COOKIES.get(COOKIE))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
