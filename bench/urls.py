"""TopDog's URLs plus the two floors and the websocket bench's two trigger views."""

from django.urls import path

from bench import floors, ws_floor
from topdog.urls import urlpatterns as topdog_urlpatterns

urlpatterns = [
    path("bench/floor/select/<str:workflow_id>", floors.select_one, name="bench-floor-select"),
    path("bench/floor/write", floors.lock_update_insert, name="bench-floor-write"),
    path("bench/floor/write2", floors.lock_update_insert_two, name="bench-floor-write2"),
    path("bench/ws/transition", ws_floor.transition_view, name="bench-ws-transition"),
    path("bench/ws/floor/send", ws_floor.floor_send_view, name="bench-ws-floor-send"),
    *topdog_urlpatterns,
]
