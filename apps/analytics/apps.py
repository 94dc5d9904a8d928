from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "apps.analytics"
    label = "analytics"
    verbose_name = "Analytics"

    def ready(self):
        # Executions and steps that end are counted for /metrics from their transitions' saves,
        # in every process (apps/analytics/metrics_counters.py).
        from apps.analytics import metrics_counters

        metrics_counters.connect()
