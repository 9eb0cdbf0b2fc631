"""The settings of the tests' live servers (tests/live_server.py) and of the scripts they run: the
site's own (chatsite/settings.py, read from the same environment), with one change.

Passwords are hashed with MD5 instead of the site's PBKDF2 (Django's choice for tests): PBKDF2's
1,000,000 rounds cost 0.6 s of CPU a hash, and every browser login, every password a test module's
set-up script gives its users and every password set through a page pays one; over a whole run that
was tens of CPU-seconds, in tests of pages and streams, not of password hashing. The servers of
tests/conversations/test_chat_browser.py (the real model's end-to-end path through the browser) keep
the site's settings unchanged, PBKDF2 included: a server given ``DJANGO_SETTINGS_MODULE`` in its
environment runs with that module.
"""

from chatsite.settings import *  # noqa: F403 (the site's settings, all of them)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
