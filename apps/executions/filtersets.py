import django_filters

from apps.executions.choices import AgentState, ExecutionStatus, IncompleteStatus, Trigger
from apps.executions.models import Agent, Execution, IncompleteExecution
from apps.workflows.filtersets import WorkflowSlugFilter


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

    def filter_overdue(self, queryset, name, value):
        from apps.executions.cron import overdue

        late = overdue(queryset)
        return late if value == "true" else queryset.exclude(pk__in=late.values("pk"))

    class Meta:
        model = Execution
        fields = ["workflow", "status", "trigger", "started_after", "started_before", "overdue"]


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
