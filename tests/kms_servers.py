"""Local KMS servers speaking the real wire protocols, and pytest fixtures for them.

moto does not enforce key states (a disabled key still decrypts, see feasibility notes §3), so
key-state and call-count tests run against these small fakes instead. Each listens on 127.0.0.1 on a
free port, counts calls by operation, and stops at fixture teardown. Ciphertexts are real AES-GCM under
a per-key random key with the key's name as associated data, so a blob only opens under its own key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Reply = tuple[int, dict[str, str], bytes]
ACCOUNT = "111122223333"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _HTTPServer:
    """A threaded HTTP(S) server on 127.0.0.1 that hands each request to ``self.handle``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._ssl = ssl_context
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError

    def count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._conns.add(self.connection)

            def finish(self) -> None:
                with outer._lock:
                    outer._conns.discard(self.connection)
                super().finish()

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer._lock:
                    outer.requests.append((self.command, self.path, headers))
                try:
                    status, out_headers, out = outer.handle(self.command, self.path, headers, body)
                except Exception as exc:  # a bug in the fake must show up as a 500, not a hang
                    status, out_headers, out = 500, {"Content-Type": "text/plain"}, repr(exc).encode()
                self.send_response(status)
                for k, v in out_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Rebind the same port after a stop() so "the KMS came back" can be tested.
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        if self._ssl is not None:
            httpd.socket = self._ssl.wrap_socket(httpd.socket, server_side=True)
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and reset kept-alive connections, as a crashed server would."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _json(status: int, obj: object, content_type: str = "application/json") -> Reply:
    return status, {"Content-Type": content_type}, json.dumps(obj).encode()


# -- AWS KMS (JSON 1.1, X-Amz-Target: TrentService.*) ---------------------------------------------


@dataclass
class AwsKey:
    """A key with its backing key material: rotation adds material (Encrypt uses the newest), and,
    as in AWS, older material is kept so every ciphertext made under it still decrypts."""

    key_id: str
    region: str
    state: str = "Enabled"  # Enabled | Disabled | PendingDeletion
    materials: list[bytes] = field(default_factory=lambda: [os.urandom(32)])
    rsa: Any = None  # an RSA_* ENCRYPT_DECRYPT key: its private key (GetPublicKey, RSA-OAEP Decrypt)

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{self.key_id}"

    @property
    def material_version(self) -> int:
        """The material Encrypt uses now (1 until the first rotation)."""
        return len(self.materials)

    def rotate(self) -> int:
        """Rotate the key material (RotateKeyOnDemand); returns the new material version."""
        self.materials.append(os.urandom(32))
        return self.material_version


class AwsKmsServer(_HTTPServer):
    """AWS KMS Encrypt/Decrypt with key states, aliases, regions, an access-denied switch and call counts.

    The region of a request is read from its SigV4 credential scope, so a key only exists in its region.
    Signatures are not verified (boto3 does real signing; the fake only checks the access key id).
    """

    def __init__(self, access_key: str = "AKIDFAKE", secret: str = "fake/secret+key") -> None:
        super().__init__()
        self.access_key, self.secret = access_key, secret
        self.keys: dict[str, AwsKey] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.deny = False
        #: When set, only these operations are allowed (an IAM policy): others are AccessDenied.
        self.allowed_ops: set[str] | None = None
        #: Successful Decrypts per (key id, material version): which material a ciphertext was under.
        self.decrypted_by: Counter[tuple[str, int]] = Counter()

    def create_key(
        self, region: str = "us-east-1", alias: str | None = None, spec: str = "SYMMETRIC_DEFAULT"
    ) -> AwsKey:
        key = AwsKey(str(uuid.uuid4()), region)
        if spec.startswith("RSA_"):
            from cryptography.hazmat.primitives.asymmetric import rsa

            key.rsa = rsa.generate_private_key(public_exponent=65537, key_size=int(spec[4:]))
        self.keys[key.key_id] = key
        if alias:
            self.aliases[(region, alias)] = key.key_id
        return key

    def uri(self, key: str, region: str = "us-east-1", scheme: str = "aws", **extra: str) -> str:
        params = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret.replace("+", "%2B"),
            "REGION": region,
            "AWS_ENDPOINT": self.url,
            **extra,
        }
        return f"{scheme}:///{key}?" + "&".join(f"{k}={v}" for k, v in params.items())

    def _resolve(self, key_id: str, region: str) -> AwsKey | None:
        if key_id.startswith("arn:aws:kms:"):
            _, _, _, arn_region, _acct, resource = key_id.split(":", 5)
            if arn_region != region:
                return None
            key_id = resource.split("/", 1)[1] if resource.startswith("key/") else resource
        if key_id.startswith("alias/"):
            key_id = self.aliases.get((region, key_id), "")
        key = self.keys.get(key_id)
        return key if key is not None and key.region == region else None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        op = headers.get("x-amz-target", "").removeprefix("TrentService.")
        self.count(op)
        ctype = "application/x-amz-json-1.1"

        def err(code: str, msg: str, status: int = 400) -> Reply:
            return _json(status, {"__type": code, "message": msg}, ctype)

        auth = headers.get("authorization", "")
        try:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            akid, region = scope[0], scope[2]
        except IndexError:
            return err("MissingAuthenticationTokenException", "Request is missing Authentication Token")
        if akid != self.access_key:
            return err("UnrecognizedClientException", "The security token included in the request is invalid.")
        req = json.loads(body or b"{}")
        if op not in ("Encrypt", "Decrypt", "GetPublicKey"):
            return err("UnknownOperationException", f"fake KMS does not implement {op}")
        key = self._resolve(req.get("KeyId", ""), region)
        if key is None:
            return err("NotFoundException", f"Key '{req.get('KeyId')}' does not exist")
        if self.deny or (self.allowed_ops is not None and op not in self.allowed_ops):
            return err(
                "AccessDeniedException",
                f"User: arn:aws:iam::{ACCOUNT}:user/test is not authorized to perform: kms:{op} on resource: {key.arn}",
            )
        if key.state == "Disabled":
            return err("DisabledException", f"{key.arn} is disabled.")
        if key.state == "PendingDeletion":
            return err("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        if key.rsa is not None:
            return self._asymmetric(op, key, req, err, ctype)
        if op == "GetPublicKey":
            return err("UnsupportedOperationException", f"{key.arn} key usage is SYMMETRIC_DEFAULT")
        if op == "Encrypt":
            # The blob names its key and material version, as real AWS ciphertexts do.
            nonce, version = os.urandom(12), key.material_version
            sealed = AESGCM(key.materials[version - 1]).encrypt(nonce, unb64(req["Plaintext"]), None)
            blob = key.key_id.encode() + b"|" + bytes([version]) + nonce + sealed
            return _json(200, {"CiphertextBlob": b64(blob), "KeyId": key.arn}, ctype)
        blob = unb64(req["CiphertextBlob"])
        owner, _, rest = blob.partition(b"|")
        if owner.decode(errors="replace") != key.key_id:
            return err("IncorrectKeyException", "The key ID in the request does not identify a CMK that can decrypt")
        version, rest = rest[0] if rest else 0, rest[1:]
        if not 1 <= version <= key.material_version:
            return err("InvalidCiphertextException", "")
        try:
            plain = AESGCM(key.materials[version - 1]).decrypt(rest[:12], rest[12:], None)
        except InvalidTag:
            return err("InvalidCiphertextException", "")
        with self._lock:
            self.decrypted_by[(key.key_id, version)] += 1
        return _json(200, {"Plaintext": b64(plain), "KeyId": key.arn}, ctype)

    def _asymmetric(self, op: str, key: AwsKey, req: dict[str, Any], err: Any, ctype: str) -> Reply:
        """An RSA ENCRYPT_DECRYPT key as AWS serves it: DER SubjectPublicKeyInfo, RSA-OAEP."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        algorithms = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        if op == "GetPublicKey":
            der = key.rsa.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            body = {"KeyId": key.arn, "PublicKey": b64(der), "KeyUsage": "ENCRYPT_DECRYPT"}
            return _json(200, {**body, "KeySpec": f"RSA_{key.rsa.key_size}", "EncryptionAlgorithms": algorithms}, ctype)
        algorithm = req.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        if algorithm not in algorithms:
            return err("InvalidKeyUsageException", f"{algorithm} is not supported by {key.arn}")
        digest = hashes.SHA256() if algorithm.endswith("256") else hashes.SHA1()
        pad = padding.OAEP(mgf=padding.MGF1(algorithm=digest), algorithm=digest, label=None)
        if op == "Encrypt":
            blob = key.rsa.public_key().encrypt(unb64(req["Plaintext"]), pad)
            return _json(200, {"CiphertextBlob": b64(blob), "KeyId": key.arn}, ctype)
        try:
            plain = key.rsa.decrypt(unb64(req["CiphertextBlob"]), pad)
        except ValueError:
            return err("InvalidCiphertextException", "")
        with self._lock:
            self.decrypted_by[(key.key_id, 1)] += 1
        return _json(200, {"Plaintext": b64(plain), "KeyId": key.arn}, ctype)


# -- Google Cloud KMS (REST v1) and its OAuth token endpoint --------------------------------------


def _crc(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


@dataclass
class GcpKeyVersion:
    state: str = "ENABLED"  # ENABLED | DISABLED | DESTROYED (destroying drops the material)
    material: bytes | None = field(default_factory=lambda: os.urandom(32))


@dataclass
class GcpKey:
    """A CryptoKey with numbered versions: Encrypt uses the primary, Decrypt the version named in the
    ciphertext (as Cloud KMS does), so old ciphertexts open until their version is disabled or destroyed."""

    name: str
    versions: dict[int, GcpKeyVersion] = field(default_factory=lambda: {1: GcpKeyVersion()})
    primary: int = 1

    @property
    def version(self) -> int:
        return self.primary

    @property
    def state(self) -> str:
        """The primary version's state."""
        return self.versions[self.primary].state

    @state.setter
    def state(self, value: str) -> None:
        self.versions[self.primary].state = value

    def rotate(self) -> int:
        """A new version that becomes the primary (a manual or scheduled rotation); returns its number."""
        self.primary = max(self.versions) + 1
        self.versions[self.primary] = GcpKeyVersion()
        return self.primary

    def destroy(self, version: int) -> None:
        self.versions[version] = GcpKeyVersion("DESTROYED", None)


class GcpKmsServer(_HTTPServer):
    """Cloud KMS ``:encrypt``/``:decrypt`` with CRC32C, plus ``/token`` for service-account JWT grants.

    Requests must carry a bearer token that this server issued (after checking the JWT's RS256
    signature against the service account's public key) or one of ``bearer_tokens``.
    ``corrupt`` makes the server misbehave once per call: ``"request"`` (verifiedPlaintextCrc32c false),
    ``"ciphertext"`` or ``"plaintext"`` (flip a byte after computing the response CRC).
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, GcpKey] = {}
        self.bearer_tokens: set[str] = {"test-bearer-token"}
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}
        self.deny = False
        self.corrupt: str | None = None

    def create_key(self, project: str = "p", location: str = "us-east1", ring: str = "r", key: str = "k") -> str:
        name = f"projects/{project}/locations/{location}/keyRings/{ring}/cryptoKeys/{key}"
        self.keys[name] = GcpKey(name)
        return name

    def service_account(self) -> str:
        """A new service-account JSON (base64, as CREDENTIALS wants it) whose token_uri is this server."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = uuid.uuid4().hex
        self.public_keys[kid] = private.public_key()
        info = {
            "type": "service_account",
            "project_id": "p",
            "private_key_id": kid,
            "private_key": private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "client_email": "backup@p.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }
        return base64.urlsafe_b64encode(json.dumps(info).encode()).decode()

    def uri(self, name: str, scheme: str = "gs", credentials: str | None = None, **extra: str) -> str:
        auth = f"CREDENTIALS={credentials}" if credentials else "BEARER_TOKEN=test-bearer-token"
        rest = "".join(f"&{k}={v}" for k, v in extra.items())
        return f"{scheme}:///{name}?AUTH=specified&{auth}&GCP_ENDPOINT={self.url}{rest}"

    def _token(self, body: bytes) -> Reply:
        self.count("token")
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        assertion = form.get("assertion", "")
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(unb64(head_b64.replace("-", "+").replace("_", "/")))
            public = self.public_keys[header["kid"]]
            public.verify(
                unb64(sig_b64.replace("-", "+").replace("_", "/")),
                f"{head_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, KeyError, InvalidSignature):
            return _json(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        token = "ya29." + uuid.uuid4().hex
        self.bearer_tokens.add(token)
        return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        route = urlsplit(path).path
        if route == "/token":
            return self._token(body)

        def err(status: int, code: str, msg: str) -> Reply:
            return _json(status, {"error": {"code": status, "message": msg, "status": code}})

        name, _, verb = route.removeprefix("/v1/").rpartition(":")
        self.count(verb)
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.bearer_tokens:
            return err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        key = self.keys.get(name)
        if key is None:
            return err(404, "NOT_FOUND", f"{name} not found.")
        if self.deny:
            return err(403, "PERMISSION_DENIED", f"Permission 'cloudkms.cryptoKeyVersions.use{verb.title()}' denied")
        req = json.loads(body or b"{}")
        aad = name.encode()

        def material(number: int) -> bytes | Reply:
            """The key material of version ``number``, or the error Cloud KMS gives for it."""
            version = key.versions.get(number)
            if version is None:
                return err(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
            if version.state != "ENABLED" or version.material is None:
                return err(
                    400,
                    "FAILED_PRECONDITION",
                    f"{name}/cryptoKeyVersions/{number} is not enabled, current state is: {version.state}.",
                )
            return version.material

        if verb == "encrypt":
            primary = material(key.primary)
            if not isinstance(primary, bytes):
                return primary
            plain = unb64(req.get("plaintext", ""))
            if "plaintextCrc32c" in req and int(req["plaintextCrc32c"]) != _crc(plain):
                return err(400, "INVALID_ARGUMENT", "The checksum in field plaintext_crc32c did not match.")
            nonce = os.urandom(12)
            # The ciphertext names its version (4 bytes), so Decrypt needs only the CryptoKey.
            ct = key.primary.to_bytes(4, "big") + nonce + AESGCM(primary).encrypt(nonce, plain, aad)
            crc = _crc(ct)
            if self.corrupt == "ciphertext":
                ct = bytes([ct[0] ^ 1]) + ct[1:]
            return _json(
                200,
                {
                    "name": f"{name}/cryptoKeyVersions/{key.version}",
                    "ciphertext": b64(ct),
                    "ciphertextCrc32c": str(crc),
                    "verifiedPlaintextCrc32c": self.corrupt != "request" and "plaintextCrc32c" in req,
                },
            )
        if verb == "decrypt":
            ct = unb64(req.get("ciphertext", ""))
            if "ciphertextCrc32c" in req and int(req["ciphertextCrc32c"]) != _crc(ct):
                return err(400, "INVALID_ARGUMENT", "The checksum in field ciphertext_crc32c did not match.")
            number = int.from_bytes(ct[:4], "big")
            found = material(number)
            if not isinstance(found, bytes):
                return found
            try:
                plain = AESGCM(found).decrypt(ct[4:16], ct[16:], aad)
            except (InvalidTag, ValueError):
                return err(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
            crc = _crc(plain)
            if self.corrupt == "plaintext":
                plain = bytes([plain[0] ^ 1]) + plain[1:]
            return _json(
                200, {"plaintext": b64(plain), "plaintextCrc32c": str(crc), "usedPrimary": number == key.primary}
            )
        return err(404, "NOT_FOUND", f"unknown method {verb}")


# -- Azure Key Vault and Entra ID token endpoint (HTTPS) -------------------------------------------


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the client trusts it via REQUESTS_CA_BUNDLE)."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AzureKey:
    name: str
    version: str
    enabled: bool = True
    private: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))


class AzureKeyVaultServer(_HTTPServer):
    """Key Vault keys (GET, encrypt, decrypt with RSA-OAEP-256) and the Entra ID client-credentials flow.

    Like Key Vault, an unauthenticated request gets a 401 whose WWW-Authenticate challenge names the
    authority and resource; tokens come from ``/<tenant>/oauth2/v2.0/token`` on this same server.
    """

    TENANT, CLIENT_ID, SECRET = "72f988bf-0000-0000-0000-000000000001", "app-1", "az+secret/value"

    def __init__(self, folder: Path) -> None:
        self.cert, key = self_signed_cert(folder)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        super().__init__(ctx)
        self.keys: dict[tuple[str, str], AzureKey] = {}
        self.tokens: set[str] = set()
        self.deny = False

    def create_key(self, name: str) -> AzureKey:
        key = AzureKey(name, uuid.uuid4().hex)
        self.keys[(name, key.version)] = key
        return key

    def uri(self, key: AzureKey, **extra: str) -> str:
        params = {
            "AZURE_VAULT_NAME": "strongroom-test",
            "AZURE_CLIENT_ID": self.CLIENT_ID,
            "AZURE_CLIENT_SECRET": self.SECRET.replace("+", "%2B").replace("/", "%2F"),
            "AZURE_TENANT_ID": self.TENANT,
            "AZURE_VAULT_URL": self.url,
            "AZURE_AUTHORITY_HOST": self.url,
            **extra,
        }
        return f"azure-kms:///{key.name}/{key.version}?" + "&".join(f"{k}={v}" for k, v in params.items())

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        route = urlsplit(path).path.strip("/").split("/")
        if route[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self.count("openid-configuration")
            base = f"{self.url}/{route[0]}"
            return _json(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                },
            )
        if route[1:] == ["oauth2", "v2.0", "token"]:
            self.count("token")
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if (
                route[0] != self.TENANT
                or form.get("client_id") != self.CLIENT_ID
                or form.get("client_secret") != self.SECRET
            ):
                return _json(
                    401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
                )
            token = uuid.uuid4().hex
            self.tokens.add(token)
            return _json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})
        if route[0] != "keys" or len(route) < 3:
            return _json(404, {"error": {"code": "NotFound", "message": "no such route"}})
        op = route[3] if len(route) > 3 else "get"
        self.count(op)
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            challenge = f'Bearer authorization="{self.url}/{self.TENANT}", resource="https://vault.azure.net"'
            return 401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, b""
        key = self.keys.get((route[1], route[2]))
        if key is None:
            return _json(
                404, {"error": {"code": "KeyNotFound", "message": f"A key with (name/id) {route[1]} was not found"}}
            )
        if self.deny:
            return _json(
                403, {"error": {"code": "Forbidden", "message": f"The user does not have keys {op} permission"}}
            )
        if not key.enabled:
            return _json(
                403, {"error": {"code": "Forbidden", "message": f"Operation {op} is not allowed on a disabled key."}}
            )
        kid = f"{self.url}/keys/{key.name}/{key.version}"
        if op == "get":
            nums = key.private.public_key().public_numbers()
            jwk = {
                "kid": kid,
                "kty": "RSA",
                "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
                "n": _b64url(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
                "e": _b64url(nums.e.to_bytes(3, "big")),
            }
            return _json(200, {"key": jwk, "attributes": {"enabled": True}})
        req = json.loads(body or b"{}")
        if req.get("alg") != "RSA-OAEP-256":
            return _json(400, {"error": {"code": "BadParameter", "message": f"unsupported alg {req.get('alg')}"}})
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        value = _unb64url(req["value"])
        if op == "encrypt":
            return _json(200, {"kid": kid, "value": _b64url(key.private.public_key().encrypt(value, oaep))})
        if op == "decrypt":
            try:
                return _json(200, {"kid": kid, "value": _b64url(key.private.decrypt(value, oaep))})
            except ValueError:
                return _json(400, {"error": {"code": "BadParameter", "message": "Decryption failed"}})
        return _json(404, {"error": {"code": "NotFound", "message": f"unknown operation {op}"}})


# -- HashiCorp Vault, transit engine (HTTPS) -------------------------------------------------------

VAULT_SEALED = "Vault is sealed"
VAULT_DENIED = "1 error occurred:\n\t* permission denied\n\n"  # Vault wraps errors with go-multierror


@dataclass
class TransitKey:
    """A transit key: one material per version; Encrypt uses the latest, Decrypt the version the
    ciphertext names, from ``min_decryption_version`` on (as Vault's keysutil.Policy does)."""

    name: str
    type: str = "aes256-gcm96"  # "ed25519" makes a signing key, which cannot encrypt
    materials: list[bytes] = field(default_factory=lambda: [os.urandom(32)])
    min_decryption_version: int = 1
    deletion_allowed: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def latest_version(self) -> int:
        return len(self.materials)

    def info(self) -> dict[str, object]:
        symmetric = self.type != "ed25519"
        return {
            "name": self.name,
            "type": self.type,
            "keys": {str(v): self.created for v in range(self.min_decryption_version, self.latest_version + 1)},
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": 0,
            "deletion_allowed": self.deletion_allowed,
            "derived": False,
            "exportable": False,
            "allow_plaintext_backup": False,
            "supports_encryption": symmetric,
            "supports_decryption": symmetric,
            "supports_derivation": symmetric,
            "supports_signing": not symmetric,
        }


class VaultServer(_HTTPServer):
    """Vault's HTTP API for the transit calls Strongroom makes, token and AppRole auth, and namespaces.

    Keys live under (namespace, mount, name); ``X-Vault-Namespace`` picks the namespace. ``deny`` answers
    403 as a policy without the capability would, ``denied_ops`` only for some operations; ``sealed``
    answers 503 to everything, as a sealed Vault does. ``admin()`` is a real hvac client with the root
    token, for what an operator does (rotate, ``min_decryption_version``, delete).
    """

    ROOT_TOKEN = "hvs.root-token-4f1c9a7e2b"
    ROLE_ID, SECRET_ID = "role-3e1d5c-backup", "secret-id-8a2f6b91c0d4"

    def __init__(self, folder: Path) -> None:
        self.cert, key = self_signed_cert(folder)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        super().__init__(ctx)
        self.mounts: set[tuple[str, str]] = {("", "transit")}
        self.keys: dict[tuple[str, str, str], TransitKey] = {}
        self.tokens: set[str] = {self.ROOT_TOKEN}
        self.deny = False
        self.denied_ops: set[str] = set()  # a narrower policy: these operations only ("read", "encrypt", ...)
        self.sealed = False

    def create_key(
        self, name: str, mount: str = "transit", namespace: str = "", type: str = "aes256-gcm96"
    ) -> TransitKey:
        self.mounts.add((namespace, mount))
        key = TransitKey(name, type)
        self.keys[(namespace, mount, name)] = key
        return key

    def uri(self, name: str, mount: str = "transit", approle: bool = False, **extra: str) -> str:
        auth = (
            {"VAULT_ROLE_ID": self.ROLE_ID, "VAULT_SECRET_ID": self.SECRET_ID}
            if approle
            else {"VAULT_TOKEN": self.ROOT_TOKEN}
        )
        params = {"VAULT_ADDR": self.url, **auth, "VAULT_CACERT": str(self.cert), **extra}
        return f"vault:///{mount}/keys/{name}?" + "&".join(f"{k}={v}" for k, v in params.items())

    def admin(self, namespace: str = "") -> Any:
        import hvac

        return hvac.Client(url=self.url, token=self.ROOT_TOKEN, verify=str(self.cert), namespace=namespace or None)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        def errors(status: int, *messages: str) -> Reply:
            return _json(status, {"errors": list(messages)})

        def ok(data: dict[str, object] | None = None, auth: dict[str, object] | None = None) -> Reply:
            envelope = {
                "request_id": str(uuid.uuid4()),
                "lease_id": "",
                "renewable": False,
                "lease_duration": 0,
                "data": data,
                "wrap_info": None,
                "warnings": None,
                "auth": auth,
            }
            return _json(200, envelope)

        route = urlsplit(path).path.removeprefix("/v1/").strip("/")
        req = json.loads(body or b"{}")
        if self.sealed:
            self.count("sealed")
            return errors(503, VAULT_SEALED)
        if route == "auth/approle/login":
            self.count("login")
            if (req.get("role_id"), req.get("secret_id")) != (self.ROLE_ID, self.SECRET_ID):
                return errors(400, "invalid role or secret ID")
            token = f"hvs.approle-{uuid.uuid4().hex}"
            self.tokens.add(token)
            return ok(auth={"client_token": token, "lease_duration": 3600, "renewable": True, "policies": ["backup"]})
        if headers.get("x-vault-token") not in self.tokens or self.deny:
            self.count("denied")
            return errors(403, VAULT_DENIED)
        namespace = headers.get("x-vault-namespace", "").strip("/")
        for op in ("encrypt", "decrypt", "keys"):
            mount, sep, rest = route.partition(f"/{op}/")
            if sep and (namespace, mount) in self.mounts and rest:
                break
        else:
            return errors(404, f'no handler for route "{route}". route entry not found.')
        name, _, action = rest.partition("/")
        if op == "keys":  # GET reads the key, DELETE deletes it, POST .../rotate or .../config changes it
            op = {"GET": "read", "DELETE": "delete"}.get(method, f"keys/{action}")
        self.count(op)
        if op not in ("read", "delete", "keys/rotate", "keys/config", "encrypt", "decrypt"):
            return errors(405, f"the test server does not implement {method} {route}")
        if op in self.denied_ops:
            return errors(403, VAULT_DENIED)
        key = self.keys.get((namespace, mount, name))
        if op == "read":
            return ok(key.info()) if key else errors(404)
        if key is None:
            return errors(400, "encryption key not found")
        if op == "keys/rotate":
            key.materials.append(os.urandom(32))
            return ok(key.info())
        if op == "keys/config":
            if "deletion_allowed" in req:
                key.deletion_allowed = bool(req["deletion_allowed"])
            if "min_decryption_version" in req:
                key.min_decryption_version = int(req["min_decryption_version"])
            return ok(key.info())
        if op == "delete":
            if not key.deletion_allowed:
                return errors(400, "deletion is not allowed for this key")
            del self.keys[(namespace, mount, name)]
            return 204, {}, b""
        if key.type == "ed25519":
            return errors(400, f"message {op}ion not supported for key type ed25519")
        if op == "encrypt":
            try:
                plain = base64.b64decode(req.get("plaintext", ""), validate=True)
            except ValueError:
                return errors(400, "failed to base64-decode plaintext")
            nonce, version = os.urandom(12), key.latest_version
            sealed = AESGCM(key.materials[version - 1]).encrypt(nonce, plain, None)
            return ok({"ciphertext": f"vault:v{version}:{b64(nonce + sealed)}", "key_version": version})
        # decrypt, as keysutil.Policy.Decrypt checks a ciphertext, in its order and with its messages
        value = str(req.get("ciphertext", ""))
        if not value:
            return errors(400, "missing ciphertext to decrypt")
        if not value.startswith("vault:v"):
            return errors(400, "invalid ciphertext: no prefix")
        ver_text, sep, payload = value.removeprefix("vault:v").partition(":")
        if not sep:
            return errors(400, "invalid ciphertext: wrong number of fields")
        if not ver_text.isdigit():
            return errors(400, "invalid ciphertext: version number could not be decoded")
        version = max(int(ver_text), 1)
        if version > key.latest_version:
            return errors(400, "invalid ciphertext: version is too new")
        if version < key.min_decryption_version:
            return errors(400, "ciphertext or signature version is disallowed by policy (too old)")
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            return errors(400, "invalid ciphertext: could not decode base64")
        if len(raw) < 12:
            return errors(400, "invalid ciphertext length")
        try:
            plain = AESGCM(key.materials[version - 1]).decrypt(raw[:12], raw[12:], None)
        except InvalidTag:
            return errors(400, "cipher: message authentication failed")
        return ok({"plaintext": b64(plain)})


# -- SoftHSM2 --------------------------------------------------------------------------------------

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class SoftHSM:
    conf: Path
    pin: str = "1234"
    token: str = "backup-test"

    def uri(self, obj: str, token: str | None = None, pin: str | None = None) -> str:
        return (
            f"pkcs11:token={token or self.token};object={obj}"
            f"?module-path={SOFTHSM_MODULE}&pin-value={self.pin if pin is None else pin}"
        )

    def create_key(self, label: str) -> None:
        """An AES-256 key that is sensitive and never extractable, as a real HSM key would be."""
        import pkcs11
        from pkcs11 import Attribute

        token = pkcs11.lib(SOFTHSM_MODULE).get_token(token_label=self.token)
        with token.open(user_pin=self.pin, rw=True) as session:
            session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=label,
                store=True,
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )


def _softhsm(root: Path) -> Iterator[SoftHSM]:
    """A private SoftHSM2 token directory; the system token dir is never touched.

    SoftHSM reads SOFTHSM2_CONF when the module initialises, and python-pkcs11 keeps the module loaded
    for the whole process, so this is session-scoped and sets the variable for the session.
    """
    import subprocess

    if not os.path.exists(SOFTHSM_MODULE):
        pytest.skip("SoftHSM2 is not installed")
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        for label in ("backup-test", "other-token"):
            subprocess.run(
                ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678"],
                check=True,
                capture_output=True,
            )
        yield SoftHSM(conf)
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


# -- fixtures ----------------------------------------------------------------------------------------


def _running(server: _HTTPServer) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_kms() -> Iterator[AwsKmsServer]:
    yield from _running(AwsKmsServer())


@pytest.fixture
def gcp_kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpKmsServer]:
    # google-auth looks up a service account's "regional access boundary" at iamcredentials.googleapis.com
    # in the background; tests make no call outside 127.0.0.1.
    from google.auth.credentials import CredentialsWithRegionalAccessBoundary

    monkeypatch.setattr(
        CredentialsWithRegionalAccessBoundary, "_is_regional_access_boundary_lookup_required", lambda self: False
    )
    yield from _running(GcpKmsServer())


@pytest.fixture
def azure_kv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureKeyVaultServer]:
    """The fake vault over HTTPS; requests (used by azure-core and MSAL) trusts its certificate by env."""
    server = AzureKeyVaultServer(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert))
    yield from _running(server)


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[VaultServer]:
    """The fake Vault over HTTPS; the URIs it makes name its certificate in VAULT_CACERT."""
    folder = tmp_path / "vault-tls"  # not tmp_path itself: azure_kv writes its certificate there
    folder.mkdir()
    yield from _running(VaultServer(folder))


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    yield from _softhsm(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[str]:
    """moto's KMS (and STS) in-process on a free port; yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
