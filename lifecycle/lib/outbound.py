"""Requests to URLs that users give us (registry webhooks; later, alert channels), guarded
against server-side request forgery.

A URL passes `check_url` only if it uses https (http too while DEBUG is on), carries no
credentials, and names a host whose every address is public: not loopback, link-local,
private, shared (CGNAT), multicast, unspecified, reserved or a cloud metadata service. Hosts
written as bare numbers (2130706433, 0x7f000001, 127.1) are refused outright: resolvers read
them as addresses in ways a person reading the URL does not.

Check twice: when the URL is saved, so the user hears at once, and again right before each
request, because the name may point elsewhere by then (DNS rebinding). `post` then connects
to an address that very check returned, never resolving the name again, while TLS is still
verified against the name. It uses http.client, not urllib.request or requests: those follow
redirects and honour proxy variables from the environment, and neither lets the caller
choose the address connected to.

OUTBOUND_ALLOW_HOSTS (settings) names hosts exempt from the address rules, for a receiver a
deployment trusts on its own network and for tests' local receivers; it never exempts a URL
from the scheme and credential rules. No Django models here.
"""
import http.client
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2000
# Addresses of cloud instance-metadata and platform services. Most fall in ranges refused
# anyway; named so the refusal says what they are (Azure's wire server is a public address).
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wire server
    "192.0.0.192",  # Oracle Cloud (classic)
)}
METADATA_NAMES = {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                  "instance-data.ec2.internal"}
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # carries an IPv4 address in its low bits
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# A last label of digits or 0x-hex is an address in disguise: no top-level domain looks so.
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


class Refused(ValueError):
    """The URL may not be requested; the message says why, in words a user can act on."""


@dataclass(frozen=True)
class Target:
    """A checked URL: what to put on the wire and the addresses it may be sent to."""

    url: str
    scheme: str
    host: str  # lower-case ASCII (IDNA), without brackets or a trailing dot
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple  # the checked addresses (strings), in the resolver's order


@dataclass(frozen=True)
class Response:
    status: int
    address: str  # the address the request went to


def allowed_hosts():
    """OUTBOUND_ALLOW_HOSTS as hosts compare here: lower case, no brackets, no trailing dot."""
    hosts = (host.strip().lower().strip("[]").rstrip(".") for host in getattr(settings, "OUTBOUND_ALLOW_HOSTS", ()))
    return {host for host in hosts if host}


def check_url(url, *, allow_http=None, resolve=None):
    """The Target for `url`, or Refused. `allow_http` defaults to DEBUG; `resolve(host, port)`
    returns the host's addresses (default: the system resolver, `resolve_host`)."""
    allow_http = settings.DEBUG if allow_http is None else allow_http
    parts = _split(url)
    scheme = _check_scheme(parts.scheme.lower(), allow_http)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("A URL with credentials in it (user:password@) is not accepted; the receiver "
                      "checks the signature instead.")
    host = _host(parts)
    port = _port(parts, scheme)
    exempt = host in allowed_hosts()
    literal = _literal_address(host)
    if literal is None and not exempt:
        _check_name(host)
    addresses = [literal] if literal is not None else _resolved(host, port, resolve or resolve_host)
    if not exempt:
        for address in addresses:
            problem = address_problem(address)
            if problem:
                shown = host if literal is not None else f"{host} (it resolves to {address})"
                raise Refused(f"{shown} is {problem}; only public addresses can be reached.")
    path = parts.path or "/"
    return Target(url, scheme, host, port, path + (f"?{parts.query}" if parts.query else ""),
                  tuple(str(a) for a in addresses))


def _split(url):
    if not isinstance(url, str) or not url:
        raise Refused("Give a URL.")
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"A URL may be at most {MAX_URL_LENGTH} characters long.")
    # urlsplit silently drops tabs and newlines, so what it parses is not what was written.
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise Refused("A URL may not contain spaces or control characters.")
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ in an IPv6 host
        raise Refused(f"This is not a valid URL ({exc}).") from None


def _check_scheme(scheme, allow_http):
    if scheme == "https" or (scheme == "http" and allow_http):
        return scheme
    if scheme == "http":
        raise Refused("Use an https URL: plain http is accepted only while DEBUG is on.")
    shown = f"{scheme}://" if scheme else "a URL without a scheme"
    raise Refused(f"Use an https URL; {shown} is not accepted.")


def _host(parts):
    host = parts.hostname
    if not host:
        raise Refused("The URL names no host.")
    if host.endswith("."):  # a fully qualified name: the same host ("localhost." is localhost)
        host = host[:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise Refused("The host name is not a valid international domain name.") from None
    return host


def _port(parts, scheme):
    try:
        port = parts.port
    except ValueError:
        raise Refused("The port must be a number from 1 to 65535.") from None
    if port == 0:
        raise Refused("The port must be a number from 1 to 65535.")
    return port or (443 if scheme == "https" else 80)


def _literal_address(host):
    """The address a host written as an IP address names (None for a name). Zone ids
    (fe80::1%eth0) are cut off: every address with one is link-local anyway."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        return None


def _check_name(host):
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        raise Refused(f"{host} is an address written as a number; write an address as four "
                      "decimal parts (203.0.113.7) or use a host name.")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise Refused(f"{host} is not a valid host name.")
    if host == "localhost" or host.endswith(".localhost"):
        raise Refused(f"{host} names this machine; only public addresses can be reached.")
    if host in METADATA_NAMES:
        raise Refused(f"{host} is a cloud metadata service; it cannot be reached.")
    if len(labels) == 1:
        raise Refused(f"{host} is not a fully qualified name (such as hooks.example.com).")


def _resolved(host, port, resolve):
    try:
        found = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc}).") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(a.split("%", 1)[0]) for a in found))
    if not addresses:
        raise Refused(f"{host} does not resolve to any address.")
    return addresses


def resolve_host(host, port):
    """Every address the system resolver gives for `host` (TCP)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def address_problem(address):
    """What kind of non-public address `address` is, in words, or "" when it is public."""
    address = ipaddress.ip_address(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = address_problem(embedded)
        if problem:
            return f"{problem} ({embedded}, inside an IPv6 address)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.version == 4 and address in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "not a public address"
    return ""


def _embedded_ipv4(address):
    """The IPv4 address an IPv6 address stands for: mapped (::ffff:a.b.c.d), 6to4, NAT64."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


# --- Sending --------------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to `address` that speaks to (and names, in Host) `host`."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address
        # HTTPConnection.__init__ sets this on the instance; the pin must replace it there.
        self._create_connection = self._connect_to_address

    def _connect_to_address(self, _host_port, timeout, source_address):
        return socket.create_connection((self.address, self.port), timeout, source_address)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As _PinnedHTTPConnection, over TLS verified against `host` (SNI and certificate)."""

    def __init__(self, host, port, address, timeout, context=None):
        super().__init__(host, port, timeout=timeout, context=context or ssl.create_default_context())
        self.address = address
        self._create_connection = self._connect_to_address

    def _connect_to_address(self, _host_port, timeout, source_address):
        return socket.create_connection((self.address, self.port), timeout, source_address)


def post(target, body, headers, *, timeout, tls_context=None):
    """POST `body` (bytes) to a checked Target, trying its checked addresses in order until
    one accepts the connection. Every socket operation waits at most `timeout` seconds; a
    redirect is returned as it is, never followed; the response body is not read. https
    verifies the certificate against the host name with `tls_context` (default: the system's
    trusted CAs). Raises OSError (ssl.SSLError and timeouts included) or
    http.client.HTTPException."""
    error = None
    for address in target.addresses:
        if target.scheme == "https":
            connection = _PinnedHTTPSConnection(target.host, target.port, address, timeout, tls_context)
        else:
            connection = _PinnedHTTPConnection(target.host, target.port, address, timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            error = exc
            continue
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            return Response(connection.getresponse().status, address)
        finally:
            connection.close()
    raise error
