from rest_framework.routers import SimpleRouter

from apps.executions.api.views import AgentViewSet, ExecutionViewSet, IncompleteExecutionViewSet

router = SimpleRouter()
router.register("executions", ExecutionViewSet, basename="execution")
router.register(
    "incomplete-executions", IncompleteExecutionViewSet, basename="incomplete-execution"
)
router.register("agents", AgentViewSet, basename="agent")
urlpatterns = router.urls
