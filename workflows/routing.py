from django.urls import path

from workflows.consumers import DashboardConsumer, WorkflowConsumer

websocket_urlpatterns = [
    path("ws/workflows/<str:workflow_id>/", WorkflowConsumer.as_asgi()),
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
