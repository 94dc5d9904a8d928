import django_filters

from apps.workflows.models import Workflow


class WorkflowFilterSet(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug")
    q = django_filters.CharFilter(method="search", label="Search name or slug")

    class Meta:
        model = Workflow
        fields = ["organization", "is_active"]

    def search(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(name__icontains=value) | Q(slug__icontains=value))
