"""The relay: the client-facing front, routing, interception and downstream links."""
