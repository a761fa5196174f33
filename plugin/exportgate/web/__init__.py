"""The HTTP layer: forward-auth endpoint, WSGI middleware, proxy and static server, and their pure helpers.

Only this package turns a decision into a status code or a page; ``clientaddr`` (who is asking, behind proxies)
and ``paths`` (which artifact, exactly as the origin resolves it) are pure and never touch a socket.
"""
