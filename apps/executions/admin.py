from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince
from unfold.admin import ModelAdmin

from apps.accounts.admin_mixins import (
    MissingIs404,
    OrganizationScopedAdmin,
    ReadOnlyAdmin,
    VolumeListMixin,
    row_or_404,
)
from apps.accounts.choices import CAN_EXECUTE, CAN_READ
from apps.accounts.permissions import (
    has_role,
    holds_role_anywhere,
    organization_ids_for,
    scope_to_user,
)
from apps.executions import presenters, services
from apps.executions.choices import (
    EXECUTION_TERMINAL,
    INCOMPLETE_RETRYABLE,
    STATUS_COLOURS,
    STEP_FAILED,
    EventKind,
    ExecutionStatus,
)
from apps.executions.errors import INCOMPLETE_ERROR_TYPES
from apps.executions.filtersets import incident_runs, variable_condition
from apps.executions.models import Agent, Execution, IncompleteExecution, Step
from apps.workflows.definition import DefinitionError
from apps.workflows.models import Workflow
from config.limits import document_problem, loads_json, problem_text


def status_badge(status: str, label: str | None = None, colours=STATUS_COLOURS):
    """The coloured status pill of the portal (executions, steps, records, approvals)."""
    colour = colours.get(status, "grey")
    return format_html(
        '<span class="opsflow-badge opsflow-{} opsflow-bg-{}">{}</span>',
        status,
        colour,
        label or status,
    )


def step_badge(step: Step):
    """A step's pill; a gate waiting for a person says so (it is `running` without a worker,
    and a pulsing "running" read as a worker busy on it)."""
    if presenters.waiting_note(step):
        return status_badge(ExecutionStatus.PAUSED, label="waiting")
    return status_badge(step.status)


def wants_partial(request) -> bool:
    """The one place that decides between the full page and the HTMX partial."""
    return bool(getattr(request, "htmx", False)) and not request.htmx.boosted


class WorkflowFilter(admin.SimpleListFilter):
    """The user's workflows, read from the workflows table (Django's related-only filter reads
    the distinct workflows of every listed row: a scan at volume)."""

    title = "workflow"
    parameter_name = "workflow__id__exact"

    def lookups(self, request, model_admin):
        workflows = scope_to_user(Workflow.objects.order_by("name"), request.user)
        return list(workflows.values_list("id", "name"))

    def queryset(self, request, queryset):
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(workflow_id=int(value))
        return queryset


class ErrorTypeFilter(admin.SimpleListFilter):
    """The error types a record can have, from the engine's vocabulary: Django's all-values
    filter would read the distinct error types of every record on each page."""

    title = "error type"
    parameter_name = "error_type__exact"

    def lookups(self, request, model_admin):
        return [(name, name) for name in INCOMPLETE_ERROR_TYPES]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(error_type=self.value())
        return queryset


class OverdueFilter(admin.SimpleListFilter):
    """Derived, not a status: scheduled runs whose time passed more than the grace period ago."""

    title = "overdue"
    parameter_name = "overdue"

    def lookups(self, request, model_admin):
        return [("true", "Overdue")]

    def queryset(self, request, queryset):
        if self.value() == "true":
            from apps.executions.cron import overdue

            return overdue(queryset)
        return queryset


class TextFilter(admin.SimpleListFilter):
    """A text box in the filters panel; subclasses set `help` and `filtered`."""

    template = "admin/executions/filter_text.html"
    help = ""

    def lookups(self, request, model_admin):
        return []

    def has_output(self):
        return True

    def choices(self, changelist):
        others = [
            (name, value)
            for name, values in changelist.params.items()
            if name not in (self.parameter_name, "p")
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {"value": self.value() or "", "hidden": others, "help": self.help}

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return self.filtered(request, queryset, self.value())

    def filtered(self, request, queryset, value: str):
        raise NotImplementedError


class VariablesFilter(TextFilter):
    """`host=web-1` keeps the runs whose variable `host` is web-1."""

    title = "variables"
    parameter_name = "variables"
    help = "name=value, e.g. host=web-1"

    def filtered(self, request, queryset, value: str):
        try:
            return queryset.filter(variable_condition(value))
        except ValueError as exc:
            messages.error(request, f"Variables filter: {exc}")
            return queryset.none()


class IncidentFilter(TextFilter):
    """The runs an incident trigger started for this alert id."""

    title = "incident"
    parameter_name = "incident"
    help = "an alert's id, e.g. a fingerprint"

    def filtered(self, request, queryset, value: str):
        return queryset.filter(pk__in=incident_runs(value))


class TriggeredByFilter(admin.SimpleListFilter):
    """Members of the user's organizations (Django's related filter would read the distinct
    users of every listed row)."""

    title = "triggered by"
    parameter_name = "triggered_by__id__exact"

    def lookups(self, request, model_admin):
        from django.contrib.auth import get_user_model

        ids = organization_ids_for(request.user)
        users = get_user_model().objects.filter(memberships__organization_id__in=ids)
        return list(users.distinct().order_by("username").values_list("id", "username")[:100])

    def queryset(self, request, queryset):
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(triggered_by_id=int(value))
        return queryset


@admin.register(Execution)
class ExecutionAdmin(VolumeListMixin, ReadOnlyAdmin, OrganizationScopedAdmin, ModelAdmin):
    organization_field = "organization"
    list_display = [
        "id_link",
        "workflow",
        "badge",
        "trigger",
        "started",
        "duration",
        "jobs",
        "triggered_by",
    ]
    list_display_links = None
    list_filter = [
        OverdueFilter,
        "status",
        "trigger",
        WorkflowFilter,
        TriggeredByFilter,
        VariablesFilter,
        IncidentFilter,
        ("created_at", admin.DateFieldListFilter),  # a date hierarchy reads every row's date
    ]
    search_fields = ["workflow__name", "workflow__slug"]
    list_select_related = ["workflow", "version", "triggered_by"]
    list_per_page = 50
    list_defer = ["workflow__draft", "version__definition"]
    actions = ["cancel_selected", "retrigger_selected"]

    @admin.action(description="Cancel selected executions")
    def cancel_selected(self, request, queryset):
        return _confirmed_bulk(
            self,
            request,
            queryset,
            lambda e: services.cancel_execution(e, request.user),
            verb="Cancel",
            done="Cancelled",
            warning="Steps already running finish and are recorded; the rest never run.",
        )

    @admin.action(description="Re-trigger selected executions")
    def retrigger_selected(self, request, queryset):
        return _confirmed_bulk(
            self,
            request,
            queryset,
            lambda e: services.retrigger_execution(e, request.user),
            verb="Re-trigger",
            done="Re-triggered",
            warning="Each one starts again from the start, as a new execution with the same "
            "variables.",
        )

    @admin.display(description="Execution", ordering="id")
    def id_link(self, obj):
        return format_html('<a href="{}">#{}</a>', obj.get_absolute_url(), obj.pk)

    @admin.display(description="Status", ordering="status")
    def badge(self, obj):
        return status_badge(obj.status)

    @admin.display(description="Duration")
    def duration(self, obj):
        return _format_ms(obj.duration_ms)

    @admin.display(description="Jobs")
    def jobs(self, obj):
        return jobs_summary(obj)

    @admin.display(description="Started", ordering="started_at")
    def started(self, obj):
        if obj.started_at is None:
            return "—"
        return format_html(
            '<span title="{}">{}</span>',
            date_format(timezone.localtime(obj.started_at), "Y-m-d H:i:s T"),
            naturaltime(obj.started_at),
        )

    def changelist_view(self, request, extra_context=None):
        """The list refreshes itself every 15 s while a run on the page is still going."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data["live"] = any(
                e.status not in EXECUTION_TERMINAL for e in changelist.result_list
            )
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        execution = row_or_404(
            self.get_queryset(request).select_related("retriggered_from"), object_id
        )
        steps = list(execution.steps.order_by("created_at", "id"))
        for step in steps:
            step.input_json = presenters.pretty(step.input)
            step.output_json = presenters.pretty(step.output)
            step.badge = step_badge(step)
            step.waiting = bool(presenters.waiting_note(step))
            step.duration = _format_ms(step.duration_ms)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Execution #{execution.pk} of {execution.workflow.name}",
            "opts": self.model._meta,
            "execution": execution,
            "badge": status_badge(execution.status),
            "duration": _format_ms(execution.duration_ms),
            "jobs": jobs_summary(execution),
            "graph": _execution_graph(execution, steps),
            "steps": steps,
            "events": execution.events.order_by("created_at", "id"),
            **dict(
                zip(
                    ("lanes", "axis"),
                    presenters.timeline(execution, steps, timezone.now()),
                    strict=True,
                )
            ),
            "variables_json": presenters.pretty(execution.variables),
            # Follow the stream until the run is over; a paused or incomplete run too: a
            # decision taken elsewhere shows up here.
            "live": execution.status not in EXECUTION_TERMINAL,
            "can_execute": has_role(request.user, execution.workflow.organization, CAN_EXECUTE),
            "incomplete": execution.incomplete_records.order_by("-id").first(),
            "failed_step_ids": _markable_steps(execution, steps),
            "approvals": _approvals_for(execution, request.user),
        }
        if wants_partial(request):
            return TemplateResponse(request, "executions/partials/_execution_detail.html", context)
        return TemplateResponse(request, "admin/executions/execution/detail.html", context)

    def get_urls(self):
        custom = [
            path(
                "<int:pk>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="executions_execution_cancel",
            ),
            path(
                "<int:pk>/retrigger/",
                self.admin_site.admin_view(self.retrigger_view),
                name="executions_execution_retrigger",
            ),
            path(
                "<int:pk>/steps/<int:step_id>/",
                self.admin_site.admin_view(self.step_view),
                name="executions_execution_step",
            ),
            path(
                "<int:pk>/steps/<int:step_id>/download/<str:field>/",
                self.admin_site.admin_view(self.step_download_view),
                name="executions_execution_step_download",
            ),
            path(
                "<int:pk>/steps/<int:step_id>/mark-succeeded/",
                self.admin_site.admin_view(self.mark_succeeded_view),
                name="executions_execution_mark_succeeded",
            ),
        ]
        return custom + super().get_urls()

    def _step(self, request, pk: int, step_id: int) -> Step:
        execution = get_object_or_404(self.get_queryset(request), pk=pk)
        step = get_object_or_404(execution.steps, pk=step_id)
        step.execution = execution
        return step

    def step_view(self, request, pk: int, step_id: int):
        """One attempt of one node, laid out for reading."""
        step = self._step(request, pk, step_id)
        execution = step.execution
        context = {
            **self.admin_site.each_context(request),
            "title": f"{step.node_id}, attempt {step.attempt}",
            "subtitle": f"Execution #{execution.pk}",
            "opts": self.model._meta,
            "execution": execution,
            "step": step,
            "badge": step_badge(step),
            "duration": _format_ms(step.duration_ms),
            "blocks": presenters.blocks(step),
            "attempts": [
                (a, step_badge(a.step), _format_ms(a.step.duration_ms))
                for a in presenters.attempts(step)
            ],
            "waiting": presenters.waiting_note(step),
        }
        return TemplateResponse(request, "admin/executions/execution/step.html", context)

    def step_download_view(self, request, pk: int, step_id: int, field: str):
        """A field of the step, whole, as a text file."""
        step = self._step(request, pk, step_id)
        text = presenters.download(step, field) if field in presenters.DOWNLOADABLE else None
        if text is None:
            raise Http404(f"Step {step.pk} has no {field!r} to download.")
        name = f"execution-{pk}-{step.node_id}-{step.attempt}-{field}.txt"
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def _execution_for_action(self, request, pk: int) -> Execution:
        if request.method != "POST":
            raise PermissionDenied("Use the buttons on the execution page.")
        execution = get_object_or_404(self.get_queryset(request), pk=pk)
        if not has_role(request.user, execution.workflow.organization, CAN_EXECUTE):
            raise PermissionDenied("This needs the operator role.")
        return execution

    def cancel_view(self, request, pk: int):
        execution = self._execution_for_action(request, pk)
        now = request.POST.get("now") == "1"
        try:
            services.cancel_execution(execution, request.user, now=now)
            messages.success(
                request,
                f"Execution #{pk} cancelled. "
                + (
                    "Running steps are being stopped."
                    if now
                    else "Steps already running finish and are recorded."
                ),
            )
        except services.WrongState as exc:
            messages.error(request, str(exc))
        return redirect(execution.get_absolute_url())

    def retrigger_view(self, request, pk: int):
        execution = self._execution_for_action(request, pk)
        try:
            new = services.retrigger_execution(execution, request.user)
        except (services.WorkflowNotRunnable, DefinitionError) as exc:
            messages.error(request, f"Cannot re-trigger: {exc}")
            return redirect(execution.get_absolute_url())
        messages.success(
            request, f"Execution #{new.pk} started from the start with the same variables."
        )
        return redirect(new.get_absolute_url())

    def mark_succeeded_view(self, request, pk: int, step_id: int):
        execution = self._execution_for_action(request, pk)
        step = get_object_or_404(execution.steps, pk=step_id)
        try:
            output = loads_json(request.POST.get("output") or "{}")
            problem = document_problem(output)
            if problem:
                raise ValueError(problem_text(problem, "the output"))
            services.mark_step_succeeded(step, output, request.user)
            messages.success(
                request, f"{step.node_id} marked succeeded; the run goes on from there."
            )
        except ValueError as exc:
            messages.error(request, f"The output is not accepted: {exc}")
        except services.WrongState as exc:
            messages.error(request, str(exc))
        return redirect(execution.get_absolute_url())


def _retries_of(record: IncompleteExecution) -> dict:
    """How the record was retried: automatic and manual resumptions told apart (from the
    execution's log), and the edits of the last attempt an operator changed."""
    resumed = list(
        record.execution.events.filter(kind=EventKind.EXECUTION_RESUMED).values_list(
            "data", flat=True
        )
    )
    automatic = sum(bool(isinstance(d, dict) and d.get("automatic")) for d in resumed)
    edited = (
        Step.objects.filter(
            execution_id=record.execution_id, node_id=record.node_id, overrides__isnull=False
        )
        .order_by("-attempt")
        .first()
    )
    overrides = edited.overrides if edited and isinstance(edited.overrides, dict) else {}
    return {
        "automatic_retries": automatic,
        "manual_retries": len(resumed) - automatic,
        "edited_step": edited,
        "edited_input": presenters.pretty(overrides["input"]) if "input" in overrides else "",
        "edited_bundles": presenters.pretty(overrides["bundles"]) if "bundles" in overrides else "",
    }


def _execution_graph(execution: Execution, steps: list[Step], highlight: str = ""):
    """The version's graph, each node coloured by its last attempt and linked to it."""
    from apps.workflows.graph import draw

    last = {step.node_id: step for step in steps}  # (steps come oldest first)
    return draw(
        execution.version.definition or {},
        statuses={n: (s.status, STATUS_COLOURS.get(s.status, "blue")) for n, s in last.items()},
        highlight=highlight,
        urls={
            n: reverse("admin:executions_execution_step", args=[execution.pk, s.pk])
            for n, s in last.items()
        },
    )


def jobs_summary(execution: Execution) -> str:
    """ "4 ✓ · 1 skipped / 5": what the run's nodes came to, failed attempts included."""
    parts = [f"{execution.steps_completed} ✓"]
    if execution.steps_failed:
        parts.append(f"{execution.steps_failed} ✗")
    if execution.steps_skipped:
        parts.append(f"{execution.steps_skipped} skipped")
    return f"{' · '.join(parts)} / {execution.steps_total}"


def _confirmed_bulk(model_admin, request, queryset, act, *, verb: str, done: str, warning: str):
    """An action over the selection (or, with "select all", everything the filters match):
    first a page that says how many and asks; then `services.act_on_each`, and a message
    for what was done and for each row skipped."""
    count = queryset[: services.BULK_LIMIT + 1].count()
    noun = model_admin.model._meta.verbose_name_plural
    if request.POST.get("confirmed") != "yes":
        selected = request.POST.get("select_across") != "1"
        context = {
            **model_admin.admin_site.each_context(request),
            "title": f"{verb} {noun}?",
            "opts": model_admin.model._meta,
            "count": count,
            "too_many": count > services.BULK_LIMIT,
            "limit": services.BULK_LIMIT,
            "verb": verb,
            "noun": noun,
            "warning": warning,
            "rows": queryset.select_related("workflow")[:20],
            "post": request.POST.lists(),
            "selected": selected,
            "back": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/executions/confirm_bulk.html", context)
    try:
        result = services.act_on_each(queryset, request.user, act, str(noun))
    except services.TooMany as exc:
        messages.error(request, str(exc))
        return None
    if result.done:
        messages.success(request, f"{done} {len(result.done):,} {noun}.")
    for pk, why in result.skipped[:20]:
        messages.warning(request, f"#{pk} skipped: {why}")
    if len(result.skipped) > 20:
        messages.warning(request, f"… and {len(result.skipped) - 20:,} more skipped.")
    return None


def _approvals_for(execution: Execution, user) -> list:
    """The execution's gates, each marked with whether this user may decide it now."""
    from apps.approvals.services import can_respond

    approvals = list(execution.approvals.order_by("created_at"))
    for approval in approvals:
        approval.user_can_respond = can_respond(approval, user)
    return approvals


def _markable_steps(execution: Execution, steps: list) -> set[int]:
    """Failed steps an operator may mark succeeded: the latest attempt of each, on an incomplete run."""
    if execution.status != ExecutionStatus.INCOMPLETE:
        return set()
    latest = {}
    for step in steps:
        latest[step.node_id] = step
    return {s.pk for s in latest.values() if s.status in STEP_FAILED and not s.handling}


def _format_ms(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


def _human_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@admin.register(IncompleteExecution)
class IncompleteExecutionAdmin(VolumeListMixin, OrganizationScopedAdmin, ModelAdmin):
    """Failed runs kept for resolution, per workflow (filter) and across all of them."""

    list_display = [
        "id_link",
        "workflow",
        "execution_link",
        "node_id",
        "error_type",
        "badge",
        "auto_retry",
        "attempts",
        "next_retry_at",
        "size",
        "created_at",
    ]
    list_display_links = None
    list_filter = ["status", ErrorTypeFilter, WorkflowFilter]
    list_per_page = 50
    search_fields = ["node_id", "error_message", "workflow__slug"]
    list_select_related = ["workflow"]
    actions = ["retry_selected", "discard_selected"]
    change_role = CAN_EXECUTE
    list_defer = ["bundles", "blueprint", "workflow__draft"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        """Operators discard (a service, with its audit event); a hard delete would leave the
        execution `incomplete` with no record. Superusers only (the delete view and action)."""
        return request.user.is_superuser

    @admin.display(description="Record", ordering="id")
    def id_link(self, obj):
        return format_html('<a href="{}">#{}</a>', obj.get_absolute_url(), obj.pk)

    @admin.display(description="Execution")
    def execution_link(self, obj):
        return format_html(
            '<a href="{}">#{}</a>',
            reverse("admin:executions_execution_change", args=[obj.execution_id]),
            obj.execution_id,
        )

    @admin.display(description="Status", ordering="status")
    def badge(self, obj):
        return status_badge(obj.status)

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, obj):
        return _human_bytes(obj.size_bytes)

    @admin.action(description="Retry selected incomplete executions")
    def retry_selected(self, request, queryset):
        return _confirmed_bulk(
            self,
            request,
            queryset,
            lambda r: services.retry_incomplete(r, user=request.user),
            verb="Retry",
            done="Retried",
            warning="Each execution resumes from its failed node, with its stored input.",
        )

    @admin.action(description="Discard selected incomplete executions")
    def discard_selected(self, request, queryset):
        return _confirmed_bulk(
            self,
            request,
            queryset,
            lambda r: services.discard_incomplete(r, request.user),
            verb="Discard",
            done="Discarded",
            warning="Their executions become failed and cannot be resumed.",
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        record = row_or_404(
            self.get_queryset(request).select_related("execution", "workflow"), object_id
        )
        can_act = has_role(request.user, record.organization, CAN_EXECUTE)
        bundles_text = presenters.pretty(record.bundles)
        input_text = (
            presenters.pretty(record.bundles.get("input"))
            if isinstance(record.bundles, dict)
            else ""
        )
        errors: list[str] = []
        if request.method == "POST":
            if not can_act:
                raise PermissionDenied("This needs the operator role.")
            action = request.POST.get("action")
            bundles_text = request.POST.get("bundles", bundles_text)
            input_text = request.POST.get("input", input_text)
            try:
                if action == "discard":
                    services.discard_incomplete(record, request.user)
                    messages.success(request, f"Incomplete execution #{record.pk} discarded.")
                    return redirect(reverse("admin:executions_incompleteexecution_changelist"))
                edits = _retry_edits(record, bundles_text, input_text)
                services.retry_incomplete(
                    record,
                    use_current_version=action == "retry_current",
                    user=request.user,
                    **edits,
                )
                messages.success(
                    request, f"Execution #{record.execution_id} resumed from {record.node_id}."
                )
                return redirect(
                    reverse("admin:executions_execution_change", args=[record.execution_id])
                )
            except ValueError as exc:
                errors.append(str(exc))
            except services.WrongState as exc:
                errors.append(str(exc))
        steps = list(record.execution.steps.order_by("created_at", "id"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Incomplete execution #{record.pk}",
            "opts": self.model._meta,
            "record": record,
            "badge": status_badge(record.status),
            "size": _human_bytes(record.size_bytes),
            "can_act": can_act and record.status in INCOMPLETE_RETRYABLE,
            "can_discard": can_act and record.is_open,
            "bundles_text": bundles_text,
            "input_text": input_text,
            "errors": errors,
            "has_current": record.workflow.current_version_id != record.execution.version_id,
            **_failed_attempt(record, steps),
            "graph": _execution_graph(record.execution, steps, highlight=record.node_id),
            **_retries_of(record),
        }
        return TemplateResponse(
            request, "admin/executions/incompleteexecution/detail.html", context
        )


def _failed_attempt(record: IncompleteExecution, steps: list[Step]) -> dict:
    """The attempt that stored the record, and the end of what it wrote to stderr: why it
    failed, next to the input the operator is about to edit. `steps`: the run's steps."""
    failed = [s for s in steps if s.node_id == record.node_id and s.status in STEP_FAILED]
    step = max(failed, key=lambda s: s.attempt, default=None)
    stderr = str(((step.output or {}) if step else {}).get("stderr") or "")
    return {"failed_step": step, "failed_stderr": "\n".join(stderr.splitlines()[-20:])}


def _retry_edits(record: IncompleteExecution, bundles_text: str, input_text: str) -> dict:
    """Only what the operator changed is passed on: edited bundles and/or an edited input."""
    edits = {}
    try:
        bundles = loads_json(bundles_text) if bundles_text.strip() else record.bundles
    except ValueError as exc:
        raise ValueError(f"Bundles are not valid JSON: {exc}") from None
    try:
        new_input = loads_json(input_text) if input_text.strip() else None
    except ValueError as exc:
        raise ValueError(f"Input is not valid JSON: {exc}") from None
    for name, value in (("Bundles", bundles), ("Input", new_input)):
        problem = document_problem(value)
        if problem:
            raise ValueError(f"{name} not accepted: {problem_text(problem, 'the value')}")
    if not isinstance(bundles, dict):
        raise ValueError("Bundles must be a JSON object with variables and nodes.")
    if new_input is not None and not isinstance(new_input, dict):
        raise ValueError("Input must be a JSON object (the node's config).")
    if bundles != record.bundles:
        edits["bundles"] = bundles
    if new_input is not None and new_input != record.bundles.get("input"):
        edits["input"] = new_input
    return edits


@admin.register(Agent)
class AgentAdmin(MissingIs404, ReadOnlyAdmin, ModelAdmin):
    """The agents (RQ workers): state from the heartbeat, and the steps each runs now."""

    list_display = ["name", "state_badge", "queue_list", "pid", "heartbeat", "done", "failed"]
    list_display_links = None
    search_fields = ["name", "hostname"]
    list_per_page = 50

    @admin.display(description="Steps done", ordering="steps_done")
    def done(self, obj):
        return f"{obj.steps_done:,}"

    @admin.display(description="Failed", ordering="steps_failed")
    def failed(self, obj):
        return f"{obj.steps_failed:,}"

    def changelist_view(self, request, extra_context=None):
        """Above the agents: each queue's waiting steps and live agents, and a warning for a
        queue whose steps no live agent will take."""
        from apps.analytics import escalation

        queues = escalation.queues(organization_ids_for(request.user))
        return super().changelist_view(request, {"queues": queues, **(extra_context or {})})

    def has_module_permission(self, request):
        return holds_role_anywhere(request.user, CAN_READ)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    @admin.display(description="State")
    def state_badge(self, obj):
        return status_badge(obj.display_state())

    @admin.display(description="Last heartbeat", ordering="last_heartbeat_at")
    def heartbeat(self, obj):
        return format_html(
            '<span title="{}">{} ago</span>',
            obj.last_heartbeat_at.isoformat(),
            timesince(obj.last_heartbeat_at),
        )

    @admin.display(description="Queues")
    def queue_list(self, obj):
        return ", ".join(obj.queues)

    def get_list_display(self, request):
        @admin.display(description="Working on")
        def working_on(obj):  # a closure over the request: the admin instance is shared
            steps = obj.running_steps_for(request.user)
            return (
                format_html_join(
                    ", ",
                    '<a href="{}">#{} {}</a>',
                    ((s.execution.get_absolute_url(), s.execution_id, s.node_id) for s in steps),
                )
                or "—"
            )

        return [*self.list_display, working_on]
