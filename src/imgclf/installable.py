"""What makes a page an installable web app: its manifest and icons. serve's camera page and the phone
app that `imgclf export --format web` writes share them; the icon files live in `imgclf.serve`."""

from __future__ import annotations

from typing import Any

ICON_SIZES = (192, 512)
ICON_FILES = ("icon.svg", *(f"icon-{size}.png" for size in ICON_SIZES))


def web_app_manifest(name: str, short_name: str, description: str) -> dict[str, Any]:
    """A web app manifest: standalone display, relative start URL and scope (so it works behind a path
    prefix and from any folder), the icons."""
    return {
        "name": name,
        "short_name": short_name,
        "description": description,
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "orientation": "portrait",
        "background_color": "#f6f8fa",
        "theme_color": "#2f6fde",
        "icons": [
            {"src": "icon.svg", "sizes": "any", "type": "image/svg+xml"},
            *(
                {"src": f"icon-{size}.png", "sizes": f"{size}x{size}", "type": "image/png"}
                for size in ICON_SIZES
            ),
        ],
    }
