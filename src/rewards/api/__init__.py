"""The HTTP API: FastAPI app factory, routes per area, problem+json errors."""
