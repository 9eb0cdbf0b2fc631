"""Create a demo login on a fresh site, and print how to log in.

The password is random, made on first creation and kept in CHAT_DATA_DIR/demo-login.txt (mode
0600, beside the database and the secret key), so that later runs can print it again. It is
printed only while it still works: once someone changes the password, the file is stale and
the command says so instead.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

DEMO_USERNAME = "demo"


def login_file() -> Path:
    return Path(settings.CHAT_DATA_DIR) / "demo-login.txt"


def read_saved_password(path: Path) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    if fields.get("username") != DEMO_USERNAME:
        return None
    return fields.get("password") or None


def save_password(path: Path, password: str) -> None:
    """Write the login under a temporary name (0600 from the start), then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"username={DEMO_USERNAME}\npassword={password}\n")
    os.replace(tmp, path)


class Command(BaseCommand):
    help = "Create a demo superuser if the site has no user yet, and print the URL and the login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="the URL to print")

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        User = get_user_model()
        path = login_file()
        saved = read_saved_password(path)

        if not User.objects.exists():
            # A new database but an old login file (the database was deleted): keep the password
            # the person may already have noted.
            password = saved or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=DEMO_USERNAME, email="", password=password)
            save_password(path, password)
            self.stdout.write(f"Created the demo login (saved in {path}).")
            self._print_login(url, password)
            return

        user = User.objects.filter(username=DEMO_USERNAME).first()
        if saved and user is not None and user.is_active and user.check_password(saved):
            self._print_login(url, saved)
        else:
            self.stdout.write(f"Open {url} and log in with your account.")
            self.stdout.write("(New admin: `python manage.py createsuperuser`.)")

    def _print_login(self, url: str, password: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"Open {url} and log in as {DEMO_USERNAME} / {password}"))
