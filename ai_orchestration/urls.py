"""The AI layer's API routes; topdog/urls.py serves them with workflows' under /api/ in
one `api` namespace."""

from django.urls import path

from ai_orchestration import api
from workflows.api.urls import ide_paths

urlpatterns = [
    # The IDE contract's fourth endpoint: exact path, with or without a trailing slash.
    *ide_paths(
        "ai-workflows/get-ai-prompt/<str:workflow_id>",
        api.GetAiPromptApi.as_view(),
        "ide-get-ai-prompt",
    ),
    path(
        "workflows/<str:workflow_id>/runs/",
        api.WorkflowRunListApi.as_view(),
        name="workflow-runs",
    ),
    path(
        "workflows/<str:workflow_id>/runs/<str:run_id>/cancel/",
        api.WorkflowRunCancelApi.as_view(),
        name="workflow-run-cancel",
    ),
    path(
        "workflows/<str:workflow_id>/work-items/<str:key>/prompt/",
        api.WorkItemPromptApi.as_view(),
        name="workflow-work-item-prompt",
    ),
    path(
        "workflows/<str:workflow_id>/usage/",
        api.WorkflowUsageApi.as_view(),
        name="workflow-usage",
    ),
]
