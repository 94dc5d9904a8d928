"""`POST /api/v1/auth/token/`: a user name and password for the user's API token, throttled
like the login page (django-axes): locked out, it answers 429 without checking the password."""

from __future__ import annotations

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.lockout import lockout_message


class LockedOut(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "locked_out"


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, write_only=True)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class TokenView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=TokenRequestSerializer, responses=TokenSerializer)
    def post(self, request):
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        credentials = {"username": body.validated_data["username"]}
        http_request = request._request  # axes keeps its marks on Django's request
        if AxesProxyHandler.is_locked(http_request, credentials):
            raise LockedOut(lockout_message(credentials["username"]))
        user = authenticate(
            http_request,
            username=credentials["username"],
            password=body.validated_data["password"],
        )
        if getattr(http_request, "axes_locked_out", False):  # this failure reached the limit
            raise LockedOut(lockout_message(credentials["username"]))
        if user is None or not user.is_active:
            raise ValidationError("Unable to log in with this user name and password.")
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})
