"""``deeplab serve``: the app behind uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn

from .app import ServeSettings, create_app
from .loading import ModelInfo


def run_server(predictor: Any, info: ModelInfo, *, host: str = "127.0.0.1", port: int = 8000,
               settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Serves ``predictor`` until interrupted (Ctrl-C / SIGTERM stop it cleanly)."""
    app = create_app(predictor, info, settings)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {info.name} ({info.source}) on http://{shown}:{port}/  - API docs at /docs, "
          f"OpenAPI schema at /openapi.json", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
