"""Pagination that does not count the world (docs/performance.md), for the API and the admin.

Every list answers `?page=N` as before, with a `count` that is exact up to
OPSFLOW_EXACT_COUNT_MAX rows and estimated by the query planner beyond it; `count_exact` says
which. Lists ordered by an immutable key (executions, incomplete executions, approvals, audit)
also answer `?cursor=`: start with an empty `?cursor=` and follow `next`. A cursor page costs
the same at any depth and never repeats or skips a row when runs are created meanwhile;
`?page=` gets slower the deeper it goes (an offset is a scan).
"""

from __future__ import annotations

import json
from functools import cached_property

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import EmptyPage, Page, Paginator
from django.db import connections
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.response import Response

DEEP_OFFSET = 1_000  # from this offset on, a page reads its ids before its rows


def planner_estimate(queryset) -> int | None:
    """The row count PostgreSQL's planner expects for the query, or None elsewhere."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatingPaginator(Paginator):
    """A Django paginator whose count stops at a bound: exact below it, estimated above."""

    def __init__(self, *args, exact_up_to: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exact_up_to = exact_up_to or settings.OPSFLOW_EXACT_COUNT_MAX
        self.count_exact = True

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not hasattr(queryset, "query"):
            return len(queryset)
        bounded = queryset.order_by()[: self.exact_up_to + 1].count()
        if bounded <= self.exact_up_to:
            return bounded
        estimate = planner_estimate(queryset)
        if estimate is None:  # no planner to ask (SQLite, the embedded default): count
            return queryset.count()
        self.count_exact = False
        return max(estimate, bounded)

    def validate_number(self, number):
        self.count  # noqa: B018 (counting decides whether the count is exact)
        if self.count_exact:
            return super().validate_number(number)
        try:  # an estimate cannot say where the last page is: any page from 1 is asked for
            number = int(number)
        except (TypeError, ValueError):
            raise EmptyPage("That page number is not an integer") from None
        if number < 1:
            raise EmptyPage("That page number is less than 1")
        if (number - 1) * self.per_page >= 2**63:  # past any table, and past a bigint OFFSET
            raise EmptyPage("That page contains no results")
        return number

    def page(self, number):
        number = self.validate_number(number)
        if self.count_exact:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        rows = self._slice(bottom, bottom + self.per_page + 1)
        if not rows and number > 1:
            raise EmptyPage("That page contains no results")
        self.more = len(rows) > self.per_page
        return EstimatedPage(rows[: self.per_page], number, self, more=self.more)

    def _slice(self, start: int, stop: int) -> list:
        """The rows [start:stop]. Deep in a large list, the ids first (the offset walks an
        index, not joined rows), then those rows: the late-row lookup of deep pagination."""
        if start < DEEP_OFFSET or not hasattr(self.object_list, "query"):
            return list(self.object_list[start:stop])
        ids = list(self.object_list.values_list("pk", flat=True)[start:stop])
        rows = {row.pk: row for row in self.object_list.filter(pk__in=ids)}
        return [rows[pk] for pk in ids if pk in rows]

    def get_elided_page_range(self, number=1, *, on_each_side=3, on_ends=2):
        """The admin's page links: past an estimate there is no last page to link to, so the
        first page, the pages before this one, and the next when there is one."""
        if self.count_exact:
            yield from super().get_elided_page_range(
                number, on_each_side=on_each_side, on_ends=on_ends
            )
            return
        number = int(number)
        if number - on_each_side > 2:
            yield 1
            yield self.ELLIPSIS
        yield from range(max(1, number - on_each_side), number + 1)
        if getattr(self, "more", False):
            yield number + 1


class EstimatedPage(Page):
    """A page past the exact bound: whether another follows is known from one extra row."""

    def __init__(self, object_list, number, paginator, more: bool):
        super().__init__(object_list, number, paginator)
        self.more = more

    def has_next(self) -> bool:
        return self.more

    def end_index(self) -> int:
        return self.start_index() + len(self.object_list) - 1 if self.object_list else 0


class KeyCursor(CursorPagination):
    """DRF's cursor pagination over the view's `cursor_ordering`, with a bad cursor a 400."""

    def __init__(self, ordering):
        self.ordering = ordering
        self.page_size = settings.REST_FRAMEWORK["PAGE_SIZE"]

    def get_ordering(self, request, queryset, view):
        return self.ordering

    def paginate_queryset(self, queryset, request, view=None):
        self.key_field = queryset.model._meta.get_field(self.ordering[0].lstrip("-"))
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        """The cursor, checked: it is base64 of a query string the client can forge, and its
        position goes into a filter on the key column."""
        if not request.query_params.get(self.cursor_query_param):
            return None  # `?cursor=` with no value: the first page
        try:
            cursor = super().decode_cursor(request)
        except NotFound:  # DRF's "Invalid cursor": the client sent something else
            raise self.not_a_cursor() from None
        if cursor.position is not None:
            if "\x00" in cursor.position:
                raise self.not_a_cursor()
            try:
                self.key_field.to_python(cursor.position)
            except DjangoValidationError:
                raise self.not_a_cursor() from None
        return cursor

    @staticmethod
    def not_a_cursor() -> serializers.ValidationError:
        return serializers.ValidationError(
            {"cursor": ["Not a cursor from this list: follow `next`, or start without it."]}
        )


class OpsflowPagination(PageNumberPagination):
    """`?page=` with a bounded count everywhere; `?cursor=` where the view names an order."""

    django_paginator_class = EstimatingPaginator
    cursor: KeyCursor | None = None

    def paginate_queryset(self, queryset, request, view=None):
        ordering = getattr(view, "cursor_ordering", None)
        if ordering and "cursor" in request.query_params:
            self.cursor = KeyCursor(ordering)
            return self.cursor.paginate_queryset(queryset, request, view)
        self.cursor = None
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data):
        if self.cursor is not None:
            return self.cursor.get_paginated_response(data)
        paginator = self.page.paginator
        return Response(
            {
                "count": paginator.count,
                "count_exact": paginator.count_exact,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["next", "previous", "results"],
            "properties": {
                "count": {
                    "type": "integer",
                    "description": "Rows matching (page mode only): exact up to "
                    "OPSFLOW_EXACT_COUNT_MAX, the planner's estimate beyond.",
                },
                "count_exact": {
                    "type": "boolean",
                    "description": "false when `count` is an estimate (page mode only).",
                },
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        if getattr(view, "cursor_ordering", None):
            parameters.append(
                {
                    "name": "cursor",
                    "required": False,
                    "in": "query",
                    "description": "Cursor pagination: send it empty for the first page, then "
                    "follow `next`. Constant cost at any depth; no `count`.",
                    "schema": {"type": "string"},
                }
            )
        return parameters
