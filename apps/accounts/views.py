"""Pages of the portal itself that belong to no model: the 404 page."""

from __future__ import annotations

from django.contrib import admin
from django.shortcuts import render


def not_found(request, exception=None):
    """The portal's 404: inside the portal (sidebar, header) for those signed in to it, on the
    login page's layout for everyone else. Says no more than that nothing is there: a page of an
    organization the user is not a member of looks the same as one that does not exist."""
    signed_in = admin.site.has_permission(request)
    context = {
        **(admin.site.each_context(request) if signed_in else {}),
        "title": "Not found",
        "layout": "admin/base_site.html" if signed_in else "unfold/layouts/unauthenticated.html",
    }
    return render(request, "404.html", context, status=404)
