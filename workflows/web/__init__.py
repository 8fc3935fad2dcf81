"""The browser dashboard: server-rendered pages that follow workflows live over websockets."""
