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

boto3 is imported on first use so ``import strongroom`` works without the ``[aws]`` extra.
"""

from __future__ import annotations

import threading
from typing import Any

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
)
AUTH_SPECIFIED, AUTH_IMPLICIT = "specified", "implicit"
# Error codes that mean "this key does not exist (here)": reported as NotFoundError.
_NOT_FOUND = frozenset({"NotFoundException"})
# Connect and read timeouts and attempts: a dead KMS must fail a backup in seconds, not minutes.
_CONNECT_TIMEOUT, _READ_TIMEOUT, _ATTEMPTS = 5, 20, 2


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise UsageError("aws:// KMS needs boto3: pip install 'strongroom[aws]'") from None
    return boto3


def parse_role_chain(value: str) -> list[tuple[str, str | None]]:
    """``ASSUME_ROLE`` as (role ARN, external id) pairs, delegates first and the target role last."""
    chain: list[tuple[str, str | None]] = []
    for entry in value.split(","):
        arn, *opts = (p.strip() for p in entry.split(";"))
        external_id = None
        for opt in opts:
            name, sep, val = opt.partition("=")
            if not sep or name != "external_id":
                raise UsageError(f"unknown ASSUME_ROLE option {name!r} (only external_id=<id> is supported)")
            external_id = val
        if not arn:
            raise UsageError("ASSUME_ROLE has an empty role ARN")
        chain.append((arn, external_id))
    return chain


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
        self._auth = p.get("AUTH", "") or AUTH_SPECIFIED
        self._access_key = p.get("AWS_ACCESS_KEY_ID", "")
        # Query decoding turns '+' into ' '; AWS secrets often contain '+', so turn it back (as CockroachDB does).
        self._secret = p.get("AWS_SECRET_ACCESS_KEY", "").replace(" ", "+")
        self._token = p.get("AWS_SESSION_TOKEN", "")
        self._endpoint = p.get("AWS_ENDPOINT") or None
        if self._auth == AUTH_SPECIFIED:
            for name, val in (("AWS_ACCESS_KEY_ID", self._access_key), ("AWS_SECRET_ACCESS_KEY", self._secret)):
                if not val:
                    raise UsageError(f"AUTH is set to '{AUTH_SPECIFIED}', but {name} is not set")
        elif self._auth != AUTH_IMPLICIT:
            raise UsageError(f"unsupported value {self._auth} for AUTH")
        self._roles = parse_role_chain(p["ASSUME_ROLE"]) if p.get("ASSUME_ROLE") else []
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

    # -- client ---------------------------------------------------------------------------------
    def _session(self) -> Any:
        boto3 = _import_boto3()
        if self._auth == AUTH_SPECIFIED:
            return boto3.session.Session(
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret,
                aws_session_token=self._token or None,
                region_name=self._region,
            )
        return boto3.session.Session(region_name=self._region)

    def _config(self) -> Any:
        from botocore.config import Config

        return Config(
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            retries={"max_attempts": _ATTEMPTS, "mode": "standard"},
        )

    def _assume_roles(self, session: Any) -> Any:
        """Walk the ASSUME_ROLE chain, each hop signed with the previous hop's temporary credentials."""
        boto3 = _import_boto3()
        for arn, external_id in self._roles:
            sts = session.client("sts", config=self._config())
            args: dict[str, Any] = {"RoleArn": arn, "RoleSessionName": "strongroom-kms"}
            if external_id:
                args["ExternalId"] = external_id
            creds = self._call(lambda sts=sts, args=args: sts.assume_role(**args), "AssumeRole")["Credentials"]
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=self._region,
            )
        return session

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                session = self._session()
                if self._roles:
                    session = self._assume_roles(session)
                self._client = session.client("kms", endpoint_url=self._endpoint, config=self._config())
            return self._client

    def _scrub(self, text: str) -> str:
        """AWS messages never echo secrets today; make sure of it anyway."""
        for secret in (self._secret, self._token):
            if secret:
                text = text.replace(secret, "redacted")
        return text

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
            msg = self._scrub(err.get("Message", ""))
            cls = NotFoundError if code in _NOT_FOUND else KMSError
            raise cls(f"{where}: {op}: {code}: {msg}".rstrip(": ")) from None
        except (EndpointConnectionError, ConnectionError) as exc:
            raise KMSError(f"{where}: KMS unreachable: {type(exc).__name__}") from None
        except NoCredentialsError:
            raise KMSError(f"{where}: {op}: no AWS credentials found in the environment (AUTH=implicit)") from None
        except BotoCoreError as exc:
            raise KMSError(f"{where}: {op}: {type(exc).__name__}: {self._scrub(str(exc))}") from None

    # -- KMS interface --------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes) -> bytes:
        kms = self._kms()
        resp = self._call(lambda: kms.encrypt(KeyId=self._key_id, Plaintext=plaintext), "Encrypt")
        return bytes(resp["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes) -> bytes:
        kms = self._kms()
        resp = self._call(lambda: kms.decrypt(KeyId=self._key_id, CiphertextBlob=ciphertext), "Decrypt")
        return bytes(resp["Plaintext"])

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


for _scheme in SCHEMES:
    register_kms(_scheme, AwsKMS)
