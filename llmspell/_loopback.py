"""Keep Thespian's TCP transport on the loopback interface.

Thespian's TCP transport binds every listening socket of an "external"
address on all interfaces (``IPBase.IPActorAddress.bindname`` is
``('', port)``), whatever ``THESPIAN_BASE_IPADDR`` says, and it unpickles
whatever reaches those sockets: as shipped, any host that can reach the
machine could send code to an llmspell process. ``install()`` makes the
narrowest change that closes this: an address whose host is a loopback
address (``127.x.x.x``, ``::1``, ``localhost``) binds to that host instead of
all interfaces; every other address keeps Thespian's behaviour. Together
with ``THESPIAN_BASE_IPADDR=127.0.0.1`` (set by the local driver before the
admin starts), every socket of a ``local`` runtime listens on 127.0.0.1 only.
Actor processes are forked from the process that installed it, so they
inherit it; importing llmspell installs it again where a process is spawned.
See docs/security.md.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["allow", "install", "is_loopback"]

_installed = False
_hosts: set[str] = set()  # other addresses given (cluster mode's --host): bound as such


def allow(host: str) -> None:
    """Sockets of addresses on ``host`` bind to ``host`` itself (a cluster's
    ``--host``), not to all interfaces; inherited by processes forked later."""
    _hosts.add(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install() -> None:
    """Patch ``IPActorAddress.bindArgs`` once (idempotent)."""
    global _installed
    if _installed:
        return
    from thespian.system.transport import IPBase

    original = IPBase.IPActorAddress.bindArgs

    def bind_args(self: Any) -> tuple[Any, ...]:
        host = self.sockname[0] if self.sockname else ""
        if isinstance(host, str) and (is_loopback(host) or host in _hosts):
            return (self.sockname,)
        return original.fget(self)  # type: ignore[no-any-return]

    IPBase.IPActorAddress.bindArgs = property(bind_args)
    _installed = True
