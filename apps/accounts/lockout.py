"""What a locked-out login gets (django-axes' AXES_LOCKOUT_CALLABLE): 429 with a message that
says why, for how long, and how an administrator unlocks it; the API's error shape under /api/."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.shortcuts import render

APPROVAL_LINK_USER = "(approval link)"  # the lockout name for failed emailed-link decisions


def lockout_message(username: str | None) -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    who = f" for {username!r}" if username else ""
    unlock = f"manage.py axes_reset_username {username}" if username else "manage.py axes_reset_ip"
    return (
        f"Too many failed attempts{who} from your address "
        f"({settings.AXES_FAILURE_LIMIT} within {minutes} minutes): try again in {minutes} "
        f"minutes, or ask an administrator to unlock it ({unlock})."
    )


def lockout_response(request, original_response=None, credentials=None):
    username = (credentials or {}).get("username") or request.POST.get("username")
    message = lockout_message(username)
    if request.path.startswith("/api/"):
        body = {"error": {"code": "locked_out", "message": message, "details": {}}}
        return JsonResponse(body, status=429)
    context = {**admin.site.each_context(request), "title": "Locked out", "message": message}
    return render(request, "accounts/locked_out.html", context, status=429)
