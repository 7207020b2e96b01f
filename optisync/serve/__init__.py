"""``optisync serve``: a long-running connector that takes events over HTTP, spools them
durably, and delivers them through the push engine (docs/serve.md).

Starlette and uvicorn are imported only by :mod:`optisync.serve.app` and the command, so
the other commands start without them.
"""
