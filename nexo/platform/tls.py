"""TLS served by Nexo itself (``nexo serve --cert c.pem --key k.pem``).

Sanic's shorthand ``ssl={"cert", "key"}`` reads the certificate's names from its
subjectAltName and fails with ``KeyError: 'subjectAltName'`` on a certificate
that has none, such as the one the common ``openssl req -x509 -newkey rsa:2048
-nodes -subj /CN=localhost`` makes. Nexo reads the names itself (the SAN's DNS
names and IP addresses, else the subject's common name) and hands them to Sanic,
so such a certificate is served; a certificate or key that cannot be used is
refused with one line before the server starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from nexo.platform.config import ConfigError


def certificate_names(cert_pem: bytes) -> list[str]:
    """DNS names and IP addresses of the first certificate in ``cert_pem``; the common name
    when it has no subjectAltName."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *addresses]


def server_ssl(cert: Path, key: Path) -> dict[str, Any]:
    """Sanic's ``ssl`` argument for this pair; :class:`ConfigError` with one clear line when
    the files cannot serve TLS."""
    try:
        names = certificate_names(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TLS certificate {cert} is not a PEM certificate: {exc}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(
            f"TLS certificate {cert} and key {key} cannot be used together ({reason}): "
            "check that the key is the certificate's and is not encrypted"
        ) from None
    return {"cert": str(cert), "key": str(key), "names": names}
