"""TopDog's URLs plus the two floors."""

from django.urls import path

from bench import floors
from topdog.urls import urlpatterns as topdog_urlpatterns

urlpatterns = [
    path("bench/floor/select/<str:workflow_id>", floors.select_one, name="bench-floor-select"),
    path("bench/floor/write", floors.lock_update_insert, name="bench-floor-write"),
    *topdog_urlpatterns,
]
