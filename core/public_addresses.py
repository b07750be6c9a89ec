"""Which IP addresses are public: the addresses the address guard lets outbound requests reach."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

Address = IPv4Address | IPv6Address

_SHARED_ADDRESS_SPACE = IPv4Network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known prefix: the IPv4 address is the last 32 bits
_METADATA_ADDRESS = IPv4Address("169.254.169.254")


def blocked_reason(address: Address) -> str | None:
    """Why ``address`` must not be connected to, or None for a public address."""
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = blocked_reason(embedded)
            return None if reason is None else f"{reason} (IPv4 {embedded} inside IPv6)"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)" if address == _METADATA_ADDRESS else "link-local"
    if isinstance(address, IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED_ADDRESS_SPACE:
        return "shared (carrier-grade NAT)"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public (special-purpose)"
    return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 address leads to."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None
