from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from apps.accounts.api.lookups import one_of_organizations, organization_for_create
from apps.accounts.api.permissions import OrganizationRole
from apps.accounts.choices import CAN_EDIT
from apps.accounts.permissions import organizations_for, scope_to_user
from apps.credentials.api.serializers import (
    CredentialCreateSerializer,
    CredentialSerializer,
    CredentialUpdateSerializer,
)
from apps.credentials.models import Credential
from apps.credentials.services import (
    CredentialInvalid,
    create_credential,
    delete_credential,
    update_credential,
)

CREATE_FIELDS = {"organization", "name", "value", "allowed_hosts", "description"}


def _body(request, allowed: set[str]) -> dict:
    if not isinstance(request.data, dict):
        raise ValidationError("The body must be a JSON object.")
    unknown = set(request.data) - allowed
    if unknown:
        raise ValidationError({key: "unknown field" for key in sorted(unknown)})
    return dict(request.data)


class CredentialViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Credentials of the organizations where you are an editor or admin. The value is
    write-only: no answer ever carries it. Templates read it as `{{ secrets.NAME }}`."""

    serializer_class = CredentialSerializer
    lookup_field = "name"
    lookup_value_regex = "[A-Za-z_][A-Za-z0-9_]*"
    permission_classes = [IsAuthenticated, OrganizationRole]
    action_roles = {"retrieve": CAN_EDIT, "partial_update": CAN_EDIT, "destroy": CAN_EDIT}

    def organization_of(self, obj):
        return obj.organization

    def get_queryset(self):
        queryset = Credential.objects.select_related("organization", "created_by", "updated_by")
        if self.action == "list":  # only where the user may manage them
            return queryset.filter(organization__in=organizations_for(self.request.user, CAN_EDIT))
        return scope_to_user(queryset, self.request.user)

    def get_object(self):
        credential = one_of_organizations(
            self.request, self.get_queryset(), "name", self.kwargs["name"], "credential"
        )
        self.check_object_permissions(self.request, credential)
        return credential

    @extend_schema(request=CredentialCreateSerializer, responses={201: CredentialSerializer})
    def create(self, request):
        fields = _body(request, CREATE_FIELDS)
        organization = organization_for_create(
            request.user, fields.pop("organization", None), CAN_EDIT
        )
        try:
            credential = create_credential(organization, request.user, **fields)
        except CredentialInvalid as exc:
            raise ValidationError(exc.problems) from None
        return Response(self.get_serializer(credential).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=CredentialUpdateSerializer, responses=CredentialSerializer)
    def partial_update(self, request, name=None):
        credential = self.get_object()
        fields = _body(request, {"name", "value", "allowed_hosts", "description"})
        try:
            update_credential(credential, request.user, **fields)
        except CredentialInvalid as exc:
            raise ValidationError(exc.problems) from None
        return Response(self.get_serializer(credential).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, name=None):
        delete_credential(self.get_object(), request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
