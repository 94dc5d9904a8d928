from django.urls import path

from apps.approvals.views import respond

app_name = "approvals"
urlpatterns = [path("respond/<str:token>/", respond, name="respond")]
