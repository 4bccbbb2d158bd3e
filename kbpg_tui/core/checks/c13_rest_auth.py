"""13 (field failure 14). Patroni's unsafe REST endpoints refuse a request without credentials, on every DB node
(over HTTPS when TLS is on: the credentials of the requests that have them never travel in clear text)."""

from __future__ import annotations

from ..ssh import Host
from .base import Check, CheckFailed, on_hosts
from .probe import ProbeContext


def rest_auth(p: ProbeContext, host: Host) -> str:
    """The probe is ``PATCH /config`` with no body, the endpoint that matters most (whoever may patch the dynamic
    configuration can set any PostgreSQL parameter cluster-wide, archive_command included) and the most harmless
    one to knock on: Patroni checks the credentials first (401), and even without them it would answer 400 to
    an empty body before touching the DCS. ``POST /reload`` or ``/restart`` would act if they were open.
    """
    url = p.rest_url(host, "/config")
    status, _ = p.http(url, method="PATCH")
    if status != 401:
        accepted = (" (it reached the handler: unsafe endpoints take requests from anyone)"
                    if status in (200, 400) else "")
        raise CheckFailed(f"{host.name}: PATCH /config without credentials answered {status}, expected 401"
                          f"{accepted}; re-run `kbpg install` to restore restapi.authentication")
    return f"{host.name}: unsafe REST endpoints refuse requests without credentials (401)"


CHECK = Check(13, "patroni rest auth", on_hosts("db", rest_auth))
