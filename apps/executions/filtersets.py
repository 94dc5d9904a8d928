import json
import re

import django_filters
from django.contrib.auth import get_user_model
from django.db.models import Q
from rest_framework.exceptions import ValidationError

from apps.executions.choices import AgentState, ExecutionStatus, IncompleteStatus, Trigger
from apps.executions.models import Agent, Execution, IncompleteExecution
from apps.workflows.filtersets import WorkflowSlugFilter

VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})=(.{0,500})$", re.DOTALL)
VARIABLE_HELP = "name=value: runs whose variable `name` is that value (repeat for several)"


def incident_runs(incident_id: str):
    """The ids of the runs an incident trigger started for this alert (its id index)."""
    from apps.workflows.models import IncidentDelivery

    return IncidentDelivery.objects.filter(
        incident_id=incident_id[:500], execution__isnull=False
    ).values("execution_id")


def variable_condition(text: str) -> Q:
    """`host=web-1` → executions whose variable `host` is "web-1". A value that reads as a
    JSON number or boolean (`retries=3`, `dry_run=true`) matches that too. ValueError when the
    text is not name=value."""
    match = VARIABLE.match(text)
    if not match or "__" in match[1]:
        raise ValueError(
            f"{text[:80]!r} is not name=value (a variable name of letters, digits and _, "
            "then =, then the value)."
        )
    name, value = match[1], match[2]
    condition = Q(**{f"variables__{name}": value})
    try:
        scalar = json.loads(value)
    except ValueError:
        return condition
    if isinstance(scalar, bool | int | float):
        condition |= Q(**{f"variables__{name}": scalar})
    return condition


class VariablesFilter(django_filters.CharFilter):
    """`?variables=host=web-1`, repeatable: every condition must hold."""

    def filter(self, qs, value):
        wanted = [v for v in self.parent.data.getlist(self.field_name) if v] if value else []
        for text in wanted:
            try:
                qs = qs.filter(variable_condition(text))
            except ValueError as exc:
                raise ValidationError({"variables": str(exc)}) from None
        return qs


class TriggeredByFilter(django_filters.CharFilter):
    """`?triggered_by=<username>`: the user's id first, then the rows (no join)."""

    def filter(self, qs, value):
        if not value:
            return qs
        ids = get_user_model().objects.filter(username=value).values_list("pk", flat=True)
        return qs.filter(triggered_by_id__in=list(ids))


class ExecutionFilterSet(django_filters.FilterSet):
    """One filterset for the API and the admin list."""

    workflow = WorkflowSlugFilter()
    status = django_filters.MultipleChoiceFilter(
        choices=ExecutionStatus.choices,
        distinct=False,  # a column of the row: DISTINCT would only cost
    )
    trigger = django_filters.ChoiceFilter(choices=Trigger.choices)
    started_after = django_filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = django_filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="lt")
    overdue = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        method="filter_overdue",
        label="Scheduled runs whose time passed more than OPSFLOW_OVERDUE_GRACE ago",
    )
    variables = VariablesFilter(field_name="variables", label=VARIABLE_HELP)
    triggered_by = TriggeredByFilter(label="User name of who triggered it")
    incident = django_filters.CharFilter(
        method="filter_incident", label="An alert's id: the runs its incident trigger started"
    )

    def filter_incident(self, queryset, name, value):
        return queryset.filter(pk__in=incident_runs(value))

    def filter_overdue(self, queryset, name, value):
        from apps.executions.cron import overdue

        late = overdue(queryset)
        return late if value == "true" else queryset.exclude(pk__in=late.values("pk"))

    class Meta:
        model = Execution
        fields = [
            "workflow",
            "status",
            "trigger",
            "started_after",
            "started_before",
            "overdue",
            "variables",
            "triggered_by",
            "incident",
        ]


class IncompleteExecutionFilterSet(django_filters.FilterSet):
    workflow = WorkflowSlugFilter()
    status = django_filters.MultipleChoiceFilter(
        choices=IncompleteStatus.choices,
        distinct=False,  # a column of the row: DISTINCT would only cost
    )
    error_type = django_filters.CharFilter()
    node_id = django_filters.CharFilter()

    class Meta:
        model = IncompleteExecution
        fields = ["workflow", "status", "error_type", "node_id"]


class AgentFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(
        choices=AgentState.choices, method="filter_state", label="running, stopping, stopped, lost"
    )
    queue = django_filters.CharFilter(method="filter_queue", label="Serves this queue")

    def filter_state(self, queryset, name, value):
        return queryset.in_state(value)

    def filter_queue(self, queryset, name, value):
        # JSON containment is not portable to SQLite; agents are few, so filter the names here.
        names = [a.name for a in queryset.only("name", "queues") if value in a.queues]
        return queryset.filter(name__in=names)

    class Meta:
        model = Agent
        fields = ["state", "queue"]
