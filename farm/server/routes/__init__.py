"""One router per resource; farm.server.app mounts each at / and again under /api."""
