"""``undertow serve``: the scheduler, the trigger endpoints and a JSON HTTP API in one process.

from undertow.server import create_app, serve
"""

from undertow.server.app import create_app
from undertow.server.serve import serve

__all__ = ["create_app", "serve"]
