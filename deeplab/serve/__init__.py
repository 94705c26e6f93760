"""Serve a model over HTTP: a JSON/PNG API and a one-page web UI (the optional ``serve`` extra).

    predictor, info = load_predictor("runs/demo/best.pt")
    app = create_app(predictor, info)            # any ASGI server; or run_server(predictor, info, port=8000)
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as err:
    raise ImportError(f"deeplab serve needs the optional 'serve' extra ({err.name} is missing): "
                      "pip install 'deeplab[serve]'") from err

from .app import ServeSettings, create_app
from .batching import PredictionQueue, QueueFull
from .loading import ModelInfo, load_predictor, model_info
from .server import run_server

__all__ = ["ModelInfo", "PredictionQueue", "QueueFull", "ServeSettings", "create_app", "load_predictor", "model_info",
           "run_server"]
