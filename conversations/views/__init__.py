"""The browser chat's pages (function views; the websocket is in conversations.consumers)."""
