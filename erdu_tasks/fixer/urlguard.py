"""Where a runbook's HTTP request may go: the one place that decides, for actions and checks alike.

Two rules, both here:

1. **A host that comes from the incident is allowlisted.** When a `{host}` or `{service}` placeholder
   lands in a URL's host (`http://{host}:8080/...`, not only its port or path), the rendered host must be one the operator named:
   a host of the service catalog (`hosts:` of a service) or of the `runbook_hosts` setting (names, IP
   addresses or networks). Anything else is refused before a request is made, with the reason: another
   name, another loopback address, a decimal / octal / hex IP form, a percent-encoded or userinfo trick.
2. **No request reaches a cloud metadata or link-local address** (169.254.0.0/16, fe80::/10, fd00:ec2::254,
   100.100.100.200, metadata.google.internal, ...), unless `runbook_allow_link_local` is set. The check
   runs after DNS resolution: every address the name resolves to is checked, and the request connects to
   the address that was checked (the Host header and TLS server name stay the URL's), so a DNS answer that
   changes between the check and the connection (rebinding) cannot move the request. Redirects are not
   followed, so a 3xx cannot lead elsewhere either.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from erdu_tasks.errors import PermanentError

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",       # IPv4 link-local: AWS, GCP, Azure, OpenStack, Oracle metadata at 169.254.169.254
    "fe80::/10",            # IPv6 link-local
    "fd00:ec2::254/128",    # AWS metadata over IPv6
    "100.100.100.200/32",   # Alibaba Cloud metadata
    "0.0.0.0/8",            # "this host": connects to a local address
    "::/128",               # IPv6 unspecified
))
"""Addresses no runbook request reaches unless `runbook_allow_link_local` is set."""

METADATA_NAMES: frozenset[str] = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.com", "metadata.tencentyun.com",
})
"""Host names of metadata services, refused before they are even resolved."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")
_SENTINEL = "erduplaceholder0"


class UrlRefused(PermanentError):
    """A URL the policy does not let a runbook request; the message says why."""


def _embedded_v4(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def parse_ip(text: str) -> IPAddress | None:
    """The address written canonically in text (brackets and a zone index allowed), else None."""
    text = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normal_host(host: str) -> str:
    """A host as compared: lower case, without a trailing dot, IP addresses in canonical form."""
    host = host.strip().lower().rstrip(".")
    addr = parse_ip(host)
    return str(addr) if addr is not None else host


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts an incident may put into a runbook URL, and whether link-local addresses are reachable."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    allow_link_local: bool = False

    @classmethod
    def build(cls, entries: Iterable[str], *, allow_link_local: bool = False) -> UrlPolicy:
        """A policy from host names, IP addresses and networks (`10.0.0.0/24`)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                hosts.add(normal_host(entry))
        return cls(frozenset(hosts), tuple(networks), allow_link_local)

    # ------------------------------------------------------------------ rule 1: incident-chosen hosts

    def check_incident_host(self, raw_host: str) -> str:
        """The host an incident put into a URL, if allowlisted; UrlRefused saying why not."""
        shown = raw_host if len(raw_host) <= 80 else raw_host[:80] + "…"
        host = unquote(raw_host)
        if "@" in host:
            raise UrlRefused(f"host {shown!r} carries userinfo ('@'); a host from the incident may not")
        if "%" in host or any(c.isspace() or ord(c) < 32 for c in host):
            raise UrlRefused(f"host {shown!r} is percent-encoded or has control characters")
        addr = parse_ip(host)
        if addr is None and ":" in host:
            raise UrlRefused(f"host {shown!r} is neither a host name nor an IP address")
        if addr is None and host and all(_NUMERIC_LABEL.fullmatch(p) for p in host.rstrip(".").split(".")):
            raise UrlRefused(f"host {shown!r} is an IP address in a non-canonical (decimal, octal or hex) form")
        if addr is None and not _HOSTNAME.fullmatch(host.lower().rstrip(".")):
            raise UrlRefused(f"host {shown!r} is not a valid host name")
        name = normal_host(host)
        if name in self.hosts or (addr is not None and any(addr in n for n in self.networks
                                                           if n.version == addr.version)):
            return name
        raise UrlRefused(f"host {name!r} is not allowlisted: an incident may only aim a runbook URL at a host of "
                         "the service catalog or of the runbook_hosts setting")

    def check_rendered_url(self, template: str, rendered: str) -> None:
        """Rule 1 for one rendered URL: if a placeholder fills the template's authority, check its host."""
        probe = re.sub(r"\{(service|host)\}", _SENTINEL, template.replace("{{", "").replace("}}", ""))
        try:
            netloc = urlsplit(probe).netloc.lower()
        except ValueError:
            netloc = _SENTINEL
        # The host (or userinfo) part: a placeholder in the port alone picks a port of the runbook's host.
        templated = _SENTINEL in netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else _SENTINEL in netloc
        if not templated:
            return
        try:
            netloc = urlsplit(rendered).netloc
        except ValueError as exc:
            raise UrlRefused(f"rendered URL is malformed: {exc}") from None
        if "@" in netloc:
            raise UrlRefused("a URL whose host comes from the incident may not carry userinfo ('@')")
        host = netloc
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        self.check_incident_host(host)

    # ------------------------------------------------------------------ rule 2: where a request connects

    def refused_address(self, addr: IPAddress) -> str | None:
        """Why a request may not connect to addr, or None."""
        if self.allow_link_local:
            return None
        for candidate in {addr, _embedded_v4(addr)}:
            for net in METADATA_NETWORKS:
                if candidate.version == net.version and candidate in net:
                    return f"{addr} is in {net} (link-local / cloud metadata)"
        return None

    def resolve(self, url: httpx.URL) -> IPAddress:
        """The checked address to connect to for url: every address its host resolves to must pass."""
        host = url.host.lower().rstrip(".")
        if not host:
            raise UrlRefused("URL has no host")
        if not self.allow_link_local and host in METADATA_NAMES:
            raise UrlRefused(f"host {host!r} is a cloud metadata service")
        port = url.port or (443 if url.scheme == "https" else 80)
        literal = parse_ip(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise UrlRefused(f"cannot resolve {host!r}: {exc}") from None
            addresses = []
            for info in infos:
                addr = parse_ip(str(info[4][0]))
                if addr is not None and addr not in addresses:
                    addresses.append(addr)
            if not addresses:
                raise UrlRefused(f"{host!r} resolved to no address")
        for addr in addresses:
            why = self.refused_address(addr)
            if why is not None:
                raise UrlRefused(f"{host!r} resolves to {why}")
        return addresses[0]

    def pin(self, url: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """The URL aimed at its checked address, with the Host header and TLS server name of the original."""
        import httpx

        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise UrlRefused(f"scheme {parsed.scheme!r} is not http or https")
        addr = self.resolve(parsed)
        host_header = parsed.netloc.decode("ascii").rsplit("@", 1)[-1]
        extensions: dict[str, Any] = {}
        if parsed.scheme == "https" and parse_ip(parsed.host) is None:
            extensions["sni_hostname"] = parsed.host
        return parsed.copy_with(host=str(addr)), {"Host": host_header}, extensions


DEFAULT_POLICY = UrlPolicy()
"""No host from an incident is allowlisted; link-local and metadata addresses are refused."""


def policy_from(settings: Any, catalog_hosts: Iterable[str]) -> UrlPolicy:
    """The policy of a process: the catalog's hosts and the runbook_hosts setting."""
    return UrlPolicy.build([*catalog_hosts, *settings.runbook_hosts],
                           allow_link_local=bool(settings.runbook_allow_link_local))
