"""The service layer: the only API that REST, WebSocket, Unix sockets, CLI and file sync call."""
