"""AWS KMS: ``aws:///<key>?...`` and ``aws-kms:///<key>?...``, as in CockroachDB's ``aws_kms.go``.

The key is a key id, key ARN, alias name or alias ARN. Its master key id is the URI path without the
leading ``/`` *exactly as written*: a key id and its ARN are different identities (CockroachDB does the
same; the region is not part of the identity). The data key is wrapped with ``kms:Encrypt`` and
unwrapped with ``kms:Decrypt``, always naming the KeyId so a blob cannot be unwrapped by another key.

Parameters: ``AUTH`` (``specified``, the default, or ``implicit``: credentials from the environment as
boto3 finds them), ``REGION`` (required), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT`` (a private or test endpoint) and ``ASSUME_ROLE`` (a comma-separated
chain ``delegate1,...,target``, each ``arn[;external_id=<id>]``, assumed in order through STS; STS's
own endpoint follows boto3's usual configuration, e.g. ``AWS_ENDPOINT_URL_STS``).

Asymmetric keys (Strongroom's addition): ``ASYMMETRIC=RSAES_OAEP_SHA_256`` (or ``RSAES_OAEP_SHA_1``)
names an RSA ``ENCRYPT_DECRYPT`` key (``RSA_2048``/``3072``/``4096``). The public key is fetched once
with ``kms:GetPublicKey`` and the data key is wrapped offline with RSA-OAEP, so a backup host's IAM
policy needs only ``kms:GetPublicKey``: it can write backups and never read them. Unwrapping is
``kms:Decrypt`` with the same algorithm, so RESTORE gives the same URI. The master key id is the key
as written, with or without the parameter: a chain written with it is opened by the same key.

boto3 is imported on first use so ``import strongroom`` works without the ``[aws]`` extra.
"""

from __future__ import annotations

import threading
from typing import Any

from ..cloud.aws import AwsAuth, boto3_module
from ..cloud.scrub import scrub
from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEMES = ("aws", "aws-kms")
PARAMS = (
    "AUTH",
    "REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT",
    "ASSUME_ROLE",
    "ASYMMETRIC",
)
ASYMMETRIC_ALGORITHMS = ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1")
# Error codes that mean "this key does not exist (here)": reported as NotFoundError.
_NOT_FOUND = frozenset({"NotFoundException"})
# Connect and read timeouts and attempts: a dead KMS must fail a backup in seconds, not minutes.
_CONNECT_TIMEOUT, _READ_TIMEOUT, _ATTEMPTS = 5, 20, 2


class AwsKMS:
    """One AWS KMS key, opened from a URI; no network call until the first encrypt/decrypt."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        p = parsed.params
        self._uri = uri
        self._key_id = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if parsed.host or not self._key_id:
            raise UsageError(f"AWS KMS URI must look like {parsed.scheme}:///<key id, ARN or alias>?REGION=...")
        self._region = p.get("REGION", "")
        if not self._region:
            raise UsageError("aws kms REGION parameter not specified")
        self._endpoint = p.get("AWS_ENDPOINT") or None
        self._auth = AwsAuth.from_params(p, region=self._region)
        self._algorithm = p.get("ASYMMETRIC") or None
        if self._algorithm is not None and self._algorithm not in ASYMMETRIC_ALGORITHMS:
            raise UsageError(f"aws kms ASYMMETRIC must be one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        self._public_key: Any = None  # fetched once per opening: every later wrap is offline
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AwsKMS(key={self._key_id!r}, region={self._region!r})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return self._key_id

    @property
    def wraps_offline(self) -> bool:
        return self._algorithm is not None

    # -- client ---------------------------------------------------------------------------------
    def _config(self) -> Any:
        boto3_module("aws:// KMS")
        from botocore.config import Config

        return Config(
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            retries={"max_attempts": _ATTEMPTS, "mode": "standard"},
        )

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                # STS's own endpoint follows boto3's configuration (AWS_ENDPOINT_URL_STS), not AWS_ENDPOINT.
                config = self._config()
                session, _expires = self._call(lambda: self._auth.session("aws:// KMS", config=config), "AssumeRole")
                self._client = session.client("kms", endpoint_url=self._endpoint, config=self._config())
            return self._client

    def _call(self, fn: Any, op: str) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = f'AWS KMS key "{self._key_id}" ({self._region})'
        try:
            return fn()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "Unknown")
            msg = scrub(err.get("Message", ""), self._auth.secrets)
            cls = NotFoundError if code in _NOT_FOUND else KMSError
            raise cls(f"{where}: {op}: {code}: {msg}".rstrip(": ")) from None
        except (EndpointConnectionError, ConnectionError) as exc:
            raise KMSError(f"{where}: KMS unreachable: {type(exc).__name__}") from None
        except NoCredentialsError:
            raise KMSError(f"{where}: {op}: no AWS credentials found in the environment (AUTH=implicit)") from None
        except BotoCoreError as exc:
            raise KMSError(f"{where}: {op}: {type(exc).__name__}: {scrub(str(exc), self._auth.secrets)}") from None

    # -- KMS interface --------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes) -> bytes:
        if self._algorithm is not None:
            return self._encrypt_offline(plaintext)
        kms = self._kms()
        resp = self._call(lambda: kms.encrypt(KeyId=self._key_id, Plaintext=plaintext), "Encrypt")
        return bytes(resp["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes) -> bytes:
        kms = self._kms()
        extra = {"EncryptionAlgorithm": self._algorithm} if self._algorithm else {}
        resp = self._call(lambda: kms.decrypt(KeyId=self._key_id, CiphertextBlob=ciphertext, **extra), "Decrypt")
        return bytes(resp["Plaintext"])

    def _encrypt_offline(self, plaintext: bytes) -> bytes:
        """RSA-OAEP under the key's public half, exactly as KMS's own Encrypt would for this algorithm."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        if self._public_key is None:
            kms = self._kms()
            resp = self._call(lambda: kms.get_public_key(KeyId=self._key_id), "GetPublicKey")
            where = f'AWS KMS key "{self._key_id}"'
            if resp.get("KeyUsage") != "ENCRYPT_DECRYPT" or self._algorithm not in resp.get("EncryptionAlgorithms", []):
                raise KMSError(f"{where} is not an asymmetric ENCRYPT_DECRYPT key supporting {self._algorithm}")
            key = serialization.load_der_public_key(bytes(resp["PublicKey"]))
            if not isinstance(key, rsa.RSAPublicKey):
                raise KMSError(f"{where} is not an RSA key")
            self._public_key = key
        digest = hashes.SHA256() if self._algorithm == "RSAES_OAEP_SHA_256" else hashes.SHA1()
        pad = padding.OAEP(mgf=padding.MGF1(algorithm=digest), algorithm=digest, label=None)
        return bytes(self._public_key.encrypt(plaintext, pad))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


for _scheme in SCHEMES:
    register_kms(_scheme, AwsKMS)
