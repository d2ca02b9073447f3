"""The dashboard: static files (plain ES modules, no build step) served by the gateway.

Only the files are public; the page asks for a token and sends it with every API call, so a
visitor without one sees an empty shell and no data. The routes stay out of the OpenAPI
schema: they are not part of the API, and the tenancy test walks every route the schema lists.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/dashboard"

# The page loads its own scripts and styles and talks to its own origin only: a log line that
# someone managed to turn into markup still could not run a script or send data elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Revalidate every time: after an upgrade a browser must not mix old modules with a new API.
NO_STALE_ASSETS = CacheControlHeader(no_cache=True)


def dashboard_routes() -> list[object]:
    """The page at `/` and its assets under ASSETS_PATH, both public and outside the schema."""
    index = (STATIC_DIR / "index.html").read_bytes()
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

    @get("/", opt={"public": True}, include_in_schema=False, cache_control=NO_STALE_ASSETS, media_type=MediaType.HTML)
    async def dashboard() -> Response[bytes]:
        """The dashboard's single page; hash routes (`#/runs/<id>`) pick the view."""
        return Response(index, media_type=MediaType.HTML, headers=headers)

    assets: Router = create_static_files_router(
        path=ASSETS_PATH, directories=[STATIC_DIR], opt={"public": True}, include_in_schema=False,
        cache_control=NO_STALE_ASSETS, name="dashboard-assets",
    )
    return [dashboard, assets]
