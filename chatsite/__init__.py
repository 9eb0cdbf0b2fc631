"""The chatsite project: settings, URLs, the ASGI application and the status page."""
