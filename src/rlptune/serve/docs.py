"""``/docs`` from packaged files: Swagger UI's script and style ship in ``serve/static`` (swagger-ui-dist, Apache-2.0,
see ``static/LICENSE-swagger-ui.txt``), so the API page works on a machine with no internet access.

FastAPI's own ``/docs`` loads them from a CDN and is blank offline; the page here names only this server's routes.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

#: The version of swagger-ui-dist whose files ``static/`` holds (unchanged, as the registry ships them).
SWAGGER_UI_VERSION = "5.35.0"
STATIC_PREFIX = "/static/"
#: The packaged files served under :data:`STATIC_PREFIX`, with their media types: nothing else is read from disk.
STATIC_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def static_bytes(name: str) -> bytes:
    """The packaged file ``name`` (one of :data:`STATIC_FILES`)."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def docs_html(title: str, openapi_url: str = "/openapi.json") -> str:
    """Swagger UI's page with every asset on this server (and no online validator badge)."""
    response = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=STATIC_PREFIX + "swagger-ui-bundle.js",
        swagger_css_url=STATIC_PREFIX + "swagger-ui.css",
        swagger_favicon_url=STATIC_PREFIX + "favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    return bytes(response.body).decode("utf-8")


def add_docs_routes(app: FastAPI) -> None:
    """``GET /docs`` and the files it loads; the app must be built with ``docs_url=None`` and ``redoc_url=None``."""
    page = docs_html(f"{app.title} - API docs", app.openapi_url or "/openapi.json")
    cached = {name: static_bytes(name) for name in STATIC_FILES}  # read once: a few MB, served many times

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page)

    def serve(name: str):
        async def static() -> Response:
            return Response(
                cached[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "public, max-age=86400"}
            )

        return static

    for name in STATIC_FILES:
        app.add_api_route(STATIC_PREFIX + name, serve(name), methods=["GET"], include_in_schema=False)
