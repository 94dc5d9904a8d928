from rest_framework.routers import SimpleRouter

from apps.executions.api.views import ExecutionViewSet, IncompleteExecutionViewSet

router = SimpleRouter()
router.register("executions", ExecutionViewSet, basename="execution")
router.register(
    "incomplete-executions", IncompleteExecutionViewSet, basename="incomplete-execution"
)
urlpatterns = router.urls
