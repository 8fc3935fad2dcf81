from django.urls import path

from workflows.web import views

app_name = "dashboard"

urlpatterns = [
    path("", views.board, name="board"),
    path("workflows/<str:workflow_id>/", views.workflow_detail, name="workflow"),
]
