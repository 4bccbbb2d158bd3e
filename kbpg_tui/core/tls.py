"""kbpg's private CA and the node certificates it issues (``credentials/tls/``), and TLS probes.

- The CA (EC P-256, 10 years) is made once, in ``credentials/tls/`` (0700): ``ca.crt`` 0644 (exported for the
  applications, its path in postgres.env as POSTGRES_SSL_ROOT_CERT), ``ca.key`` 0600. A valid CA is never replaced:
  every client trusts it.
- One certificate per selected host (``<hostname>.crt`` 0644, ``<hostname>.key`` 0600), EC P-256, valid
  ``settings.tls.cert_days``, with the SANs :func:`wanted_sans` gives. It is reissued (new key) when it is missing,
  unreadable, not signed by the current CA, its SANs differ from the wanted ones, its key does not match, or it
  expires within ``settings.tls.renew_days``.
- Probes: :func:`pg_tls_probe` speaks PostgreSQL's SSLRequest first (PostgreSQL and PgBouncer), :func:`tls_probe`
  is a plain TLS handshake (Patroni's REST API, HAProxy's stats page); both verify the chain with ``ca.crt`` and the
  host name or IP address, and return the server certificate's :class:`CertInfo`.

Everything is done with the ``cryptography`` library: no openssl command line, no key material in argv or logs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import socket
import ssl
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import atomic_write

if TYPE_CHECKING:
    from .settings import Settings

TLS_DIR = Path("credentials") / "tls"  # relative to the work directory
CA_CERT, CA_KEY = TLS_DIR / "ca.crt", TLS_DIR / "ca.key"
DB_DIR, HAPROXY_DIR, PGBOUNCER_DIR = "/etc/patroni/tls", "/etc/haproxy/tls", "/etc/pgbouncer/tls"
RENEW_DAYS = 30  # settings.tls.renew_days' default; the settings' value is what counts
CA_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past: a node's clock may be behind
SSL_REQUEST = struct.pack("!II", 8, 80877103)  # PostgreSQL's SSLRequest: length 8, code 1234.5679

_DNS_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")  # a host name as a file name: no /, no leading dot


class TlsError(Exception):
    """The local CA or a certificate cannot be used or made; the message names the file and what to do."""


class TlsProbeError(Exception):
    """A TLS probe failed. ``kind``: "unreachable" (no TCP connection), "refused" (the server said no to TLS),
    "verify" (the chain, the host name or the dates do not verify), "handshake" (any other TLS failure)."""

    def __init__(self, reason: str, kind: str = "handshake"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    sans_dns: tuple[str, ...]
    sans_ip: tuple[str, ...]
    not_after: dt.datetime  # aware, UTC
    days_left: float
    issuer_cn: str
    fingerprint: str  # sha256, lower-case hex


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _load_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = values[0].value if values else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns = tuple(str(name) for name in ext.get_values_for_type(x509.DNSName))
    ips = tuple(str(address) for address in ext.get_values_for_type(x509.IPAddress))
    return dns, ips


def _info(cert: x509.Certificate) -> CertInfo:
    dns, ips = _sans(cert)
    not_after = cert.not_valid_after_utc
    return CertInfo(
        subject_cn=_cn(cert.subject),
        sans_dns=dns,
        sans_ip=ips,
        not_after=not_after,
        days_left=(not_after - _now()).total_seconds() / 86400,
        issuer_cn=_cn(cert.issuer),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def cert_info(pem: bytes) -> CertInfo:
    """What a certificate (PEM, or DER as a TLS handshake gives it) says: subject, SANs, expiry, issuer."""
    try:
        return _info(_load_cert(pem))
    except ValueError as exc:
        raise TlsError(f"not a certificate: {exc}") from None


# --- files --------------------------------------------------------------------------------------------------------

def _tls_dir(workdir: str | Path) -> Path:
    """``credentials/tls`` made 0700 (``credentials/`` too, when kbpg makes it), whatever the umask."""
    directory = Path(workdir) / TLS_DIR
    for path in (directory.parent, directory):
        if not path.is_dir():
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC key")
    return key


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)


def _fix_mode(path: Path, mode: int) -> bool:
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
        return True
    return False


def _node_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name:
        raise TlsError(f"{name!r} cannot name a certificate file (letters, digits, '.', '-')")
    return name


def node_paths(workdir: str | Path, name: str) -> tuple[Path, Path]:
    """``credentials/tls/<name>.crt`` and ``<name>.key``."""
    directory = Path(workdir) / TLS_DIR
    return directory / f"{_node_name(name)}.crt", directory / f"{name}.key"


# --- the CA -------------------------------------------------------------------------------------------------------

def _load_ca(workdir: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = Path(workdir) / CA_CERT, Path(workdir) / CA_KEY
    try:
        cert = _load_cert(cert_path.read_bytes())
    except FileNotFoundError:
        raise TlsError(f"{cert_path} is missing; run kbpg install (step 00) to make the CA") from None
    except (OSError, ValueError) as exc:
        raise TlsError(f"{cert_path}: cannot read the CA certificate: {exc}") from None
    try:
        key = _load_key(key_path.read_bytes())
    except FileNotFoundError:
        raise TlsError(f"{key_path} is missing: the CA cannot sign; restore it from your backup") from None
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"{key_path}: cannot read the CA key: {type(exc).__name__}") from None
    if not _same_public_key(cert, key):
        raise TlsError(f"{key_path} is not the key of {cert_path}; restore both from your backup")
    return cert, key


def _make_ca(directory: Path) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kbpg"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"kbpg private CA {secrets.token_hex(4)}"),
    ])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first: a CA certificate without its key on disk would be a CA nobody can use.
    atomic_write(directory / CA_KEY.name, _key_pem(key), mode=0o600)
    atomic_write(directory / CA_CERT.name, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return _cn(name)


def ensure_ca(workdir: str | Path) -> tuple[bool, str]:
    """Make the CA if there is none. A valid CA is never replaced (every client trusts it); a broken one (a half
    missing, unreadable, key not matching) is refused with :class:`TlsError`; an expired one is replaced."""
    directory = _tls_dir(workdir)
    cert_path, key_path = directory / CA_CERT.name, directory / CA_KEY.name
    if not cert_path.exists() and not key_path.exists():
        cn = _make_ca(directory)
        return True, f"made the CA {cn!r} ({cert_path}, valid {CA_DAYS // 365} years)"
    cert, _key = _load_ca(workdir)
    days_left = (cert.not_valid_after_utc - _now()).total_seconds() / 86400
    if days_left <= 0:
        cn = _make_ca(directory)
        return True, (f"made a new CA {cn!r}: the old one expired {-days_left:.0f} days ago "
                      f"(give the applications the new {cert_path})")
    fixed = [f"{path.name} set to {mode:04o}" for path, mode in ((key_path, 0o600), (cert_path, 0o644))
             if _fix_mode(path, mode)]
    detail = f"CA {_cn(cert.subject)!r} kept (expires in {days_left:.0f} days)"
    return bool(fixed), "; ".join([detail, *fixed])


def ca_pem(workdir: str | Path) -> bytes:
    """The CA certificate (what goes to the nodes as ca.crt)."""
    path = Path(workdir) / CA_CERT
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path} is missing; run kbpg install (step 00) to make the CA") from None


# --- node certificates --------------------------------------------------------------------------------------------

def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def wanted_sans(ctx: Any, host_name: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the certificate of ``host_name`` must carry.

    DB node: its address, hostname, FQDN, the LB address and every HAProxy node's address (HAProxy passes TCP
    through: a client of LB:5432/5433 or haproxy-0N:5432 verifies the DB node's certificate).
    HAProxy node (PgBouncer's and the stats page's certificate): its address, hostname, FQDN, the LB address.
    """
    selection = ctx.selection
    lb = ctx.settings.network.lb_address
    for server in selection.db_nodes:
        if server.hostname == host_name:
            extra_ips = [lb, *(s.ip_private for s in selection.haproxy_nodes)]
            break
    else:
        for server in selection.haproxy_nodes:
            if server.hostname == host_name:
                extra_ips = [lb]
                break
        else:
            raise TlsError(f"{host_name} is not a selected DB or HAProxy node")
    dns = [server.hostname.lower()]
    fqdn = (server.fqdn or "").strip().rstrip(".").lower()
    if fqdn and _DNS_RE.match(fqdn):
        dns.append(fqdn)
    ips = [str(ipaddress.ip_address(ip)) for ip in [server.ip_private, *extra_ips] if ip]
    return _unique(dns), _unique(ips)


def _issue(workdir: str | Path, name: str, dns: list[str], ips: list[str], days: int) -> None:
    ca_cert, ca_key = _load_ca(workdir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kbpg"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = node_paths(workdir, name)
    # The key first: if kbpg dies in between, the old certificate no longer matches its key and is reissued.
    atomic_write(key_path, _key_pem(key), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_change(have: tuple[tuple[str, ...], tuple[str, ...]], dns: list[str], ips: list[str]) -> str | None:
    want = {f"DNS:{d.lower()}" for d in dns} | {f"IP:{ipaddress.ip_address(i)}" for i in ips}
    got = {f"DNS:{d.lower()}" for d in have[0]} | {f"IP:{ipaddress.ip_address(i)}" for i in have[1]}
    if want == got:
        return None
    parts = []
    if want - got:
        parts.append("adds " + ", ".join(sorted(want - got)))
    if got - want:
        parts.append("drops " + ", ".join(sorted(got - want)))
    return "; ".join(parts)


def renewal_reason(workdir: str | Path, name: str, dns: list[str], ips: list[str], renew_days: int) -> str | None:
    """Why the certificate of ``name`` must be (re)issued, or None when it is good."""
    cert_path, key_path = node_paths(workdir, name)
    if not cert_path.exists() or not key_path.exists():
        return "issued" if not cert_path.exists() and not key_path.exists() else \
            f"reissued: {(key_path if cert_path.exists() else cert_path).name} was missing"
    try:
        cert = _load_cert(cert_path.read_bytes())
    except (OSError, ValueError):
        return f"reissued: {cert_path.name} was unreadable"
    try:
        key = _load_key(key_path.read_bytes())
    except (OSError, ValueError, TypeError):
        return f"reissued: {key_path.name} was unreadable"
    ca_cert, _ca_key = _load_ca(workdir)
    if not _signed_by(cert, ca_cert):
        return "reissued: not signed by the current CA"
    if not _same_public_key(cert, key):
        return "reissued: the key did not match the certificate"
    if (change := _san_change(_sans(cert), dns, ips)):
        return f"reissued: SANs changed ({change})"
    days_left = (cert.not_valid_after_utc - _now()).total_seconds() / 86400
    if days_left <= 0:
        return f"renewed: expired {-days_left:.0f} days ago"
    if days_left < renew_days:
        # A certificate never outlives its CA: one that already ends with the CA cannot be renewed any further, and
        # reissuing it on every run would reload every service for nothing (check 16 warns about the CA itself).
        if abs((cert.not_valid_after_utc - ca_cert.not_valid_after_utc).total_seconds()) <= 60:
            return None
        return f"renewed: expires in {days_left:.0f} days"
    return None


def ensure_node_cert(workdir: str | Path, name: str, dns: list[str], ips: list[str], settings: Settings,
                     force: bool = False) -> tuple[bool, str]:
    """(Re)issue ``credentials/tls/<name>.crt`` and ``.key`` when :func:`renewal_reason` says so (or ``force``).

    Returns (changed, why): "issued", "renewed: expires in 12 days", "reissued: SANs changed (...)", or, when kept,
    "valid until 2026-01-01 (300 days left)". Needs the CA (:func:`ensure_ca` first).
    """
    _tls_dir(workdir)
    reason = renewal_reason(workdir, name, dns, ips, settings.tls.renew_days)
    if reason is None and force:
        reason = "renewed: asked for"
    cert_path, key_path = node_paths(workdir, name)
    if reason is None:
        info = cert_info(cert_path.read_bytes())
        fixed = [f"{path.name} set to {mode:04o}" for path, mode in ((key_path, 0o600), (cert_path, 0o644))
                 if _fix_mode(path, mode)]
        detail = f"valid until {info.not_after:%Y-%m-%d} ({info.days_left:.0f} days left)"
        return bool(fixed), "; ".join([detail, *fixed])
    _issue(workdir, name, dns, ips, settings.tls.cert_days)
    return True, reason


def node_files(workdir: str | Path, name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of ``name``, as they go to the node. Never log the second."""
    cert_path, key_path = node_paths(workdir, name)
    try:
        return cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename} is missing; run kbpg install (step 00) to issue it") from None


def renew_all(ctx: Any, force: bool = False) -> list[tuple[str, bool, str]]:
    """The CA, then every selected host's certificate: [(name, changed, detail)]. ``force`` reissues every node
    certificate (never the CA)."""
    changed, detail = ensure_ca(ctx.workdir)
    done = [("CA", changed, detail)]
    for server in (*ctx.selection.db_nodes, *ctx.selection.haproxy_nodes):
        dns, ips = wanted_sans(ctx, server.hostname)
        changed, detail = ensure_node_cert(ctx.workdir, server.hostname, dns, ips, ctx.settings, force=force)
        done.append((server.hostname, changed, detail))
    return done


# --- clients ------------------------------------------------------------------------------------------------------

def ca_path(workdir: str | Path) -> Path:
    """Absolute path of ``credentials/tls/ca.crt`` (what libpq's sslrootcert and POSTGRES_SSL_ROOT_CERT name)."""
    return (Path(workdir) / CA_CERT).resolve()


def client_context(workdir: str | Path) -> ssl.SSLContext:
    """Verifies the server with ca.crt only (not the system's CAs), host name or IP checked, TLS 1.2 or newer."""
    return _context(ca_path(workdir))


def _context(ca_file: str | Path) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except FileNotFoundError:
        raise TlsError(f"{ca_file} is missing; run kbpg install (step 00) to make the CA") from None
    except ssl.SSLError as exc:
        raise TlsError(f"{ca_file}: not a CA certificate ({exc.reason or exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def libpq_params(workdir: str | Path, settings: Settings) -> dict[str, Any]:
    """psycopg/libpq keywords for kbpg's own connections: verify-full with ca.crt when TLS is on, else nothing."""
    if not settings.tls.enabled:
        return {}
    return {"sslmode": "verify-full", "sslrootcert": str(ca_path(workdir))}


# --- probes -------------------------------------------------------------------------------------------------------

def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise TlsProbeError(f"{host}:{port}: no answer within {timeout:g} s", "unreachable") from None
    except OSError as exc:
        raise TlsProbeError(f"{host}:{port}: cannot connect: {exc.strerror or exc}", "unreachable") from None


def _close_quietly(tls: ssl.SSLSocket) -> None:
    """End the session with a close_notify and read what the server still sends (TLS 1.3 session tickets): a close
    with unread data would reset the connection, and PostgreSQL logs every reset ("could not receive data")."""
    try:
        tls.settimeout(min(tls.gettimeout() or 1.0, 1.0))  # a server that never answers the close costs 1 s at most
        tls.unwrap()
    except (OSError, ValueError):
        pass


def _handshake(sock: socket.socket, host: str, port: int, ca_file: str | Path, server_name: str) -> CertInfo:
    context = _context(ca_file)
    try:
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            _close_quietly(tls)
    except ssl.SSLCertVerificationError as exc:
        raise TlsProbeError(f"{host}:{port}: certificate does not verify for {server_name}: "
                            f"{exc.verify_message or exc.reason}", "verify") from None
    except ssl.SSLError as exc:
        raise TlsProbeError(f"{host}:{port}: TLS handshake failed: {exc.reason or exc}", "handshake") from None
    except TimeoutError:
        raise TlsProbeError(f"{host}:{port}: TLS handshake timed out", "handshake") from None
    except OSError as exc:
        raise TlsProbeError(f"{host}:{port}: TLS handshake failed: {exc.strerror or exc}", "handshake") from None
    if not der:
        raise TlsProbeError(f"{host}:{port}: the server sent no certificate", "verify")
    return cert_info(der)


def pg_tls_probe(host: str, port: int, ca_path: str | Path, server_name: str, timeout: float = 5.0) -> CertInfo:
    """PostgreSQL's or PgBouncer's certificate: SSLRequest, expect ``S``, then a TLS handshake verifying the chain
    with ``ca_path`` and ``server_name`` (a host name or an IP address). Sends no startup packet: no login."""
    sock = _connect(host, port, timeout)
    try:
        try:
            sock.sendall(SSL_REQUEST)
            answer = sock.recv(1)
        except TimeoutError:
            raise TlsProbeError(f"{host}:{port}: no answer to the SSLRequest within {timeout:g} s",
                                "unreachable") from None
        except OSError as exc:
            raise TlsProbeError(f"{host}:{port}: SSLRequest failed: {exc.strerror or exc}", "unreachable") from None
        if answer == b"N":
            raise TlsProbeError(f"{host}:{port}: the server refuses TLS (ssl is off)", "refused")
        if answer != b"S":
            raise TlsProbeError(f"{host}:{port}: not a PostgreSQL answer to the SSLRequest ({answer!r})", "refused")
        return _handshake(sock, host, port, ca_path, server_name)
    finally:
        sock.close()


def tls_probe(host: str, port: int, ca_path: str | Path, server_name: str, timeout: float = 5.0) -> CertInfo:
    """A plain TLS handshake (Patroni's REST API, HAProxy's stats page), verified like :func:`pg_tls_probe`."""
    sock = _connect(host, port, timeout)
    try:
        return _handshake(sock, host, port, ca_path, server_name)
    finally:
        sock.close()
