import django_filters

from apps.approvals.choices import ApprovalStatus
from apps.approvals.models import Approval
from apps.workflows.filtersets import WorkflowSlugFilter


class ApprovalFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=ApprovalStatus.choices,
        distinct=False,  # a column of the row: DISTINCT would only cost
    )
    workflow = WorkflowSlugFilter("execution__workflow")
    mine = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")], method="filter_mine", label="Waiting on me"
    )

    class Meta:
        model = Approval
        fields = ["status", "workflow", "execution", "mine"]

    def filter_mine(self, queryset, name, value):
        from apps.approvals.services import waiting_on

        if value != "true":
            return queryset
        return queryset.filter(pk__in=waiting_on(self.request.user).values("pk"))
