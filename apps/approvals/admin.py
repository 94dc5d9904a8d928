from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from unfold.admin import ModelAdmin

from apps.accounts.admin_mixins import (
    OrganizationScopedAdmin,
    ReadOnlyAdmin,
    VolumeListMixin,
    row_or_404,
)
from apps.approvals import services
from apps.approvals.choices import APPROVAL_COLOURS, ApprovalStatus, Decision, Via
from apps.approvals.models import Approval
from apps.executions.admin import status_badge


def approval_badge(status: str):
    return status_badge(status, colours=APPROVAL_COLOURS)


@admin.register(Approval)
class ApprovalAdmin(VolumeListMixin, ReadOnlyAdmin, OrganizationScopedAdmin, ModelAdmin):
    """Every approval gate of your organizations; the inbox lists what waits on you."""

    organization_field = "execution__organization"
    list_display = [
        "id",
        "workflow",
        "execution_link",
        "node_id",
        "badge",
        "who",
        "responses_count",
        "expires_at",
        "created_at",
    ]
    list_filter = ["status"]
    list_per_page = 50
    search_fields = ["node_id", "message"]
    list_select_related = ["execution__workflow", "execution__organization"]
    list_defer = [
        "execution__workflow__draft",
        "execution__variables",
        "execution__trigger_data",
    ]
    change_list_template = "admin/approvals/approval/change_list.html"

    @admin.display(description="Workflow")
    def workflow(self, obj):
        return obj.execution.workflow.name

    @admin.display(description="Execution")
    def execution_link(self, obj):
        return format_html(
            '<a href="{}">#{}</a>', obj.execution.get_absolute_url(), obj.execution_id
        )

    @admin.display(description="Status", ordering="status")
    def badge(self, obj):
        return approval_badge(obj.status)

    @admin.display(description="Approvers")
    def who(self, obj):
        return ", ".join(obj.approvers) or "any operator"

    @admin.display(description="Responses")
    def responses_count(self, obj):
        return f"{len(obj.responses.all())}/{obj.required_approvals}"

    def get_queryset(self, request):
        # Prefetched for the rows of the page only (a count annotation groups every approval).
        return super().get_queryset(request).prefetch_related("responses")

    def get_urls(self):
        return [
            path(
                "inbox/",
                self.admin_site.admin_view(self.inbox_view),
                name="approvals_approval_inbox",
            ),
            path(
                "<int:pk>/decide/",
                self.admin_site.admin_view(self.decide_view),
                name="approvals_approval_decide",
            ),
            *super().get_urls(),
        ]

    def inbox_view(self, request):
        approvals = services.waiting_on(request.user).select_related(
            "execution__workflow", "execution__organization", "execution__triggered_by"
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Pending approvals waiting on you",
            "opts": self.model._meta,
            "approvals": approvals.order_by("created_at"),
        }
        return TemplateResponse(request, "admin/approvals/approval/inbox.html", context)

    def decide_view(self, request, pk: int):
        """The one web path for a decision: the inbox, an approval page and an execution page post here."""
        if request.method != "POST":
            raise PermissionDenied("Decide with the buttons; a GET never decides.")
        approval = get_object_or_404(self.get_queryset(request), pk=pk)
        decision = request.POST.get("decision")
        back = request.POST.get("next") or reverse("admin:approvals_approval_inbox")
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = reverse("admin:approvals_approval_inbox")
        if decision not in Decision.values:
            messages.error(request, "Choose approve or reject.")
            return redirect(back)
        try:
            approval = services.decide(
                approval, request.user, decision, request.POST.get("note", ""), via=Via.WEB
            )
        except (services.NotAllowed, services.AlreadyDecided) as exc:
            messages.error(request, str(exc))
        else:
            verb = "approved" if decision == Decision.APPROVE else "rejected"
            where = f"“{approval.node_id}” of execution #{approval.execution_id}"
            if approval.status == ApprovalStatus.PENDING:  # more approvals are required
                messages.success(request, f"You {verb} {where}; it waits for more approvals.")
            else:
                messages.success(request, f"You {verb} {where}.")
        return redirect(back)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        approval = row_or_404(
            self.get_queryset(request).select_related("execution__workflow"), object_id
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Approval #{approval.pk}: {approval.node_id}",
            "opts": self.model._meta,
            "approval": approval,
            "badge": approval_badge(approval.status),
            "can_respond": services.can_respond(approval, request.user),
            "responses": approval.responses.select_related("user"),
        }
        return TemplateResponse(request, "admin/approvals/approval/detail.html", context)
