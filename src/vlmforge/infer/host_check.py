"""The Host-header check that keeps DNS-rebinding pages from using a server on 127.0.0.1.

    app.add_middleware(HostHeaderCheck, allowed=allowed_host_check(config))

A page on another site cannot read the API's answers (no CORS), but a DNS-rebinding page can: it
points its own domain at 127.0.0.1, after which its requests are same-origin. Only the Host header
it sends (its own domain) gives it away, so the server answers only the names it is served under.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse

from vlmforge.infer.openai_schema import RequestError
from vlmforge.infer.serve_config import LOOPBACK_HOSTS, ServeConfig


def allowed_host_check(config: ServeConfig):
    """A test of the Host header: the loopback names, the bound host and `--allowed-hosts` (`*`: any).

    When bound to every interface (0.0.0.0 / ::), any IP address is accepted too: an address cannot
    be rebound, only a name can."""
    names = {name.lower().rstrip(".") for name in (*LOOPBACK_HOSTS, config.host, *config.allowed_hosts)}
    if "*" in names:
        return lambda host: True
    any_address = config.host in ("0.0.0.0", "::", "")

    def allowed(host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in names or (any_address and _is_ip_address(host))

    return allowed


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` → `::1`, `localhost:80` → `localhost`."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostHeaderCheck:
    """ASGI middleware: a request whose Host header names a host not `allowed` gets a 400 (plain ASGI,
    so streamed answers and client disconnects pass through untouched)."""

    def __init__(self, app, allowed):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host")
            name = host_name(header.decode("latin-1")) if header is not None else None
            if name is not None and not self.allowed(name):
                error = RequestError(f"this server does not answer to the host name {name!r}; start it with "
                                     f"--allowed-hosts {name} to allow it", code="invalid_host")
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
