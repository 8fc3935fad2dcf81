from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from ai_orchestration.urls import urlpatterns as ai_api_urlpatterns
from topdog.observability.views import metrics_view
from workflows.api.urls import urlpatterns as workflows_api_urlpatterns

# One `api` namespace (reverse("api:...")) served from both apps' route lists.
api_urlpatterns = workflows_api_urlpatterns + ai_api_urlpatterns

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:board", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("dashboard/", include("workflows.web.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include((api_urlpatterns, "api"))),
    path("metrics", metrics_view, name="metrics"),
]
