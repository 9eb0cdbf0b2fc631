"""``manage.py runserver`` is Daphne's: it serves the ASGI application, websockets included.

Daphne's own app (``"daphne"`` first in INSTALLED_APPS) would give the same command, but its
AppConfig imports Daphne's server and Twisted at ``django.setup()``: ~0.3 s of CPU in every process,
every management command and script included, that never serves anything. This module is imported
only when the command runs (``chatsite`` comes before ``django.contrib.staticfiles`` in
INSTALLED_APPS, so its command wins over that app's WSGI one).
"""

from daphne.management.commands.runserver import Command

__all__ = ["Command"]
