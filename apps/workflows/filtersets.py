import django_filters
from django_filters.constants import EMPTY_VALUES

from apps.workflows.models import Workflow


class WorkflowSlugFilter(django_filters.CharFilter):
    """`?workflow=<slug>` on rows that point at a workflow through `field_name`: the workflows'
    ids first, then the rows by id, with no join, so the planner walks the list's own index in
    order (docs/performance.md)."""

    def __init__(self, field_name: str = "workflow", **kwargs):
        kwargs.setdefault("label", "Workflow slug")
        super().__init__(field_name=field_name, **kwargs)

    def filter(self, qs, value):
        if value in EMPTY_VALUES:
            return qs
        ids = list(Workflow.objects.filter(slug=value).values_list("pk", flat=True))
        return qs.filter(**{f"{self.field_name}_id__in": ids})


class WorkflowFilterSet(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug")
    q = django_filters.CharFilter(method="search", label="Search name or slug")

    class Meta:
        model = Workflow
        fields = ["organization", "is_active"]

    def search(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(name__icontains=value) | Q(slug__icontains=value))
