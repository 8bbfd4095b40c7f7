"""Transports: thin adapters that pump a session onto a wire (WebSocket, SSE, long-poll)."""
