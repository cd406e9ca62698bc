"""TLS certificates and SuperNode authentication keys for a local or test Flower deployment.

Everything is made with the ``cryptography`` library; nothing here is hand-written crypto.
One folder holds, after :func:`make_certificates`:

=======================  ==================================================================
``ca.key``               the CA's private key (EC P-384, PKCS#8 PEM, mode 0600)
``ca.crt``               the self-signed CA certificate (CA=true, keyCertSign, cRLSign)
``superlink.key``        the SuperLink's TLS private key (EC P-384, PKCS#8 PEM, mode 0600)
``superlink.crt``        its certificate, issued by the CA: serverAuth, SANs
                         ``DNS:localhost``, ``IP:127.0.0.1``, ``IP:::1`` and every extra SAN
``supernode-<i>.key``    SuperNode *i*'s authentication key (EC P-384, OpenSSH, mode 0600)
``supernode-<i>.pub``    its public key, one OpenSSH line (``ecdsa-sha2-nistp384 …``)
``devices.toml``         the device registry: SuperNode *i*'s public key serves device *i*
                         (``stamen.server.identities``; the run-config key ``devices``)
=======================  ==================================================================

The SuperNode key formats are the ones Flower 1.42 loads: ``flower-supernode
--auth-supernode-private-key`` reads the file with ``load_ssh_private_key`` and wants an EC
key (``flwr.supernode.cli.flower_supernode._try_setup_client_authentication``), and
``flwr supernode register`` reads the public key with ``load_ssh_public_key`` and wants an EC
key on a NIST curve (``flwr.cli.supernode.register.try_load_public_key``). P-384 is the
curve of Flower's own ``generate_key_pairs`` (``flwr.supercore.primitives.asymmetric``).

Wiring (see the Flower notes)::

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt \\
        --ssl-keyfile superlink.key --enable-supernode-auth …
    flwr supernode register supernode-0.pub <superlink-connection>
    flower-supernode --root-certificates ca.crt \\
        --auth-supernode-private-key supernode-0.key …

These are test credentials: the CA key sits next to the certificates it signs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stamen.errors import CertificateError, CertificateExistsError
from stamen.server.identities import REGISTRY_FILE, DeviceKey, DeviceRegistry, write_registry

__all__ = [
    "CA_CERTIFICATE",
    "CA_KEY",
    "DEFAULT_SANS",
    "SUPERLINK_CERTIFICATE",
    "SUPERLINK_KEY",
    "CertificatePaths",
    "CertificateStatus",
    "SupernodeKeyPaths",
    "add_supernode",
    "check_certificates",
    "make_certificates",
    "parse_san",
    "renew_superlink_certificate",
    "supernode_key_paths",
]

#: File names inside the output folder.
CA_KEY = "ca.key"
CA_CERTIFICATE = "ca.crt"
SUPERLINK_KEY = "superlink.key"
SUPERLINK_CERTIFICATE = "superlink.crt"

#: The names every SuperLink certificate carries: a loopback deployment works out of the box.
DEFAULT_SANS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_CURVE = ec.SECP384R1
_HASH = hashes.SHA384
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_MAX_DAYS = 3650
_CLOCK_SKEW = dt.timedelta(minutes=5)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class SupernodeKeyPaths:
    """Where one SuperNode's authentication key pair lives."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class CertificatePaths:
    """Every file :func:`make_certificates` wrote."""

    folder: Path
    ca_key: Path
    ca_certificate: Path
    superlink_key: Path
    superlink_certificate: Path
    supernodes: tuple[SupernodeKeyPaths, ...]
    sans: tuple[str, ...]
    #: The device registry (``None``: not written, as by a renewal).
    registry: Path | None = None

    def files(self) -> list[Path]:
        """All paths, in the order they are listed in a summary."""
        paths = [self.ca_key, self.ca_certificate, self.superlink_key, self.superlink_certificate]
        for node in self.supernodes:
            paths += [node.private_key, node.public_key]
        return paths + ([] if self.registry is None else [self.registry])


def parse_san(value: str) -> x509.GeneralName:
    """Turn one ``--san`` value into a subjectAlternativeName entry.

    An IPv4 or IPv6 address becomes an ``IPAddress`` entry; anything else must be an ASCII
    DNS name (a leading ``*.`` wildcard is allowed) and becomes a ``DNSName`` entry.

    Raises:
        CertificateError: the value is neither an IP address nor a valid DNS name.
    """
    text = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if (
        not name
        or len(name) > 253
        or not labels
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise CertificateError(
            f"SAN {value!r} is neither an IP address nor a DNS name "
            "(letters, digits and hyphens in dot-separated labels)"
        )
    return x509.DNSName(name)


def supernode_key_paths(folder: str | Path, name: str) -> SupernodeKeyPaths:
    """The paths of SuperNode ``name``'s key pair in ``folder`` (``<name>.key``, ``<name>.pub``).

    Raises:
        CertificateError: ``name`` is not a plain file name (letters, digits, ``.``, ``_``,
            ``-``; at most 64 characters; starting with a letter or digit).
    """
    if not _NODE_NAME.fullmatch(name) or name.endswith((".key", ".pub")):
        raise CertificateError(
            f"SuperNode name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "start with a letter or digit and carry no .key/.pub suffix"
        )
    root = Path(folder)
    return SupernodeKeyPaths(
        name=name, private_key=root / f"{name}.key", public_key=root / f"{name}.pub"
    )


def make_certificates(
    folder: str | Path,
    *,
    supernodes: int = 2,
    sans: Iterable[str] = (),
    days: int = 365,
    force: bool = False,
) -> CertificatePaths:
    """Write a CA, a SuperLink certificate it signs, SuperNode key pairs and the device
    registry into ``folder``.

    Args:
        folder: the output folder (created owner-only if missing).
        supernodes: how many SuperNode key pairs to make, named ``supernode-0`` …; the
            registry (:data:`~stamen.server.identities.REGISTRY_FILE`) gives node *i*'s
            key device id *i*.
        sans: extra subjectAlternativeNames of the SuperLink certificate, beyond
            :data:`DEFAULT_SANS`: IP addresses become ``IPAddress`` entries, the rest
            ``DNSName`` entries.
        days: how long the CA and SuperLink certificates are valid.
        force: replace files that already exist instead of refusing.

    Returns:
        The paths written.

    Raises:
        CertificateError: a bad count, lifetime or SAN.
        CertificateExistsError: a file to write exists and ``force`` is false; nothing is
            written then.
    """
    root = Path(folder)
    if supernodes < 0:
        raise CertificateError(f"--supernodes is {supernodes}; it must be 0 or more")
    if not 1 <= days <= _MAX_DAYS:
        raise CertificateError(f"--days is {days}; it must lie in 1..{_MAX_DAYS}")
    names = _unique([*DEFAULT_SANS, *sans])
    general_names = _unique_names(parse_san(name) for name in names)
    nodes = tuple(supernode_key_paths(root, f"supernode-{i}") for i in range(supernodes))
    paths = CertificatePaths(
        folder=root,
        ca_key=root / CA_KEY,
        ca_certificate=root / CA_CERTIFICATE,
        superlink_key=root / SUPERLINK_KEY,
        superlink_certificate=root / SUPERLINK_CERTIFICATE,
        supernodes=nodes,
        sans=tuple(_san_text(name) for name in general_names),
        registry=root / REGISTRY_FILE,
    )
    _check_writable(root, paths.files(), force=force)

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(_CURVE())
    ca_cert = _ca_certificate(ca_key, now=now, days=days)
    server_key = ec.generate_private_key(_CURVE())
    server_cert = _server_certificate(
        server_key, ca_key, ca_cert, general_names, now=now, days=days
    )
    contents: list[tuple[Path, bytes, bool]] = [
        (paths.ca_key, _pem_private_key(ca_key), True),
        (paths.ca_certificate, ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (paths.superlink_key, _pem_private_key(server_key), True),
        (paths.superlink_certificate, server_cert.public_bytes(serialization.Encoding.PEM), False),
    ]
    devices = []
    for i, node in enumerate(nodes):
        files = _node_files(node)
        contents += files
        devices.append(DeviceKey(id=i, node=node.name, public_key=files[1][1].decode()))
    _write_all(root, contents)
    write_registry(root / REGISTRY_FILE, devices)
    return paths


def add_supernode(
    folder: str | Path, name: str, *, device_id: int | None = None, force: bool = False
) -> SupernodeKeyPaths:
    """Write one more SuperNode authentication key pair, ``<name>.key`` and ``<name>.pub``,
    and register its public key as device ``device_id`` in the folder's device registry.

    The key pair does not depend on the CA: it is what the SuperLink's node authentication
    checks (after ``flwr supernode register <name>.pub``), not part of TLS. A key replaced
    (``force``) keeps its registered device id unless ``device_id`` names another; without
    ``device_id`` a node not in the registry stays out of it.

    Raises:
        CertificateError: ``name`` is not a plain file name, or ``device_id`` is negative
            or another node's.
        CertificateExistsError: either file exists and ``force`` is false.
        ConfigError: the folder's registry is unreadable.
    """
    root = Path(folder)
    node = supernode_key_paths(root, name)
    registry = root / REGISTRY_FILE
    entries = list(DeviceRegistry.read(registry).entries) if registry.exists() else []
    held = next((e.id for e in entries if e.node == name), None)
    device_id = held if device_id is None else device_id
    if device_id is not None:
        if device_id < 0:
            raise CertificateError(f"--device-id is {device_id}; it must be 0 or more")
        taken = [e.node for e in entries if e.id == device_id and e.node != name]
        if taken:
            raise CertificateError(f"{registry}: device id {device_id} is {taken[0]}'s already")
    _check_writable(root, [node.private_key, node.public_key], force=force)
    files = _node_files(node)
    _write_all(root, files)
    if device_id is not None:
        entry = DeviceKey(id=device_id, node=name, public_key=files[1][1].decode())
        write_registry(registry, [e for e in entries if e.node != name] + [entry])
    return node


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate of a folder as :func:`check_certificates` found it."""

    path: Path
    subject: str
    not_after: dt.datetime
    days_left: float
    problem: str | None  # why it cannot serve (expired, not issued by the CA), or None

    def state(self, warn_days: float) -> str:
        """``invalid``, ``expired``, ``expiring`` (within ``warn_days``) or ``valid``."""
        if self.problem is not None:
            return "expired" if self.days_left <= 0 else "invalid"
        return "expiring" if self.days_left <= warn_days else "valid"


def check_certificates(
    folder: str | Path, *, now: dt.datetime | None = None
) -> list[CertificateStatus]:
    """The CA and SuperLink certificates of ``folder``: when each expires, and whether the
    SuperLink's is still one the CA issued (a CA made again with ``--force`` no longer is).

    Raises:
        CertificateError: a certificate file is missing or does not parse.
    """
    root = Path(folder)
    now = dt.datetime.now(dt.UTC) if now is None else now
    ca = _load_certificate(root / CA_CERTIFICATE)
    server = _load_certificate(root / SUPERLINK_CERTIFICATE)
    found = []
    for path, cert in ((root / CA_CERTIFICATE, ca), (root / SUPERLINK_CERTIFICATE, server)):
        left = (cert.not_valid_after_utc - now).total_seconds() / 86400
        problem = None if left > 0 else f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        if problem is None and now < cert.not_valid_before_utc:
            problem = f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        if problem is None and cert is server:
            try:
                server.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                problem = f"not issued by {CA_CERTIFICATE} (devices holding it would refuse it)"
        subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        found.append(
            CertificateStatus(
                path=path,
                subject=str(subject[0].value) if subject else cert.subject.rfc4514_string(),
                not_after=cert.not_valid_after_utc,
                days_left=left,
                problem=problem,
            )
        )
    return found


def renew_superlink_certificate(
    folder: str | Path, *, days: int = 365, sans: Iterable[str] | None = None
) -> CertificatePaths:
    """A new SuperLink key and certificate under the folder's existing CA, so that no
    device needs a new ``ca.crt``; the SANs stay the old certificate's unless ``sans``
    (beyond :data:`DEFAULT_SANS`) is given.

    Raises:
        CertificateError: no CA key or certificate, a bad lifetime or SAN, or ``days``
            beyond the CA's own expiry (a certificate cannot outlive its issuer: make a
            new CA, and give every device its ``ca.crt``).
    """
    root = Path(folder)
    if not 1 <= days <= _MAX_DAYS:
        raise CertificateError(f"--days is {days}; it must lie in 1..{_MAX_DAYS}")
    ca_cert = _load_certificate(root / CA_CERTIFICATE)
    ca_key = _load_ca_key(root / CA_KEY)
    now = dt.datetime.now(dt.UTC)
    ca_left = ca_cert.not_valid_after_utc - now
    if dt.timedelta(days=days) > ca_left:
        raise CertificateError(
            f"{root / CA_CERTIFICATE} expires in {max(ca_left.days, 0)} days; a certificate it "
            f"signs cannot outlive it: use --days {max(ca_left.days, 1)} or less, or make a "
            "new CA (stamen certs make --force; every device then needs its ca.crt)"
        )
    if sans is None:
        old = _load_certificate(root / SUPERLINK_CERTIFICATE)
        general_names = list(
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    else:
        names = _unique([*DEFAULT_SANS, *sans])
        general_names = _unique_names(parse_san(name) for name in names)
    key = ec.generate_private_key(_CURVE())
    cert = _server_certificate(key, ca_key, ca_cert, general_names, now=now, days=days)
    _write_all(
        root,
        [
            (root / SUPERLINK_KEY, _pem_private_key(key), True),
            (root / SUPERLINK_CERTIFICATE, cert.public_bytes(serialization.Encoding.PEM), False),
        ],
    )
    return CertificatePaths(
        folder=root,
        ca_key=root / CA_KEY,
        ca_certificate=root / CA_CERTIFICATE,
        superlink_key=root / SUPERLINK_KEY,
        superlink_certificate=root / SUPERLINK_CERTIFICATE,
        supernodes=(),
        sans=tuple(_san_text(name) for name in general_names),
    )


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such certificate") from None
    except ValueError as error:
        raise CertificateError(f"{path}: not a PEM certificate ({error})") from None


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"{path}: no CA key here; renew where the CA was made") from None
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: not an EC private key")
    return key


# ── certificates ─────────────────────────────────────────────────────────────────────────


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, *, now: dt.datetime, days: int
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stamen"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Stamen test CA"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _HASH())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A certificate authority signs certificates (and CRLs); a server's key only signs
    its TLS handshakes (ECDHE: digital signature)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[x509.GeneralName],
    *,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stamen"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Stamen SuperLink"),
        ]
    )
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _HASH())
    )


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _node_files(node: SupernodeKeyPaths) -> list[tuple[Path, bytes, bool]]:
    """A SuperNode key pair in the formats Flower loads: OpenSSH private key and public line."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return [(node.private_key, private, True), (node.public_key, public + b"\n", False)]


# ── SANs ─────────────────────────────────────────────────────────────────────────────────


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(value.strip() for value in values))


def _unique_names(names: Iterable[x509.GeneralName]) -> list[x509.GeneralName]:
    return list(dict.fromkeys(names))


def _san_text(name: x509.GeneralName) -> str:
    kind = "IP" if isinstance(name, x509.IPAddress) else "DNS"
    return f"{kind}:{name.value}"


# ── files ────────────────────────────────────────────────────────────────────────────────


def _check_writable(root: Path, paths: Sequence[Path], *, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise CertificateError(f"{root}: exists and is not a folder")
    blocked = [path for path in paths if path.is_dir()]
    if blocked:
        raise CertificateError(f"{blocked[0]}: is a folder, not a file")
    existing = [path.name for path in paths if path.exists()]
    if existing and not force:
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if existing[4:] else "")
        raise CertificateExistsError(f"{root}: {shown} already exist; use --force to replace them")


def _write_all(root: Path, contents: Sequence[tuple[Path, bytes, bool]]) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, data, private in contents:
        _write_file(path, data, mode=_PRIVATE_MODE if private else _PUBLIC_MODE)


def _write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a fresh temporary file created with ``mode``, then rename it.

    The file never exists with looser permissions, and a reader never sees half a key.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly ``mode``, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
