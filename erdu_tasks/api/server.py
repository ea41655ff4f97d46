"""`erdu api`: check where we may listen, then serve the app with uvicorn."""

from __future__ import annotations

from erdu_tasks.settings import Settings
from erdu_tasks.api.config import api_config, check_bind


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Run the API until stopped; ConfigError if it would listen beyond localhost without a token."""
    import uvicorn

    from erdu_tasks.api.app import create_app

    config = api_config(settings)
    host = host or config.host
    check_bind(config, host)
    uvicorn.run(create_app(settings, config), host=host, port=port or config.port, log_level=log_level,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)
