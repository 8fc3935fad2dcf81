from django.urls import path

from workflows.api import checks, health, ide, resources, work_items


def ide_paths(route: str, view: object, name: str) -> list:
    """An IDE path as the seed spells it (no trailing slash) and with one: the same view,
    no redirect (a redirected POST loses its body). The slash form is left out of the
    OpenAPI document (workflows/api/schema.py)."""
    return [path(route, view, name=name), path(f"{route}/", view, name=f"{name}-slash")]


urlpatterns = [
    # The IDE contract: exact paths (get-ai-prompt: ai_orchestration.urls).
    *ide_paths("ai-workflows/initialize", ide.InitializeApi.as_view(), "ide-initialize"),
    *ide_paths("ai-workflows/complete-phase", ide.CompletePhaseApi.as_view(), "ide-complete-phase"),
    *ide_paths("ai-workflows/status/<str:workflow_id>", ide.StatusApi.as_view(), "ide-status"),
    # Resources.
    path("projects/", resources.ProjectListApi.as_view(), name="project-list"),
    path(
        "projects/<str:project_ref>/", resources.ProjectDetailApi.as_view(), name="project-detail"
    ),
    path("workflows/", resources.WorkflowListApi.as_view(), name="workflow-list"),
    path(
        "workflows/<str:workflow_id>/",
        resources.WorkflowDetailApi.as_view(),
        name="workflow-detail",
    ),
    path(
        "workflows/<str:workflow_id>/transitions/",
        resources.WorkflowTransitionApi.as_view(),
        name="workflow-transitions",
    ),
    path(
        "workflows/<str:workflow_id>/cancel/",
        resources.WorkflowCancelApi.as_view(),
        name="workflow-cancel",
    ),
    path(
        "workflows/<str:workflow_id>/events/",
        resources.WorkflowEventListApi.as_view(),
        name="workflow-events",
    ),
    path(
        "workflows/<str:workflow_id>/handoffs/",
        resources.WorkflowHandoffListApi.as_view(),
        name="workflow-handoffs",
    ),
    path(
        "workflows/<str:workflow_id>/messages/",
        resources.WorkflowMessageListApi.as_view(),
        name="workflow-messages",
    ),
    path(
        "workflows/<str:workflow_id>/phase-results/",
        resources.WorkflowPhaseResultListApi.as_view(),
        name="workflow-phase-results",
    ),
    path(
        "workflows/<str:workflow_id>/phase-results/<str:result_id>/",
        resources.WorkflowPhaseResultDetailApi.as_view(),
        name="workflow-phase-result-detail",
    ),
    path(
        "workflows/<str:workflow_id>/messages/<str:seq>/",
        resources.WorkflowMessageDetailApi.as_view(),
        name="workflow-message-detail",
    ),
    path(
        "workflows/<str:workflow_id>/release/",
        resources.WorkflowReleaseApi.as_view(),
        name="workflow-release",
    ),
    path(
        "workflows/<str:workflow_id>/patch/",
        resources.WorkflowPatchApi.as_view(),
        name="workflow-patch",
    ),
    path(
        "workflows/<str:workflow_id>/work-items/",
        work_items.WorkItemListApi.as_view(),
        name="workflow-work-items",
    ),
    path(
        "workflows/<str:workflow_id>/work-items/<str:key>/complete/",
        work_items.WorkItemCompleteApi.as_view(),
        name="workflow-work-item-complete",
    ),
    path(
        "workflows/<str:workflow_id>/checks/",
        checks.WorkflowCheckListApi.as_view(),
        name="workflow-checks",
    ),
    path(
        "workflows/<str:workflow_id>/checks/<str:check_id>/",
        checks.WorkflowCheckDetailApi.as_view(),
        name="workflow-check-detail",
    ),
    path(
        "workflows/<str:workflow_id>/checks/<str:check_id>/cancel/",
        checks.WorkflowCheckCancelApi.as_view(),
        name="workflow-check-cancel",
    ),
    path("health/", health.HealthApi.as_view(), name="health"),
]
