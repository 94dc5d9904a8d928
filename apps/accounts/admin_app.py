"""django.contrib.admin with the portal's site (apps.accounts.sites) as the default one; kept
apart from the site so that loading the apps does not import the admin early."""

from django.contrib.admin.apps import AdminConfig


class OpsflowAdminConfig(AdminConfig):
    default_site = "apps.accounts.sites.OpsflowAdminSite"
