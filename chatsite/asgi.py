"""The ASGI application Daphne serves: HTTP (with the static files) and websockets."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set up Django before importing anything that may import models (consumers, auth), as
# django.core.asgi.get_asgi_application does; its handler, with request threads kept (threads.py).
django.setup(set_prefix=False)

from chatsite.threads import ASGIHandler  # noqa: E402

django_asgi_app = ASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite.origin import SameOriginValidator  # noqa: E402
from chatsite.static import StaticFiles  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files are served by the same process, DEBUG on or off: one command runs the site.
        "http": StaticFiles(django_asgi_app),
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
