def inbox_count(request) -> int:
    """How many approvals wait on the signed-in user; counted once per request (the sidebar's
    badge and the page header both show it)."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated or not user.is_staff:
        return 0
    if not hasattr(request, "_opsflow_inbox_count"):
        from apps.approvals.services import waiting_on

        request._opsflow_inbox_count = waiting_on(user).count()
    return request._opsflow_inbox_count


def inbox(request):
    """The count for the portal's pages (admin pages only: staff users)."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated or not user.is_staff:
        return {}
    return {"opsflow_inbox_count": inbox_count(request)}
