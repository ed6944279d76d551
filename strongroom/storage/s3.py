"""Amazon S3 (and S3-compatible) storage: ``s3://<bucket>/<path>?AWS_ACCESS_KEY_ID=..&AWS_SECRET_ACCESS_KEY=..``.

Query parameters are CockroachDB's: the credentials of :mod:`strongroom.cloud.aws` (``AUTH``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``ASSUME_ROLE`` chains with
``;external_id=``, exactly as the AWS KMS reads them), ``AWS_REGION`` (default ``us-east-1``), ``AWS_ENDPOINT``
(an S3-compatible server; plain ``http://`` is allowed only when the endpoint says so; the STS calls of
``ASSUME_ROLE`` go there too, which is what S3-compatible test servers such as moto serve) and
``AWS_USE_PATH_STYLE`` (default: path-style with a custom endpoint, virtual-hosted on AWS).

This module only builds an obstore ``S3Store``; :mod:`.objectstore` is the storage over it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cloud.aws import AUTH_SPECIFIED, AwsAuth
from ..cloud.extras import import_extra
from ..errors import StorageError, UsageError
from ..uri import check_bucket_name, parse_uri, redact
from .base import StorageContext, register_storage
from .cloud import backend_detail, parse_bool
from .objectstore import RETRY_CONFIG, ObjectStoreStorage, client_options_for, import_obstore

if TYPE_CHECKING:  # obstore's config types exist only in its stubs
    from obstore.store import S3Config, S3Credential

S3_PARAMS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_USE_PATH_STYLE",
    "AUTH",
    "ASSUME_ROLE",
)
# obstore asks the provider again this long before temporary credentials expire.
_REFRESH_MARGIN = dt.timedelta(minutes=5)


def _static_provider(auth: AwsAuth) -> Callable[[], S3Credential]:
    def provide() -> S3Credential:
        return {
            "access_key_id": auth.access_key_id,
            "secret_access_key": auth.secret_access_key,
            "token": auth.session_token,
            "expires_at": None,
        }

    return provide


def _session_provider(auth: AwsAuth, endpoint: str | None, display: str) -> Callable[[], S3Credential]:
    """Credentials from boto3: its default chain (AUTH=implicit) and/or the ASSUME_ROLE chain through STS."""
    import_extra("boto3", "aws", "AUTH=implicit and ASSUME_ROLE on s3://")  # fail at open, not at first request

    def provide() -> S3Credential:
        try:
            session, expires = auth.session("s3://", sts_endpoint=endpoint)
            creds = session.get_credentials()
        except Exception as exc:
            roles = ",".join(r.arn for r in auth.roles)
            raise StorageError(f"{display}: cannot assume role {roles}: {backend_detail(exc, auth.secrets)}") from None
        if creds is None:
            raise StorageError("AUTH=implicit: no AWS credentials found in the environment")
        frozen = creds.get_frozen_credentials()
        # boto3 refreshes its own credentials; without an STS expiry, ask it again every few minutes.
        renew_at = (expires or dt.datetime.now(dt.UTC) + 2 * _REFRESH_MARGIN) - _REFRESH_MARGIN
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": renew_at,
        }

    return provide


def open_s3(uri: str, context: StorageContext | None = None) -> ObjectStoreStorage:
    import_obstore("s3://")
    from obstore.store import S3Store

    parsed = parse_uri(uri)
    parsed.check_params(S3_PARAMS, what="s3")
    params = parsed.params
    bucket = parsed.host
    display = redact(uri)
    if not bucket:
        raise UsageError(f"s3 URI must name a bucket, like s3://bucket/path (got {display!r})")
    check_bucket_name(bucket, uri)
    endpoint = params.get("AWS_ENDPOINT") or None
    auth = AwsAuth.from_params(params, region=params.get("AWS_REGION") or "us-east-1")
    if auth.auth == AUTH_SPECIFIED and not auth.roles:
        provider = _static_provider(auth)
    else:
        provider = _session_provider(auth, endpoint, display)
    path_style = (
        parse_bool(params["AWS_USE_PATH_STYLE"], "AWS_USE_PATH_STYLE")
        if "AWS_USE_PATH_STYLE" in params
        else endpoint is not None
    )
    config: S3Config = {
        "region": auth.region,
        "virtual_hosted_style_request": not path_style,
        "copy_if_not_exists": "multipart",
        "conditional_put": "etag",
    }
    if endpoint:
        config["endpoint"] = endpoint
    prefix = parsed.path.strip("/") or None
    try:
        # The credential provider (rather than keys in the config) keeps obstore from mixing in AWS_* variables
        # from the environment when the URI says AUTH=specified.
        store = S3Store(
            bucket,
            prefix=prefix,
            config=config,
            client_options=client_options_for(endpoint),
            retry_config=RETRY_CONFIG,
            credential_provider=provider,
        )
    except Exception as exc:
        raise UsageError(f"invalid s3 location {display}: {backend_detail(exc, auth.secrets)}") from None
    return ObjectStoreStorage(store, display, secrets=auth.secrets)


register_storage("s3", open_s3)
