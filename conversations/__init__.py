"""Teams, conversations and messages, and the ways people reach them (pages, websocket, API)."""
