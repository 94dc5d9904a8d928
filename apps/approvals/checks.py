from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def base_url_is_set(app_configs, **kwargs):
    """Emailed approval links are made by workers, which know no request: they need the URL."""
    if settings.OPSFLOW_BASE_URL:
        return []
    return [
        Warning(
            "OPSFLOW_BASE_URL is not set: emailed approval links will point at "
            f"{settings.DEFAULT_BASE_URL}.",
            hint="Set OPSFLOW_BASE_URL to the portal's public URL (https://ops.example.com).",
            id="opsflow.W001",
        )
    ]
