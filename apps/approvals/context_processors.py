def inbox(request):
    """How many approvals wait on the signed-in user, for the portal header (admin pages only)."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated or not user.is_staff:
        return {}
    from apps.approvals.services import waiting_on

    return {"opsflow_inbox_count": waiting_on(user).count()}
