"""Authentication for the loopback registry: htpasswd (Basic) and a token server (Bearer).

``LocalRegistry(workdir, auth=HtpasswdAuth(user, password))`` writes a bcrypt htpasswd file
and makes the registry ask for Basic auth. For Bearer, a :class:`TokenIssuer` holds a key and
its self-signed certificate (the registry's ``rootcertbundle``) and signs RS256 or ES256 JWTs
the way the distribution token spec wants them (``iss``, ``aud`` = service, ``exp``, ``access``,
the certificate in the ``x5c`` header); a :class:`TokenServer` answers
``GET /token?service=…&scope=…`` on 127.0.0.1 from a thread, checks Basic credentials and the
requested scopes, grants what the user may do, and records every request so that tests can
count tokens. ``LocalRegistry(workdir, auth=server.registry_auth())`` then trusts it.

Needs the ``bcrypt`` and ``cryptography`` packages (test dependencies only).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final, Literal, Self

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from devstack.service import Service

DEFAULT_SERVICE: Final = "lazy2dfs-local-registry"
DEFAULT_ISSUER: Final = "lazy2dfs-local-token-issuer"
DEFAULT_EXPIRES_IN: Final = 300
# Go's bcrypt accepts costs from 4; the registry checks the hash on every request, so keep it low.
_BCRYPT_COST: Final = 5
_ACTIONS: Final = ("pull", "push", "delete")

Algorithm = Literal["RS256", "ES256"]
# (username, repository) -> the actions that user may have on that repository.
GrantPolicy = Callable[[str, str], Collection[str]]


@dataclass(frozen=True)
class HtpasswdAuth:
    """One user with Basic auth; the registry reads a bcrypt htpasswd file."""

    username: str
    password: str = field(repr=False)
    realm: str = "lazy2dfs-local-registry"

    def htpasswd_line(self) -> str:
        salt = bcrypt.gensalt(rounds=_BCRYPT_COST)
        hashed = bcrypt.hashpw(self.password.encode(), salt).decode()
        return f"{self.username}:{hashed}\n"


@dataclass(frozen=True)
class TokenAuth:
    """What the registry needs to trust a token server: ``auth: token: {…}`` in its config."""

    realm: str
    service: str
    issuer: str
    certificate_pem: bytes = field(repr=False)


RegistryAuth = HtpasswdAuth | TokenAuth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """A signing key, its self-signed certificate, and JWTs signed with them."""

    def __init__(
        self,
        algorithm: Algorithm = "RS256",
        *,
        issuer: str = DEFAULT_ISSUER,
        service: str = DEFAULT_SERVICE,
    ) -> None:
        self.algorithm: Algorithm = algorithm
        self.issuer = issuer
        self.service = service
        self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm == "RS256":
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode()]

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def token(
        self,
        subject: str,
        access: Mapping[str, Collection[str]],
        lifetime: int,
        *,
        now: float | None = None,
    ) -> str:
        """A JWT granting ``access`` ({repository: actions}) to ``subject`` for ``lifetime`` s."""
        issued = int(time.time() if now is None else now)
        header = {"typ": "JWT", "alg": self.algorithm, "x5c": self._x5c}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # a string: distribution 2.8 accepts no list here
            "iat": issued,
            "nbf": issued - 1,
            "exp": issued + lifetime,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": "repository", "name": name, "actions": sorted(actions)}
                for name, actions in sorted(access.items())
            ],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + _b64url(self._sign(signing_input.encode()))

    def _sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # JOSE wants r || s, each as a 32-byte big-endian integer, not DER.
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    username: str  # "" when anonymous
    service: str
    scopes: tuple[str, ...]  # as asked
    granted: Mapping[str, tuple[str, ...]]  # repository -> actions in the token
    status: int
    expires_in: int


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]]:
    """``repository:team/model:pull,push`` → ("repository", "team/model", ("pull", "push"))."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        raise ValueError(f"malformed scope {scope!r}")
    return kind, name, tuple(a for a in actions.split(",") if a)


def allow_all(_username: str, _repository: str) -> Collection[str]:
    return _ACTIONS


class TokenServer(Service):
    """A distribution token server on ``127.0.0.1``, served from a thread.

    ``users`` maps username to password; a request with wrong or missing credentials gets 401.
    Each requested ``repository`` scope is granted the asked actions that ``grants(user, repo)``
    allows (nothing else); other scope types are ignored. ``expires_in`` is both the answer's
    ``expires_in`` and the JWT's lifetime, and can be changed between requests.
    """

    def __init__(
        self,
        issuer: TokenIssuer,
        users: Mapping[str, str],
        *,
        grants: GrantPolicy = allow_all,
        expires_in: int = DEFAULT_EXPIRES_IN,
    ) -> None:
        self.issuer = issuer
        self.users = dict(users)
        self.grants = grants
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        if self._server is None:
            raise RuntimeError("token server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    def registry_auth(self) -> TokenAuth:
        return TokenAuth(
            self.realm, self.issuer.service, self.issuer.issuer, self.issuer.certificate_pem
        )

    def start(self) -> Self:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="token-server")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def answer(self, query: str, authorization: str | None) -> tuple[int, dict[str, object]]:
        """Status and JSON body for ``GET /token?<query>`` (called on the server's threads)."""
        params = urllib.parse.parse_qs(query)
        service = (params.get("service") or [""])[0]
        scopes = tuple(s for value in params.get("scope", []) for s in value.split(" ") if s)
        username = self._authenticate(authorization)
        expires_in = self.expires_in
        granted: dict[str, tuple[str, ...]] = {}
        body: dict[str, object]
        if username is None:
            status, body = 401, {"errors": [{"code": "UNAUTHORIZED"}]}
        elif service != self.issuer.service:
            status, body = 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]}
        else:
            try:
                granted = self._grant(username, scopes)
            except ValueError:
                status, body = 400, {"errors": [{"code": "DENIED", "message": "bad scope"}]}
            else:
                token = self.issuer.token(username, granted, expires_in)
                with self._lock:
                    self.issued.append(token)
                now = datetime.datetime.now(datetime.UTC)
                status = 200
                body = {
                    "token": token,
                    "access_token": token,
                    "expires_in": expires_in,
                    "issued_at": now.isoformat(),
                }
        with self._lock:
            self.requests.append(
                TokenRequest(username or "", service, scopes, granted, status, expires_in)
            )
        return status, body

    def _authenticate(self, authorization: str | None) -> str | None:
        if authorization is None or not authorization.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, _, password = decoded.partition(":")
        expected = self.users.get(username)
        if expected is None or not secrets.compare_digest(expected, password):
            return None
        return username

    def _grant(self, username: str, scopes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        granted: dict[str, set[str]] = {}
        for scope in scopes:
            kind, name, actions = parse_scope(scope)
            if kind != "repository":
                continue
            allowed = set(self.grants(username, name))
            granted.setdefault(name, set()).update(a for a in actions if a in allowed)
        return {name: tuple(sorted(actions)) for name, actions in granted.items() if actions}


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body: dict[str, object]
            if url.path != "/token":
                status, body = 404, {"errors": [{"code": "NOT_FOUND"}]}
            else:
                status, body = server.answer(url.query, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="lazy2dfs-token"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read TokenServer.requests instead

    return Handler


@dataclass(frozen=True)
class TlsFiles:
    """A registry's certificate (also the CA its clients trust) and key, in PEM files."""

    certificate: Path
    key: Path


def loopback_certificate(directory: Path) -> TlsFiles:
    """A self-signed certificate for ``127.0.0.1`` (any port) and its key, written to
    ``directory``: for clients that speak only HTTPS to a registry (SOCI's index fetch)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "registry.pem", directory / "registry-key.pem")
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def write_registry_auth(auth: RegistryAuth, workdir: Path) -> str:
    """Writes the files ``auth`` needs under ``workdir``; returns the config's ``auth:`` block."""
    if isinstance(auth, HtpasswdAuth):
        path = workdir / "htpasswd"
        path.write_text(auth.htpasswd_line())
        path.chmod(0o600)
        return f"auth:\n  htpasswd:\n    realm: {_yaml(auth.realm)}\n    path: {_yaml(str(path))}\n"
    bundle = workdir / "token-ca.pem"
    bundle.write_bytes(auth.certificate_pem)
    return (
        "auth:\n  token:\n"
        f"    realm: {_yaml(auth.realm)}\n"
        f"    service: {_yaml(auth.service)}\n"
        f"    issuer: {_yaml(auth.issuer)}\n"
        f"    rootcertbundle: {_yaml(str(bundle))}\n"
    )


def _yaml(text: str) -> str:
    """A double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(text)
