"""``/docs`` (Swagger UI) and ``/redoc`` from assets installed with the service, not a CDN.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google fonts from the internet, so
without it they are blank. The ``fastapi-offline`` package ships ``swagger-ui-bundle.js``,
``swagger-ui.css``, ``redoc.standalone.js`` and the favicon; ``create_app`` mounts them at
:data:`ASSETS` and these pages point there. Only those files are used, not the package's
FastAPI wrapper. Swagger UI's online validator badge (an image from validator.swagger.io)
is turned off, and ReDoc's sidebar logo (an image from cdn.redoc.ly, drawn whatever the
options) is stopped by the pages' ``Content-Security-Policy`` (:data:`IMAGES_FROM_HERE`): a
page view sends no request beyond this host.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
"""Where the documentation pages' scripts, style sheet and favicon are served."""
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
IMAGES_FROM_HERE = {"Content-Security-Policy": "img-src 'self' data: blob:"}
"""Images only from this host (and the pages' own inline ones); nothing else is restricted."""

router = APIRouter(include_in_schema=False)


def assets() -> StaticFiles:
    """The installed Swagger UI and ReDoc files, to mount at :data:`ASSETS`."""
    return StaticFiles(packages=[("fastapi_offline", "static")])


def _root(request: Request) -> str:
    """The prefix a proxy serves the app under (``root_path``), so links work behind it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the app's OpenAPI document."""
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT}",
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(IMAGES_FROM_HERE)
    return page


@router.get(OAUTH2_REDIRECT)
async def swagger_ui_redirect() -> HTMLResponse:
    """Where Swagger UI's OAuth2 flow returns (FastAPI's page, as with its default docs)."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for the app's OpenAPI document, without Google's web fonts."""
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(IMAGES_FROM_HERE)
    return page
