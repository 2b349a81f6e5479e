"""`clipdex serve`: an HTTP API (FastAPI) and a web page over one index.

app.py builds the application (create_app); state.py holds the index and the warm model;
batching.py answers concurrent text queries together; routes_search.py and
routes_images.py are the /api/v1 routes; guards.py the token, body limit and security
headers; static/ the page. The library below never imports fastapi.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See clipdex.server.app.create_app (imported on use: fastapi loads only here)."""
    from clipdex.server.app import create_app as create

    return create(*args, **kwargs)
