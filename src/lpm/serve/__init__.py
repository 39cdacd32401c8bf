"""The live server: FastAPI app (``create_app``), WebSocket protocol, session manager, static page."""
