from rest_framework.routers import SimpleRouter

from apps.accounts.api.audit import AuditViewSet

router = SimpleRouter()
router.register("audit", AuditViewSet, basename="audit")
urlpatterns = router.urls
