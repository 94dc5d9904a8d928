from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from apps.accounts.api.errors import Conflict
from apps.accounts.permissions import scope_to_user
from apps.approvals import services
from apps.approvals.api.serializers import ApprovalSerializer, DecisionSerializer
from apps.approvals.choices import Decision, Via
from apps.approvals.filtersets import ApprovalFilterSet
from apps.approvals.models import Approval, ApprovalResponse


class ApprovalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Approval gates of your organizations. `?status=pending&mine=true` is your inbox."""

    serializer_class = ApprovalSerializer
    filterset_class = ApprovalFilterSet
    permission_classes = [IsAuthenticated]
    cursor_ordering = ("-created_at", "-id")

    def get_queryset(self):
        qs = (
            Approval.objects.select_related(
                "execution__workflow", "execution__organization", "decided_by"
            )
            .prefetch_related(
                Prefetch("responses", queryset=ApprovalResponse.objects.select_related("user"))
            )
            .defer("execution__workflow__draft", "execution__variables", "execution__trigger_data")
            .order_by("-created_at", "-id")
        )
        return scope_to_user(qs, self.request.user, field="execution__organization")

    def _decide(self, request, decision: str):
        approval = self.get_object()  # another organization's approval answers 404
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            approval = services.decide(
                approval, request.user, decision, body.validated_data["note"], via=Via.API
            )
        except services.NotAllowed as exc:
            raise PermissionDenied(str(exc)) from None
        except services.AlreadyDecided as exc:
            conflict = Conflict(str(exc))
            conflict.extra = exc.details
            raise conflict from None
        return Response(self.get_serializer(approval).data)

    @extend_schema(request=DecisionSerializer, responses=ApprovalSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Approve (with an optional note). The first decision wins; later ones answer 409."""
        return self._decide(request, Decision.APPROVE)

    @extend_schema(request=DecisionSerializer, responses=ApprovalSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """Reject (with an optional note). Any rejection rejects the gate."""
        return self._decide(request, Decision.REJECT)
