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

Credentials are read by :mod:`strongroom.cloud.azure`. The implementation is
:class:`~strongroom.storage.objectstore.ObjectStoreStorage` over obstore's ``AzureStore``; see objectstore.py for how
atomic and create-only writes work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cloud.azure import AzureAuth, azure_environment
from ..errors import UsageError
from ..uri import parse_uri, redact
from .base import StorageContext, register_storage
from .cloud import backend_detail
from .objectstore import RETRY_CONFIG, ObjectStoreStorage, client_options_for, import_obstore

if TYPE_CHECKING:  # obstore's config types exist only in its stubs
    from obstore.store import AzureConfig

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


def open_azure(uri: str, context: StorageContext | None = None) -> ObjectStoreStorage:
    import_obstore("azure://")
    from obstore.store import AzureStore

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
    cloud = azure_environment(params)
    endpoint = params.get("AZURE_ENDPOINT") or f"https://{account}.{cloud.blob_suffix}"
    auth = AzureAuth.from_params(params, account_key_allowed=True)
    config: AzureConfig = {"account_name": account, "endpoint": endpoint, "authority_host": cloud.authority_host}
    if auth.account_key:
        config["account_key"] = auth.account_key
    elif not auth.implicit:
        config["client_id"] = auth.client_id
        config["client_secret"] = auth.client_secret
        config["tenant_id"] = auth.tenant_id
    secrets = auth.secrets
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
