"""Audit entries for what happens outside the services: membership changes (the organization's
admin page edits them inline), failed logins and lockouts (django-axes)."""

from __future__ import annotations

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_login_failed
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from apps.accounts import audit
from apps.accounts.models import Membership


@receiver(pre_save, sender=Membership)
def _remember_role(sender, instance: Membership, **kwargs):
    instance._role_before = (
        Membership.objects.filter(pk=instance.pk).values_list("role", flat=True).first()
        if instance.pk
        else None
    )


@receiver(post_save, sender=Membership)
def _membership_saved(sender, instance: Membership, created: bool, **kwargs):
    before = getattr(instance, "_role_before", None)
    if created or before != instance.role:
        audit.record(
            "membership.add" if created else "membership.change",
            instance,
            organization=instance.organization,
            changes={"role": [before, instance.role]},
        )


@receiver(post_delete, sender=Membership)
def _membership_deleted(sender, instance: Membership, **kwargs):
    audit.record(
        "membership.remove",
        organization=instance.organization,
        target=("accounts.membership", str(instance.pk), str(instance)),
        changes={"role": [instance.role, None]},
    )


@receiver(user_login_failed)
def _login_failed(sender, credentials: dict, request=None, **kwargs):
    audit.record("login.failed", actor_name=str(credentials.get("username") or "")[:150] or "?")


@receiver(user_locked_out)
def _locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    audit.record("login.locked_out", actor_name=str(username or "?"))
