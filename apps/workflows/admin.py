from __future__ import annotations

import difflib

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from unfold.admin import ModelAdmin, TabularInline

from apps.accounts.admin_mixins import FormWithUser, OrganizationScopedAdmin, ReadOnlyAdmin
from apps.accounts.choices import CAN_EDIT, CAN_EXECUTE, CAN_READ
from apps.accounts.permissions import has_role
from apps.executions.services import WorkflowNotRunnable, trigger_workflow
from apps.workflows.definition import (
    DefinitionError,
    dump_document,
    masked_definition,
    normalize,
)
from apps.workflows.forms import RunWorkflowForm, WorkflowDefinitionForm
from apps.workflows.models import IncidentDelivery, Workflow, WorkflowVersion
from apps.workflows.services import (
    change_workflow,
    create_workflow,
    publish_workflow,
    rotate_webhook_key,
    set_webhook_secret,
    update_draft,
)


class WorkflowVersionInline(TabularInline):
    model = WorkflowVersion
    fields = ["number", "created_at", "created_by"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ["-number"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        # Members read versions by their role, not by Django's model permissions.
        return obj is None or has_role(request.user, obj.organization, CAN_READ)

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Workflow)
class WorkflowAdmin(FormWithUser, OrganizationScopedAdmin, ModelAdmin):
    form = WorkflowDefinitionForm
    change_form_template = "admin/workflows/workflow/change_form.html"
    list_display = ["name", "slug", "organization", "published", "is_active", "updated_at"]
    list_filter = [
        ("organization", admin.RelatedOnlyFieldListFilter),
        "is_active",
    ]  # scoped choices
    search_fields = ["name", "slug"]
    readonly_fields = [
        "slug",
        "published",
        "webhook_path",
        "inactive_reason",
        "next_fire_times",
        "created_at",
        "updated_at",
    ]
    inlines = [WorkflowVersionInline]
    actions = ["publish_selected"]

    def get_inlines(self, request, obj=None):
        return self.inlines if obj is not None else []

    def get_fields(self, request, obj=None):
        """The webhook path is the key that triggers the run: operators and up; the secret is
        write-only and for editors (a viewer's read-only page would show it in clear)."""
        if obj is None:
            return ["organization", "definition"]
        fields = ["slug", "published", "is_active", "inactive_reason"]
        if obj.next_fires(1) is not None:
            fields.append("next_fire_times")
        if has_role(request.user, obj.organization, CAN_EXECUTE):
            fields.append("webhook_path")
        if has_role(request.user, obj.organization, CAN_EDIT):
            fields += ["webhook_secret", "remove_webhook_secret"]
        return [*fields, "definition"]

    @admin.display(description="Published version")
    def published(self, obj):
        if not obj.current_version_id:
            return "not published"
        suffix = " (draft has changes)" if obj.has_unpublished_changes else ""
        return f"v{obj.current_version.number}{suffix}"

    @admin.display(description="Definition")
    def definition(self, obj):
        """The read-only page's definition (viewers and operators): YAML, sensitive header
        values masked. Editors get the form field of the same name instead."""
        return format_html(
            '<pre class="opsflow-code">{}</pre>', dump_document(masked_definition(obj.draft))
        )

    @admin.display(description="Next fires")
    def next_fire_times(self, obj):
        fires = obj.next_fires() or []
        return format_html_join(mark_safe("<br>"), "{}", ((f,) for f in fires))  # noqa: S308

    @admin.display(description="Webhook")
    def webhook_path(self, obj):
        """The path, and a button that copies the whole URL (this portal's address first); an
        incident trigger's alerts go to its own path under it."""
        return format_html(
            '<code id="opsflow-webhook">{}</code> '
            '<button type="button" class="opsflow-tool" data-copy="opsflow-webhook" '
            "data-copy-origin>Copy URL</button>",
            obj.hook_path(),
        )

    def save_model(self, request, obj, form, change):
        definition = form.cleaned_data["definition"]
        if change:  # `obj` already holds the form's values: the services compare with the row
            stored = Workflow.objects.get(pk=obj.pk)
            update_draft(stored, definition, request.user)
            change_workflow(stored, request.user, is_active=obj.is_active)
            set_webhook_secret(stored, obj.webhook_secret, request.user)
            obj.refresh_from_db()
        else:
            created = create_workflow(form.cleaned_data["organization"], definition, request.user)
            obj.pk = created.pk
            obj.refresh_from_db()

    @admin.action(description="Publish selected workflows")
    def publish_selected(self, request, queryset):
        published = 0
        for workflow in queryset:
            if not has_role(request.user, workflow.organization, CAN_EDIT):
                messages.error(request, f"{workflow.slug}: publishing needs the editor role.")
                continue
            version = publish_workflow(workflow, request.user)
            published += 1
            messages.success(request, f"{workflow.slug}: version {version.number} is live.")
        if not published:
            messages.warning(request, "Nothing was published.")

    def get_urls(self):
        custom = [
            path(
                "<int:pk>/publish/",
                self.admin_site.admin_view(self.publish_view),
                name="workflows_workflow_publish",
            ),
            path(
                "<int:pk>/run/",
                self.admin_site.admin_view(self.run_view),
                name="workflows_workflow_run",
            ),
            path(
                "<int:pk>/diff/",
                self.admin_site.admin_view(self.diff_view),
                name="workflows_workflow_diff",
            ),
            path(
                "<int:pk>/rotate-webhook/",
                self.admin_site.admin_view(self.rotate_webhook_view),
                name="workflows_workflow_rotate_webhook",
            ),
        ]
        return custom + super().get_urls()

    def _workflow(self, request, pk: int) -> Workflow:
        return get_object_or_404(self.get_queryset(request), pk=pk)

    def publish_view(self, request, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow = self._workflow(request, pk)
        if not has_role(request.user, workflow.organization, CAN_EDIT):
            raise PermissionDenied("Publishing needs the editor role.")
        try:
            version = publish_workflow(workflow, request.user)
        except DefinitionError as exc:
            messages.error(request, f"Cannot publish: {exc}")
        else:
            messages.success(request, f"Version {version.number} of {workflow.name} is live.")
        return redirect(reverse("admin:workflows_workflow_change", args=[workflow.pk]))

    def rotate_webhook_view(self, request, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow = self._workflow(request, pk)
        if not has_role(request.user, workflow.organization, CAN_EDIT):
            raise PermissionDenied("Rotating the webhook key needs the editor role.")
        rotate_webhook_key(workflow, request.user)
        messages.success(
            request,
            f"New webhook URL: {workflow.hook_path()} (the old one no longer works).",
        )
        return redirect(reverse("admin:workflows_workflow_change", args=[workflow.pk]))

    def diff_view(self, request, pk: int):
        """Two versions (or a version and the draft) side by side, as normalized documents with
        secrets masked."""
        workflow = self._workflow(request, pk)
        numbers = list(workflow.versions.order_by("number").values_list("number", flat=True))
        choices = [str(n) for n in numbers] + ["draft"]
        default_b = str(numbers[-1]) if numbers else "draft"
        default_a = str(numbers[-2]) if len(numbers) > 1 else choices[0]
        a = request.GET.get("a", default_a)
        b = request.GET.get("b", default_b)
        problems = [
            f"{side}: no version {value!r}"
            for side, value in (("a", a), ("b", b))
            if value not in choices
        ]
        table = ""
        if not problems:
            left, right = (_document_of(workflow, value) for value in (a, b))
            if left != right:
                # wrapped so that both columns fit a 1280 px window beside the sidebar
                table = difflib.HtmlDiff(wrapcolumn=56).make_table(
                    left.splitlines(),
                    right.splitlines(),
                    _label(a),
                    _label(b),
                    context=True,
                    numlines=4,
                )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Compare versions of {workflow.name}",
            "workflow": workflow,
            "opts": self.model._meta,
            "choices": choices,
            "a": a,
            "b": b,
            "problems": problems,
            "table": mark_safe(table),  # difflib escapes every line it lays out
        }
        return TemplateResponse(
            request, "admin/workflows/workflow/diff.html", context, status=400 if problems else 200
        )

    def run_view(self, request, pk: int):
        workflow = self._workflow(request, pk)
        if not has_role(request.user, workflow.organization, CAN_EXECUTE):
            raise PermissionDenied("Running a workflow needs the operator role.")
        definition = workflow.effective_definition
        specs = definition.get("variables") or {}
        form = RunWorkflowForm(
            request.POST or None,
            initial={"variables": _variables_template(definition)},
            specs=specs,
        )
        if request.method == "POST" and form.is_valid():
            try:
                execution = trigger_workflow(
                    workflow, variables=form.chosen_variables(), user=request.user
                )
            except WorkflowNotRunnable as exc:
                form.add_error(None, str(exc))
            except DefinitionError as exc:
                for problem in exc.problems:
                    name = str(problem.path).removeprefix("variables.")
                    field = f"var_{name}" if form.typed and name in specs else "variables"
                    form.add_error(field, str(problem))
            else:
                messages.success(request, format_html("Execution #{} started.", execution.pk))
                return redirect(reverse("admin:executions_execution_change", args=[execution.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {workflow.name}",
            "workflow": workflow,
            "form": form,
            "opts": self.model._meta,
            "variables": definition.get("variables") or {},
        }
        return TemplateResponse(request, "admin/workflows/workflow/run.html", context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            from apps.workflows.graph import draw

            try:  # the saved draft: what this page edits (and what runs, once published)
                context["graph"] = draw(masked_definition(normalize(obj.draft)))
            except DefinitionError:
                context["graph"] = None
            context["open_incomplete"] = obj.incomplete_executions.open().count()
            context["can_publish"] = has_role(request.user, obj.organization, CAN_EDIT)
            context["can_run"] = (
                has_role(request.user, obj.organization, CAN_EXECUTE) and obj.current_version_id
            )
        return super().render_change_form(request, context, add, change, form_url, obj)


def _label(value: str) -> str:
    return "draft (saved, not published)" if value == "draft" else f"version {value}"


def _document_of(workflow: Workflow, value: str) -> str:
    """A version's definition, or the draft, normalized (when valid), as YAML with each node's
    config masked as its type masks it."""
    stored = (
        workflow.draft if value == "draft" else workflow.versions.get(number=int(value)).definition
    )
    try:
        definition = normalize(stored)
    except DefinitionError:
        definition = stored  # an invalid draft is compared as written
    return dump_document(_in_order(masked_definition(definition)))


# The keys of a definition in the order people read them; others follow, alphabetically.
# (PostgreSQL's jsonb keeps no order, so the same document can come back shuffled.)
KEY_ORDER = [
    "slug", "name", "description", "trigger", "variables", "settings", "nodes", "edges",
    "id", "type", "from", "to", "on", "queue", "config",
]  # fmt: skip


def _in_order(value):
    if isinstance(value, dict):
        rank = {key: i for i, key in enumerate(KEY_ORDER)}
        keys = sorted(value, key=lambda k: (rank.get(k, len(rank)), str(k)))
        return {k: _in_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [_in_order(v) for v in value]
    return value


def _variables_template(definition) -> str:
    import yaml

    variables = definition.get("variables") or {}
    if not variables:
        return ""
    return yaml.safe_dump(
        {name: spec.get("default") for name, spec in variables.items()}, sort_keys=False
    )


@admin.register(IncidentDelivery)
class IncidentDeliveryAdmin(ReadOnlyAdmin, OrganizationScopedAdmin, ModelAdmin):
    """What incident triggers received: the run each alert started, the earlier run that
    answered a repeat, or why it was skipped (a `match` it did not pass)."""

    organization_field = "workflow__organization"
    list_display = [
        "created_at",
        "workflow",
        "incident_id",
        "status",
        "outcome",
        "reason",
        "repeats",
        "run",
    ]
    list_filter = ["outcome", "status", "source"]
    search_fields = ["incident_id", "title", "workflow__slug"]
    list_select_related = ["workflow"]
    list_per_page = 50

    @admin.display(description="Run", ordering="execution_id")
    def run(self, obj: IncidentDelivery):
        if obj.execution_id is None:
            return "—"
        url = reverse("admin:executions_execution_change", args=[obj.execution_id])
        return format_html('<a href="{}">#{}</a>', url, obj.execution_id)
