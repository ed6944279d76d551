"""Azure Blob Storage: ``azure://<container>/<path>?AZURE_ACCOUNT_NAME=..&AZURE_ACCOUNT_KEY=<URL-encoded key>``.

``azure-blob://`` and ``azure-storage://`` are the same (CockroachDB accepts all three). Query parameters are
CockroachDB's: ``AZURE_ACCOUNT_NAME`` (required), ``AZURE_ACCOUNT_KEY`` (the base64 account key, URL-encoded in the
URI), or instead client-secret auth with ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET`` and ``AZURE_TENANT_ID``;
``AZURE_ENVIRONMENT`` (``AzurePublicCloud`` (default), ``AzureUSGovernmentCloud``, ``AzureChinaCloud``) picks the
endpoint suffix and login authority; ``AUTH=specified|implicit`` (default ``specified``; ``implicit`` takes
credentials from the environment: ``AZURE_*`` variables, workload identity or managed identity).

Strongroom extension: ``AZURE_ENDPOINT=<blob endpoint URL>`` replaces ``https://<account>.blob.<suffix>``, the way
``AWS_ENDPOINT`` does for S3. It is how tests reach Azurite, e.g.
``AZURE_ENDPOINT=http://127.0.0.1:10000/devstoreaccount1`` (plain http only when the endpoint says so).

The implementation is :class:`~strongroom.storage.s3.ObjectStoreStorage` over obstore's ``AzureStore``; see s3.py for
how atomic and create-only writes work.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..uri import parse_uri, redact
from .base import StorageContext, register_storage
from .cloud import auth_mode, backend_detail
from .s3 import RETRY_CONFIG, ObjectStoreStorage, client_options_for

AZURE_PARAMS = (
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ENVIRONMENT",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AUTH",
    "AZURE_ENDPOINT",
)

# AZURE_ENVIRONMENT -> (blob endpoint suffix, Entra ID authority host), after the Azure SDK's cloud list.
ENVIRONMENTS = {
    "AzurePublicCloud": ("blob.core.windows.net", "https://login.microsoftonline.com"),
    "AzureUSGovernmentCloud": ("blob.core.usgovcloudapi.net", "https://login.microsoftonline.us"),
    "AzureChinaCloud": ("blob.core.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
}
_CLIENT_PARAMS = ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")


def open_azure(uri: str, context: StorageContext | None = None) -> ObjectStoreStorage:
    from obstore.store import AzureStore  # lazy: keep import errors inside the scheme that needs it

    parsed = parse_uri(uri)
    parsed.check_params(AZURE_PARAMS, what=parsed.scheme)
    params = parsed.params
    display = redact(uri)
    container = parsed.host
    if not container:
        raise UsageError(f"azure URI must name a container, like azure://container/path (got {display!r})")
    account = params.get("AZURE_ACCOUNT_NAME", "")
    if not account:
        raise UsageError('azure uri missing "AZURE_ACCOUNT_NAME" parameter')
    env_name = params.get("AZURE_ENVIRONMENT") or "AzurePublicCloud"
    if env_name not in ENVIRONMENTS:
        raise UsageError(f"unknown AZURE_ENVIRONMENT {env_name!r} (known: {', '.join(ENVIRONMENTS)})")
    suffix, authority = ENVIRONMENTS[env_name]
    endpoint = params.get("AZURE_ENDPOINT") or f"https://{account}.{suffix}"
    # Base64 never contains spaces: a space here is a '+' the user did not URL-encode, which query decoding turned
    # into a space. Put it back rather than fail with a signature mismatch.
    key = params.get("AZURE_ACCOUNT_KEY", "").replace(" ", "+")
    client = {p: params.get(p, "") for p in _CLIENT_PARAMS}
    config: dict[str, Any] = {"account_name": account, "endpoint": endpoint, "authority_host": authority}
    if auth_mode(params) == "specified":
        if key and any(client.values()):
            raise UsageError(
                "azure uri: give either AZURE_ACCOUNT_KEY or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and "
                "AZURE_TENANT_ID, not both"
            )
        if key:
            config["account_key"] = key
        elif all(client.values()):
            config.update(
                client_id=client["AZURE_CLIENT_ID"],
                client_secret=client["AZURE_CLIENT_SECRET"],
                tenant_id=client["AZURE_TENANT_ID"],
            )
        else:
            raise UsageError(
                'azure uri missing "AZURE_ACCOUNT_KEY" parameter (or all of "AZURE_CLIENT_ID", '
                '"AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")'
            )
    secrets = [key, client["AZURE_CLIENT_SECRET"]]
    prefix = parsed.path.strip("/") or None
    try:
        store = AzureStore(
            container,
            prefix=prefix,
            config=config,
            client_options=client_options_for(endpoint),
            retry_config=RETRY_CONFIG,
        )
    except Exception as exc:
        raise UsageError(f"invalid azure location {display}: {backend_detail(exc, secrets)}") from None
    return ObjectStoreStorage(store, display, secrets=secrets)


for _scheme in ("azure", "azure-blob", "azure-storage"):
    register_storage(_scheme, open_azure)
