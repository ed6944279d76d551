"""The HTTP CMEK API (``strongroom serve``): a real uvicorn server on a free port, spoken to over HTTP.

Operations are observed mid-flight by holding the store's rotation lock, as a concurrent rotation in
another process does; no part of Strongroom is replaced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from conftest import MARKER, fill_bank, table_rows
from official_api import (
    UNTRUE_FOR_A_STORE,
    SpecViolation,
    check_official,
    checking_hook,
    official_document,
    uses_our_key_types,
)

from strongroom import Store, init_store, open_store
from strongroom.errors import KMSError
from strongroom.server import Scheduler, StoreService, create_app
from strongroom.server.models import CMEKKeySpecification, CMEKKeyType, cmek_spec, kms_uri
from strongroom.store.keys import KEY_TYPES

if TYPE_CHECKING:
    from kms_servers import AwsKmsServer, VaultServer

pytest_plugins = ("kms_servers",)  # the AWS KMS protocol server fixture

TOKEN = "test-token-5b1e9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACTOR = "api:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]


def free_port() -> int:
    from kms_servers import free_port  # once pytest has loaded the plugin (so its asserts are rewritten)

    return free_port()


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    from kms_servers import wait_until

    return wait_until(pred, timeout)


@dataclass
class Api:
    client: httpx.Client
    service: StoreService
    store: Path
    cluster_id: str

    @property
    def cmek(self) -> str:
        return f"/api/v1/clusters/{self.cluster_id}/cmek"

    def call(self, method: str, path: str | None = None, body: object = None) -> httpx.Response:
        return self.client.request(method, path or self.cmek, json=body, headers=AUTH)

    def get(self) -> dict[str, Any]:
        response = self.call("GET")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def settle(self) -> dict[str, Any]:
        """Wait for the running operation, then GET."""
        assert self.service.wait(30)
        return self.get()


def region_specs(specs: dict[str, str], key_type: str = "LOCAL_KEY_FILE", principal: str = "") -> dict[str, Any]:
    return {
        "region_specs": [
            {"region": r, "key_spec": {"type": key_type, "uri": uri, "auth_principal": principal}}
            for r, uri in specs.items()
        ]
    }


def statuses(info: dict[str, Any]) -> dict[str, str]:
    return {r["region"]: r["status"] for r in info["region_infos"]}


@contextmanager
def serving(store: Path, schedule_interval: float | None = None) -> Iterator[Api]:
    """create_app under uvicorn in a thread (loggers propagate, so caplog sees access logs too)."""
    app = create_app(store, TOKEN, schedule_interval=schedule_interval)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10)
    service = app.state.service
    base = f"http://127.0.0.1:{port}"
    with official_client(base) as client:
        try:
            yield Api(client, service, store, service.cluster_id)
        finally:
            server.should_exit = True
            thread.join(30)


def official_client(base: str) -> httpx.Client:
    """A client whose every exchange is checked against Cloud's API spec and the served /openapi.json."""
    served = httpx.get(base + "/openapi.json", timeout=10).json()
    hook = checking_hook(lambda: served)
    return httpx.Client(base_url=base, timeout=30, event_hooks={"response": [hook]})


@contextmanager
def rotation_held(store: Path) -> Iterator[None]:
    """Hold the store's rotation lock, as another process's rotation does."""
    fd = os.open(store / "keys" / ".rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def cmek_store(tmp_path: Path, keys: tuple[str, str, str]) -> Path:
    east, west, _ = keys
    store = init_store(tmp_path / "store", regions=("us", "eu"), cmek={"us": east, "eu": west})
    fill_bank(store, accounts=200)
    return store.path


@pytest.fixture
def api(cmek_store: Path) -> Iterator[Api]:
    with serving(cmek_store) as running:
        yield running


@pytest.fixture
def plain_api(tmp_path: Path, keys: tuple[str, str, str]) -> Iterator[Api]:
    """A two-region store without CMEK."""
    with serving(init_store(tmp_path / "plain", regions=("us", "eu")).path) as running:
        yield running


# -- auth and routing -----------------------------------------------------------------------------------


def test_bearer_token_is_required_and_compared(api: Api) -> None:
    for headers, message in [
        ({}, "missing API token: send Authorization: Bearer <token>"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing API token: send Authorization: Bearer <token>"),
        ({"Authorization": "Bearer wrong-token"}, "invalid API token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid API token"),
    ]:
        for method, path in [("GET", api.cmek), ("POST", api.cmek), ("PATCH", api.cmek), ("GET", api.cmek + "/audit")]:
            r = api.client.request(method, path, headers=headers, json={"action": "REVOKE"})
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"code": 401, "message": message, "details": []}
    assert statuses(api.get()) == {"us": "ENABLED", "eu": "ENABLED"}  # the unauthenticated PATCH did nothing


def test_a_cluster_id_other_than_the_store_id_is_404(api: Api) -> None:
    for method, path in [
        ("GET", "/api/v1/clusters/other/cmek"),
        ("POST", "/api/v1/clusters/other/cmek"),
        ("PUT", "/api/v1/clusters/other/cmek"),
        ("PATCH", "/api/v1/clusters/other/cmek"),
        ("GET", "/api/v1/clusters/other/cmek/audit"),
        ("GET", "/api/v1/clusters/other/encryption-status"),
    ]:
        r = api.call(method, path, {"action": "REVOKE"})
        assert (r.status_code, r.json()) == (
            404,
            {"code": 404, "message": 'cluster "other" not found', "details": []},
        ), method
    assert api.call("GET", "/api/v1/nothing").status_code == 404


def test_get_cmek_reports_every_region_in_cockroach_clouds_shape(api: Api) -> None:
    info = api.get()
    assert info["status"] == "ENABLED"
    assert [r["region"] for r in info["region_infos"]] == ["us", "eu"]
    [key] = info["region_infos"][0]["key_infos"]
    assert key["spec"] == {"type": "LOCAL_KEY_FILE", "uri": "local:///east", "auth_principal": ""}
    assert key["status"] == "ENABLED" and key["user_message"] == ""
    assert key["created_at"] and key["updated_at"] >= key["created_at"]


def test_openapi_document_describes_the_cmek_models(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert set(doc["paths"]) == {
        "/api/v1/clusters/{cluster_id}",
        "/api/v1/clusters/{cluster_id}/cmek",
        "/api/v1/clusters/{cluster_id}/cmek/audit",
        "/api/v1/clusters/{cluster_id}/encryption-status",
        "/api/v1/clusters/{cluster_id}/backups",
        "/api/v1/clusters/{cluster_id}/backups-config",
        "/api/v1/clusters/{cluster_id}/restores",
        "/api/v1/clusters/{cluster_id}/restores/{restore_id}",
    }
    assert set(doc["paths"]["/api/v1/clusters/{cluster_id}/cmek"]) == {"get", "post", "put", "patch"}
    schemas = doc["components"]["schemas"]
    for name in ("CMEKClusterSpecification", "CMEKClusterInfo", "CMEKKeyInfo", "CMEKStatus", "RegionStatus", "Cluster"):
        assert name in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}  # Cloud's Status
    assert schemas["CMEKClusterSpecification"]["required"] == ["region_specs"]  # as in Cloud: nothing else
    assert "required" not in schemas["CMEKRegionSpecification"] and "required" not in schemas["CMEKKeySpecification"]
    assert set(schemas["CMEKKeyType"]["enum"]) == {*KEY_TYPES.values(), "NULL_KMS"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for operations in doc["paths"].values():  # errors are Cloud's body, and a bad request is 400, not 422
        for operation in operations.values():
            assert set(operation["responses"]) == {"200", "4XX", "5XX"}
            for errors in ("4XX", "5XX"):
                assert operation["responses"][errors]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ErrorBody"
                )


def test_the_official_spec_check_catches_what_a_generated_client_would_reject() -> None:
    def exchange(method: str, status: int, answer: object, body: object = None) -> tuple[httpx.Request, httpx.Response]:
        request = httpx.Request(method, "http://127.0.0.1/api/v1/clusters/c/cmek", json=body, headers=AUTH)
        return request, httpx.Response(status, json=answer, request=request)

    good = {"status": "ENABLED", "region_infos": [{"region": "us", "status": "ENABLED", "key_infos": []}]}
    assert check_official(*exchange("GET", 200, good))
    for method, status, answer, body in [
        ("GET", 200, {**good, "status": "HEALTHY"}, None),  # not a CMEKStatus
        ("GET", 200, {**good, "region_infos": {"us": {}}}, None),  # not an array
        ("GET", 409, {"code": 409, "message": "busy", "details": {}}, None),  # Status.details is an array
        ("POST", 200, good, {"region_specs": [{"region": "us", "key_spec": {"type": "VAULT"}}]}),  # accepted, invalid
        ("POST", 200, good, {}),  # region_specs is required
    ]:
        with pytest.raises(SpecViolation):
            check_official(*exchange(method, status, answer, body))
    # our key types pass only as the documented addition, and only where they are used
    ours = {"region_specs": [{"region": "us", "key_spec": {"type": "LOCAL_KEY_FILE", "uri": "local:///k"}}]}
    assert uses_our_key_types(json.dumps(ours).encode()) and check_official(*exchange("PUT", 200, good, ours))
    audit = httpx.Request("GET", "http://127.0.0.1/api/v1/clusters/c/cmek/audit", headers=AUTH)
    assert not check_official(audit, httpx.Response(200, json=[], request=audit))  # ours alone: not in Cloud's spec


# -- bad requests change nothing ---------------------------------------------------------------------------


def test_enable_needs_every_region(plain_api: Api) -> None:
    r = plain_api.call("POST", body=region_specs({"us": "local:///east"}))
    assert r.status_code == 400
    assert r.json()["message"] == "enabling CMEK needs a key for every region of the store; missing: eu"
    assert statuses(plain_api.get()) == {"us": "DISABLED", "eu": "DISABLED"}


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        (
            "PUT",
            region_specs({"us": "local:///west"}, key_type="AWS_KMS"),
            "key_spec.type is AWS_KMS but 'local:///west' is a LOCAL_KEY_FILE key",
        ),
        (
            "PUT",
            region_specs({"us": "gs:///projects/p/locations/l/keyRings/r/cryptoKeys/k"}, key_type="AZURE_KEY_VAULT"),
            "key_spec.type is AZURE_KEY_VAULT but 'gs:///projects/p/locations/l/keyRings/r/cryptoKeys/k' is a "
            "GCP_CLOUD_KMS key",
        ),
        ("PUT", region_specs({"us": ""}), "key_spec.uri is empty: a LOCAL_KEY_FILE key needs one"),
        ("PUT", region_specs({"us": "gopher:///k"}), "no KMS found for scheme \"gopher\" in 'gopher:///k'"),
        (
            "PUT",
            region_specs({"us": ""}, key_type="NULL_KMS"),
            'region "us": encryption was used on this store before; CMEK cannot be dropped '
            "(revoke it instead: strongroom cmek revoke)",
        ),
        ("PUT", region_specs({"mars": "local:///west"}), 'region "mars" does not exist\nHINT: valid regions: us, eu'),
        ("PUT", {"region_specs": []}, "region_specs is empty: name each region to rotate"),
        (
            "PUT",
            {"region_specs": [region_specs({"us": "local:///west"})["region_specs"][0]] * 2},
            'region "us" appears more than once in region_specs',
        ),
        (
            "PUT",
            {"region_specs": [{"key_spec": {"uri": "local:///west"}}]},
            "region_specs.0.region is empty: name the region",
        ),
        ("PUT", {"region_specs": [{"region": "us"}]}, "key_spec.uri is empty: a CMEK key needs one"),
        (
            "PUT",
            region_specs({"us": "local:///west"}, key_type="HASHICORP_VAULT"),
            "key_spec.type is HASHICORP_VAULT but 'local:///west' is a LOCAL_KEY_FILE key",
        ),
        ("PUT", region_specs({"us": "local:///west"}, key_type="OCI_VAULT"), None),
        ("PATCH", {"action": "DISABLE"}, "unknown action 'DISABLE': the only action is REVOKE"),
        ("PATCH", {}, "invalid request: action: Field required"),
    ],
)
def test_bad_requests_are_400_and_change_nothing(api: Api, method: str, body: object, message: str | None) -> None:
    before = api.get()
    r = api.call(method, body=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400
    if message is not None:
        assert r.json()["message"] == message
    else:  # pydantic's wording, without echoing the request
        assert r.json()["message"].startswith("invalid request: region_specs.0.key_spec.type: ")
    assert api.service.operation is None and api.get() == before


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    r = api.client.put(api.cmek, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("invalid request: ")


def test_revoking_a_store_without_cmek_is_400(plain_api: Api) -> None:
    r = plain_api.call("PATCH", body={"action": "REVOKE"})
    assert (r.status_code, r.json()["message"]) == (
        400,
        "CMEK is not enabled on this cluster: there is nothing to revoke",
    )


# -- operations ----------------------------------------------------------------------------------------------


def test_enable_runs_in_the_background_enabling_then_enabled(plain_api: Api) -> None:
    with rotation_held(plain_api.store):
        r = plain_api.call("POST", body=region_specs({"us": "local:///east", "eu": "local:///west"}, principal="ops"))
        assert r.status_code == 200
        assert r.json()["status"] == "ENABLING" and statuses(r.json()) == {"us": "ENABLING", "eu": "ENABLING"}
        time.sleep(0.2)
        assert statuses(plain_api.get()) == {"us": "ENABLING", "eu": "ENABLING"}
    info = plain_api.settle()
    assert info["status"] == "ENABLED" and statuses(info) == {"us": "ENABLED", "eu": "ENABLED"}
    assert info["region_infos"][1]["key_infos"][0]["spec"] == {
        "type": "LOCAL_KEY_FILE",
        "uri": "local:///west",
        "auth_principal": "ops",
    }
    store = open_store(plain_api.store)
    assert [st.cmek for st in store.encryption_status()] == [True, True]


def test_one_operation_at_a_time(api: Api) -> None:
    busy = "a CMEK rotate is in progress on this cluster; try again when it has finished"
    with rotation_held(api.store):
        r = api.call("PUT", body=region_specs({"eu": "local:///east"}))
        assert (r.status_code, r.json()["status"]) == (200, "ROTATING")
        assert statuses(r.json()) == {"us": "ENABLED", "eu": "ROTATING"}
        info = api.get()
        assert info["status"] == "ROTATING" and statuses(info) == {"us": "ENABLED", "eu": "ROTATING"}
        for method, body in [
            ("PUT", region_specs({"us": "local:///west"})),
            ("POST", region_specs({"us": "local:///east", "eu": "local:///west"})),
            ("PATCH", {"action": "REVOKE"}),
        ]:
            r = api.call(method, body=body)
            assert (r.status_code, r.json()) == (409, {"code": 409, "message": busy, "details": []}), method
    info = api.settle()
    assert statuses(info) == {"us": "ENABLED", "eu": "ENABLED"}
    assert info["region_infos"][1]["key_infos"][0]["spec"]["uri"] == "local:///east"
    rotated = [a for a in open_store(api.store).audit_records() if a.purpose == "rotate CMEK"]
    assert {(a.actor, a.region, a.key) for a in rotated} == {(ACTOR, "eu", "local:///east")}


def test_a_key_the_kms_cannot_use_is_400_at_once_after_an_audited_probe(api: Api, _keyring: Path) -> None:
    before = api.get()
    for method, body in [
        ("PUT", region_specs({"us": "local:///missing"})),
        ("POST", region_specs({"us": "local:///east", "eu": "local:///missing"})),
    ]:
        r = api.call(method, body=body)
        region = "us" if method == "PUT" else "eu"
        assert (r.status_code, r.json()) == (400, {"code": 400, "details": [], "message": (
            f'region "{region}": the key local:///missing cannot be used: local KMS key "missing" not found in '
            f"keyring {_keyring} (create it with: strongroom keys create missing)"
        )}), method  # fmt: skip
    assert api.service.operation is None and api.get() == before
    probes = [a for a in open_store(api.store).audit_records() if a.purpose == "check CMEK"]
    assert probes and {a.actor for a in probes} == {ACTOR}
    missing = [a for a in probes if a.key == "local:///missing"]
    assert len(missing) == 2 and all(a.operation == "encrypt" and a.result.startswith("error: ") for a in missing)
    # the POST's usable key was probed too (encrypt and decrypt) before the refusal
    assert [a.operation for a in probes if a.key == "local:///east"] == ["encrypt", "decrypt"]


def test_a_rotation_that_fails_later_shows_the_requested_key_beside_the_current(api: Api, _keyring: Path) -> None:
    """The key works when the request is checked, and is gone when the rotation runs."""
    with rotation_held(api.store):
        r = api.call("PUT", body=region_specs({"us": "local:///stranger"}, principal="ops"))
        assert r.status_code == 200, r.text
        for info in (r.json(), api.get()):
            us = info["region_infos"][0]
            assert us["status"] == "ROTATING"
            assert [(k["spec"]["uri"], k["spec"]["auth_principal"], k["status"]) for k in us["key_infos"]] == [
                ("local:///east", "", "ENABLED"),
                ("local:///stranger", "ops", "ROTATING"),
            ]
        (_keyring / "stranger.key").rename(_keyring / "stranger.key.away")
    info = api.settle()
    us, eu = info["region_infos"]
    assert info["status"] == "ROTATE_FAILED" and (us["status"], eu["status"]) == ("ROTATE_FAILED", "ENABLED")
    current, failed = us["key_infos"]
    assert (current["spec"]["uri"], current["status"], current["user_message"]) == ("local:///east", "ENABLED", "")
    assert (failed["spec"]["uri"], failed["status"]) == ("local:///stranger", "ROTATE_FAILED")
    assert failed["user_message"].startswith('local KMS key "stranger" not found in keyring')
    assert len(table_rows(open_store(api.store), "bank", "accounts")) == 200  # still wrapped by the old key
    # the failure is on disk: a new server shows it the same way
    assert [k["status"] for k in StoreService(api.store).info().model_dump()["region_infos"][0]["key_infos"]] == [
        "ENABLED",
        "ROTATE_FAILED",
    ]
    # a later rotation that works clears the failure; the old key is a past one, DISABLED
    (_keyring / "stranger.key.away").rename(_keyring / "stranger.key")
    api.call("PUT", body=region_specs({"us": "local:///stranger"}))
    info = api.settle()
    assert statuses(info) == {"us": "ENABLED", "eu": "ENABLED"}
    new, old = info["region_infos"][0]["key_infos"]
    assert (new["spec"]["uri"], new["status"], old["spec"]["uri"], old["status"]) == (
        "local:///stranger",
        "ENABLED",
        "local:///east",
        "DISABLED",
    )
    assert old["created_at"] <= old["updated_at"] and new["created_at"] >= old["created_at"]


def test_key_history_lists_every_past_key_newest_first_and_survives_a_restart(api: Api) -> None:
    for uri in ("local:///west", "local:///stranger", "local:///east"):
        api.call("PUT", body=region_specs({"eu": uri}))
        assert statuses(api.settle())["eu"] == "ENABLED"
    eu = api.get()["region_infos"][1]
    shown = [(k["spec"]["uri"], k["status"]) for k in eu["key_infos"]]
    assert shown == [
        ("local:///east", "ENABLED"),
        ("local:///stranger", "DISABLED"),
        ("local:///west", "DISABLED"),  # it was eu's key before this test's first PUT, which kept it
    ]
    with serving(api.store) as again:
        assert again.get()["region_infos"][1]["key_infos"] == eu["key_infos"]


def test_the_current_uri_means_a_new_version_of_the_same_key(api: Api) -> None:
    before = {st.region: st.store_key_id for st in open_store(api.store).encryption_status()}
    api.call("PUT", body=region_specs({"us": "local:///east", "eu": "local:///west"}))
    assert statuses(api.settle()) == {"us": "ENABLED", "eu": "ENABLED"}
    store = open_store(api.store)
    assert {st.region: st.store_key_id for st in store.encryption_status()} == before  # re-wrapped, not replaced
    rewraps = [(a.region, a.operation, a.key) for a in store.audit_records() if a.purpose == "rotate CMEK"]
    assert ("us", "encrypt", "local:///east") in rewraps and ("eu", "encrypt", "local:///west") in rewraps


def test_revoke_then_re_enable(api: Api) -> None:
    r = api.call("PATCH", body={"action": "REVOKE"})
    assert (r.status_code, r.json()["status"]) == (200, "REVOKING")
    info = api.settle()
    assert info["status"] == "REVOKED" and statuses(info) == {"us": "REVOKED", "eu": "REVOKED"}
    with pytest.raises(KMSError, match=r'^region "us" cannot start: its CMEK local:///east was revoked \('):
        Store.open(api.store)
    # the server keeps answering: status, and the encryption status without data keys
    r = api.call("GET", f"/api/v1/clusters/{api.cluster_id}/encryption-status")
    assert r.status_code == 200
    assert [(s["status"], s["active_data_key_id"], s["data_keys"]) for s in r.json()] == [("REVOKED", None, [])] * 2
    # re-enabling with keys the store can use opens it again, data intact
    r = api.call("POST", body=region_specs({"us": "local:///stranger", "eu": "local:///west"}))
    assert (r.status_code, r.json()["status"]) == (200, "ENABLING")
    info = api.settle()
    assert statuses(info) == {"us": "ENABLED", "eu": "ENABLED"}
    # us has a new key: the revoked one is a past key, still REVOKED; eu took its key back
    assert [(k["spec"]["uri"], k["status"]) for k in info["region_infos"][0]["key_infos"]] == [
        ("local:///stranger", "ENABLED"),
        ("local:///east", "REVOKED"),
    ]
    assert [(k["spec"]["uri"], k["status"]) for k in info["region_infos"][1]["key_infos"]] == [
        ("local:///west", "ENABLED")
    ]
    store = open_store(api.store)
    assert len(table_rows(store, "bank", "accounts")) == 200
    r = api.call("GET", f"/api/v1/clusters/{api.cluster_id}/encryption-status")
    assert [s["status"] for s in r.json()] == ["ENABLED", "ENABLED"] and r.json()[0]["data_keys"]


def test_a_server_started_on_a_revoked_store_reports_and_re_enables_it(cmek_store: Path) -> None:
    open_store(cmek_store).revoke_cmek()
    with serving(cmek_store) as api:
        assert api.get()["status"] == "REVOKED"
        api.call("PUT", body=region_specs({"us": "local:///east"}))
        assert statuses(api.settle()) == {"us": "ENABLED", "eu": "REVOKED"}
        api.call("PUT", body=region_specs({"eu": "local:///west"}))
        assert statuses(api.settle()) == {"us": "ENABLED", "eu": "ENABLED"}
    assert len(table_rows(open_store(cmek_store), "bank", "accounts")) == 200


def test_a_failure_the_store_cannot_record_is_shown_until_the_keys_change(cmek_store: Path, _keyring: Path) -> None:
    """Re-enabling a revoked region needs its old key to unwrap the store key; without it, ENABLE_FAILED."""
    open_store(cmek_store).revoke_cmek()
    (_keyring / "west.key").rename(_keyring / "west.key.away")
    with serving(cmek_store) as api:
        api.call("POST", body=region_specs({"us": "local:///east", "eu": "local:///stranger"}))
        info = api.settle()
        eu = info["region_infos"][1]
        assert info["status"] == "ENABLE_FAILED" and eu["status"] == "ENABLE_FAILED"
        current, requested = eu["key_infos"]  # the revoked key still wraps the region's store key
        assert (current["spec"]["uri"], current["status"]) == ("local:///west", "REVOKED")
        assert (requested["spec"]["uri"], requested["status"]) == ("local:///stranger", "ENABLE_FAILED")
        assert requested["user_message"].startswith(
            'cannot open region "eu": its CMEK local:///west cannot decrypt the store key: local KMS key "west" '
            "not found in keyring"
        )
        (_keyring / "west.key.away").rename(_keyring / "west.key")
        api.call("PUT", body=region_specs({"eu": "local:///stranger"}))
        assert statuses(api.settle()) == {"us": "ENABLED", "eu": "ENABLED"}


# -- the other endpoints -----------------------------------------------------------------------------------


def test_encryption_status_and_audit(api: Api) -> None:
    r = api.call("GET", f"/api/v1/clusters/{api.cluster_id}/encryption-status")
    us, eu = r.json()
    assert (us["region"], us["status"], us["key_type"], us["key_uri"]) == (
        "us",
        "ENABLED",
        "LOCAL_KEY_FILE",
        "local:///east",
    )
    [dk] = us["data_keys"]
    assert dk["active"] and dk["files"] == 1 and dk["bytes"] > 0 and dk["key_id"] == us["active_data_key_id"]
    assert "key" not in dk and eu["data_keys"][0]["files"] == 0
    records = api.call("GET", api.cmek + "/audit").json()
    assert {(a["region"], a["purpose"]) for a in records} >= {("us", "create store key"), ("eu", "open store")}
    last = api.call("GET", api.cmek + "/audit?limit=1").json()
    assert last == records[-1:]
    assert api.call("GET", api.cmek + "/audit?limit=0").status_code == 400


def test_no_secret_in_responses_logs_or_audit(
    tmp_path: Path, aws_kms: AwsKmsServer, caplog: pytest.LogCaptureFixture
) -> None:
    key, other = aws_kms.create_key(), aws_kms.create_key()
    secret = aws_kms.secret
    store = init_store(tmp_path / "aws", regions=("us-east-1",), cmek=aws_kms.uri(key.key_id))
    caplog.set_level(logging.INFO)
    bodies = []
    with serving(store.path) as api:
        info = api.get()
        shown = info["region_infos"][0]["key_infos"][0]["spec"]["uri"]
        assert "AWS_SECRET_ACCESS_KEY=redacted" in shown
        # the redacted URI GET shows names the same key: a new version of it
        bodies.append(api.call("PUT", body=region_specs({"us-east-1": shown}, key_type="AWS_KMS")).text)
        assert statuses(api.settle()) == {"us-east-1": "ENABLED"}
        assert aws_kms.calls["Encrypt"] == 3  # created, probed, then re-wrapped with the same key
        assert [k["spec"]["uri"] for k in api.get()["region_infos"][0]["key_infos"]] == [shown]  # no new key
        aws_kms.deny = True  # a rotation to another key that the KMS refuses: 400 at once
        refused = api.call("PUT", body=region_specs({"us-east-1": aws_kms.uri(other.key_id)}, "AWS_KMS"))
        bodies.append(refused.text)
        assert refused.status_code == 400 and "is not authorized to perform: kms:Encrypt" in refused.json()["message"]
        aws_kms.deny = False
        # one the KMS refuses only once the rotation runs: ROTATE_FAILED, with the KMS's words
        with rotation_held(api.store):
            r = api.call("PUT", body=region_specs({"us-east-1": aws_kms.uri(other.key_id)}, "AWS_KMS"))
            assert r.status_code == 200, r.text
            bodies.append(r.text)
            aws_kms.deny = True
        failed = api.settle()
        bodies.append(repr(failed))
        assert failed["status"] == "ROTATE_FAILED"
        assert "is not authorized to perform: kms:Encrypt" in failed["region_infos"][0]["key_infos"][1]["user_message"]
        aws_kms.deny = False
        bad = aws_kms.uri(other.key_id).replace("aws:", "gs:")
        bodies.append(api.call("PUT", body=region_specs({"us-east-1": bad}, "AWS_KMS")).text)
        for path in ("/audit", ""):
            bodies.append(api.call("GET", api.cmek + path).text)
        bodies.append(api.call("GET", f"/api/v1/clusters/{api.cluster_id}/encryption-status").text)
    audit = (store.path / "audit.log").read_text()
    assert "rotate CMEK" in audit and ACTOR in audit
    for text in [*bodies, caplog.text, audit]:
        assert secret not in text and secret.replace("+", "%2B") not in text and TOKEN not in text
    assert "CMEK rotate failed" in caplog.text and "PUT /api/v1/clusters/" in caplog.text


def test_a_vault_cmek_rotates_through_the_api_without_showing_its_credentials(
    tmp_path: Path, vault: VaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    from strongroom.kms.vault import key_version

    vault.create_key("api-cmek")
    store = init_store(tmp_path / "vault", regions=("us",), cmek=vault.uri("api-cmek", approle=True))
    caplog.set_level(logging.INFO)
    with serving(store.path) as api:
        info = api.get()
        spec = info["region_infos"][0]["key_infos"][0]["spec"]
        assert spec["type"] == "HASHICORP_VAULT" and "VAULT_SECRET_ID=redacted" in spec["uri"]
        vault.admin().secrets.transit.rotate_key("api-cmek", mount_point="transit")
        # Cloud's PUT with the URI GET showed: the same key, re-wrapped under its new version.
        body = api.call("PUT", body=region_specs({"us": spec["uri"]}, key_type="HASHICORP_VAULT")).text
        assert statuses(api.settle()) == {"us": "ENABLED"}
        shown = [body, api.call("GET", api.cmek).text, api.call("GET", api.cmek + "/audit").text]
    assert key_version(open_store(store.path).region_keys("us").spec.wrapped_store_key) == 2
    issued = [t for t in vault.tokens if t != vault.ROOT_TOKEN]
    for text in [*shown, caplog.text, (store.path / "audit.log").read_text()]:
        assert not any(secret in text for secret in (vault.SECRET_ID, *issued))


# -- key specs as Cloud writes them ----------------------------------------------------------------------------


def test_an_aws_key_arn_uses_the_servers_credentials(
    plain_api: Api, aws_kms: AwsKmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws_kms.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_kms.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", aws_kms.url)  # boto3's own per-service endpoint setting
    us, eu = aws_kms.create_key("us-east-1"), aws_kms.create_key("eu-west-1")
    r = plain_api.call("POST", body={"region_specs": [
        {"region": "us", "key_spec": {"type": "AWS_KMS", "uri": us.arn, "auth_principal": "arn:aws:iam::1:role/r"}},
        {"region": "eu", "key_spec": {"type": "AWS_KMS", "uri": eu.arn, "auth_principal": "arn:aws:iam::1:role/r"}},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    info = plain_api.settle()
    assert statuses(info) == {"us": "ENABLED", "eu": "ENABLED"}
    # as the Terraform provider reads it back: the key whose uri is exactly the one it sent
    for region, key in (("us", us), ("eu", eu)):
        [found] = [
            k
            for r in info["region_infos"]
            if r["region"] == region
            for k in r["key_infos"]
            if k["spec"]["uri"] == key.arn
        ]
        assert found["spec"] == {"type": "AWS_KMS", "uri": key.arn, "auth_principal": "arn:aws:iam::1:role/r"}
        assert found["status"] == "ENABLED"
    assert aws_kms.calls["Encrypt"] == 4  # per region: the probe, then the store key's wrap
    store_keys = [st.store_key_id for st in open_store(plain_api.store).encryption_status()]
    assert [st.key_type for st in open_store(plain_api.store).encryption_status()] == ["AWS_KMS", "AWS_KMS"]
    # the same ARN again (Terraform re-applying its plan) is a new version of the same key, not a new key
    r = plain_api.call("PUT", body={"region_specs": [
        {"region": "eu", "key_spec": {"type": "AWS_KMS", "uri": eu.arn, "auth_principal": "arn:aws:iam::1:role/r"}},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    info = plain_api.settle()
    assert [k["spec"]["uri"] for k in info["region_infos"][1]["key_infos"]] == [eu.arn]
    assert [st.store_key_id for st in open_store(plain_api.store).encryption_status()] == store_keys


def test_cloud_key_ids_become_kms_uris() -> None:
    def uri(key_type: str, value: str) -> str:
        return kms_uri(CMEKKeySpecification(type=CMEKKeyType(key_type), uri=value))

    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert uri("AWS_KMS", arn) == f"aws:///{arn}?AUTH=implicit&REGION=us-east-1"
    gcp = "projects/p/locations/us-east1/keyRings/r/cryptoKeys/k"
    assert uri("GCP_CLOUD_KMS", gcp) == f"gs:///{gcp}?AUTH=implicit"
    ours = "azure-kms:///k/1?AZURE_VAULT_NAME=v&AUTH=implicit"
    assert uri("AZURE_KEY_VAULT", ours) == ours
    assert uri("NULL_KMS", "") == ""
    # without a type, the URI's own (what a client generated from Cloud's spec may send)
    assert kms_uri(CMEKKeySpecification(uri=arn)) == f"aws:///{arn}?AUTH=implicit&REGION=us-east-1"
    assert kms_uri(CMEKKeySpecification(uri=ours)) == ours
    # the store keeps what the client wrote beside the KMS URI it uses, and shows that back
    for given in (arn, gcp):
        spec = cmek_spec(CMEKKeySpecification(uri=given, auth_principal="p"))
        assert (spec.given_uri, spec.shown, spec.auth_principal) == (given, given, "p") and spec.uri != given
    secret = "aws:///k?AUTH=specified&REGION=us-east-1&AWS_ACCESS_KEY_ID=AKIA1&AWS_SECRET_ACCESS_KEY=s3cr3t-value-long"
    spec = cmek_spec(CMEKKeySpecification(uri=secret))
    assert spec.uri == secret and spec.given_uri == "" and "s3cr3t" not in spec.shown + repr(spec)
    with pytest.raises(Exception, match=r"^key_spec.type is GCP_CLOUD_KMS but 'arn:aws:kms:us-east-1:"):
        uri("GCP_CLOUD_KMS", arn)


def test_each_region_has_its_own_auth_principal(plain_api: Api) -> None:
    body = {
        "region_specs": [
            *region_specs({"us": "local:///east"}, principal="role-us")["region_specs"],
            *region_specs({"eu": "local:///west"}, principal="role-eu")["region_specs"],
        ]
    }
    assert plain_api.call("POST", body=body).status_code == 200
    info = plain_api.settle()
    assert {r["region"]: r["key_infos"][0]["spec"]["auth_principal"] for r in info["region_infos"]} == {
        "us": "role-us",
        "eu": "role-eu",
    }
    assert [st.auth_principal for st in open_store(plain_api.store).encryption_status()] == ["role-us", "role-eu"]


def test_key_spec_type_may_be_left_out_and_is_taken_from_the_uri(api: Api) -> None:
    r = api.call("PUT", body={"region_specs": [{"region": "us", "key_spec": {"uri": "local:///west"}}]})
    assert r.status_code == 200, r.text
    info = api.settle()
    assert info["region_infos"][0]["key_infos"][0]["spec"] == {
        "type": "LOCAL_KEY_FILE",
        "uri": "local:///west",
        "auth_principal": "",
    }


def test_a_region_without_cmek_is_disabled_with_no_key_in_cockroach_clouds_own_values(plain_api: Api) -> None:
    r = plain_api.call("GET")
    assert r.json() == {
        "status": "DISABLED",
        "region_infos": [
            {"region": "us", "status": "DISABLED", "key_infos": []},
            {"region": "eu", "status": "DISABLED", "key_infos": []},
        ],
    }
    # the local key file wrapping each store key is no CMEK: nothing outside Cloud's enums is shown
    assert not uses_our_key_types(r.content) and check_official(r.request, r)


def test_a_store_on_official_key_types_answers_only_official_values(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    key, other = aws_kms.create_key(), aws_kms.create_key()
    store = init_store(tmp_path / "aws", regions=("us-east-1",), cmek=aws_kms.uri(key.key_id))
    with serving(store.path) as api:
        answers = [api.call("GET")]
        answers.append(api.call("PUT", body=region_specs({"us-east-1": aws_kms.uri(other.key_id)}, "AWS_KMS")))
        api.settle()
        answers += [api.call("GET"), api.call("GET", f"/api/v1/clusters/{api.cluster_id}")]
        for r in answers:
            assert r.status_code == 200 and not uses_our_key_types(r.request.content, r.content), r.text
            assert check_official(r.request, r)  # Cloud's enums as published
        assert [k["status"] for k in answers[2].json()["region_infos"][0]["key_infos"]] == ["ENABLED", "DISABLED"]


def test_the_cluster_resource_has_clouds_fields_a_store_can_fill(api: Api) -> None:
    path = f"/api/v1/clusters/{api.cluster_id}"
    cluster = api.call("GET", path).json()
    assert cluster == {
        "id": api.cluster_id,
        "name": "store",
        "state": "CREATED",
        "operation_status": "UNSPECIFIED",
        "regions": [
            {"name": r, "sql_dns": "", "ui_dns": "", "internal_dns": "", "private_endpoint_dns": "", "node_count": 0}
            for r in ("us", "eu")
        ],
        "created_at": open_store(api.store, unlock=False).meta.doc["created"],
        "cockroach_version": "",
        "creator_id": "",
        "cidr_range": "",
        "config": {},
        "labels": {},
        "is_customer_cloud_account": False,
    }
    # Cloud's required fields that have no true value for a store are the only ones left out
    required = set(official_document()["components"]["schemas"]["Cluster"]["required"])
    assert required - set(cluster) == set(UNTRUE_FOR_A_STORE["Cluster"]) == {"plan", "cloud_provider", "upgrade_status"}
    with rotation_held(api.store):  # a CMEK change locks the cluster, as Cloud's exclusive operations do
        assert api.call("PUT", body=region_specs({"us": "local:///west"})).status_code == 200
        during = api.call("GET", path).json()
        assert (during["state"], during["operation_status"]) == ("LOCKED", "CRDB_CMEK_OPERATION_RUNNING")
    api.settle()
    after = api.call("GET", path).json()
    assert (after["state"], after["operation_status"]) == ("CREATED", "UNSPECIFIED")
    r = api.call("GET", "/api/v1/clusters/other")
    assert (r.status_code, r.json()) == (404, {"code": 404, "message": 'cluster "other" not found', "details": []})


def test_an_unexpected_error_is_500_with_clouds_status_body(cmek_store: Path) -> None:
    with serving(cmek_store) as api:
        [key_file] = (cmek_store / "keys" / "eu").glob("KEYS-*")
        key_file.write_text("{ not json")  # a damaged key file: the server's problem, not the client's
        r = api.call("GET")
        assert (r.status_code, r.json()) == (
            500,
            {"code": 500, "message": "internal error (JSONDecodeError); see the server's log", "details": []},
        )


def test_key_files_written_before_key_history_still_load(cmek_store: Path) -> None:
    folder = cmek_store / "keys" / "us"
    [name] = [n.name for n in folder.glob("KEYS-*")]
    doc = json.loads((folder / name).read_text())
    for added in ("given_uri", "key_since", "key_status", "key_history"):
        del doc[added]
    (folder / name).write_text(json.dumps(doc))
    with serving(cmek_store) as api:
        [key] = api.get()["region_infos"][0]["key_infos"]
        assert (key["spec"]["uri"], key["status"], key["created_at"]) == (
            "local:///east",
            "ENABLED",
            doc["cmek_enabled_at"],
        )
        api.call("PUT", body=region_specs({"us": "local:///west"}))
        assert [k["spec"]["uri"] for k in api.settle()["region_infos"][0]["key_infos"]] == [
            "local:///west",
            "local:///east",
        ]


# -- the scheduler -------------------------------------------------------------------------------------------------


def test_scheduler_rotates_due_data_keys_and_survives_failures(
    tmp_path: Path, keys: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import timedelta

    store = init_store(tmp_path / "due", cmek=keys[0], rotation_period=timedelta(seconds=3))
    fill_bank(store, accounts=50)
    service = StoreService(store.path)
    scheduler = Scheduler(service, 3600)
    first = store.encryption_status()[0].active_data_key_id
    time.sleep(3.05)
    scheduler.run_once()
    now = open_store(store.path).encryption_status()[0]
    assert now.active_data_key_id != first and [dk.files for dk in now.data_keys if dk.active] == [1]
    [backup] = open_store(store.path).managed_backups()  # the first tick also takes the first managed backup
    assert backup.backup_type == "full"
    scheduler.run_once()  # not due again (the new key is younger than 3 s): nothing happens
    assert open_store(store.path).encryption_status()[0].active_data_key_id == now.active_data_key_id
    # a revoked store: the tick logs and returns, the loop goes on
    open_store(store.path).revoke_cmek()
    caplog.set_level(logging.WARNING, "strongroom.server")
    scheduler.run_once()
    assert 'scheduled data key rotation failed: region "local": its CMEK local:///east was revoked' in caplog.text
    assert "scheduled managed backups failed: " in caplog.text


# -- strongroom serve, end to end ------------------------------------------------------------------------------------


def _serve(store: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "strongroom.cli", "serve", "--store", str(store), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def _up(base: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def test_strongroom_serve_makes_a_token_rotates_on_schedule_and_serves_cmek(
    tmp_path: Path, keys: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    monkeypatch.delenv("STRONGROOM_API_TOKEN", raising=False)
    store = init_store(tmp_path / "served", regions=("us", "eu"), rotation_period=timedelta(seconds=2))
    fill_bank(store, accounts=100)
    first = store.encryption_status()[0].active_data_key_id
    proc, base = _serve(store.path, "--schedule-interval", "1")
    try:
        assert wait_until(_up(base), 20), proc.poll()
        token_file = store.path / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        cmek = f"/api/v1/clusters/{store.id}/cmek"
        client = official_client(base)
        assert client.get(cmek).status_code == 401
        r = client.post(cmek, headers=headers, json=region_specs({"us": "local:///east", "eu": "local:///west"}))
        assert (r.status_code, r.json()["status"]) == (200, "ENABLING")
        assert wait_until(lambda: client.get(cmek, headers=headers).json()["status"] == "ENABLED", 10)

        def rotated() -> bool:
            status = client.get(f"/api/v1/clusters/{store.id}/encryption-status", headers=headers).json()
            return status[0]["active_data_key_id"] != first and status[0]["data_keys"][-1]["files"] == 1

        assert wait_until(rotated, 20)  # the scheduler's doing: the period is 2 s, the tick 1 s
        client.close()
    finally:
        out = _stop(proc)
    assert f"made an API token in {token_file} (mode 0600)" in out
    assert token not in out and "rotated the data key of region us" in out
    assert "took a full managed backup of region us" in out
    assert MARKER not in out
    assert len(table_rows(open_store(store.path), "bank", "accounts")) == 100


def test_strongroom_serve_takes_its_token_from_the_environment_or_a_file(cmek_store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    for args, env, token in [
        ((), {"STRONGROOM_API_TOKEN": "from-the-env"}, "from-the-env"),
        (("--token-file", str(token_file)), {"STRONGROOM_API_TOKEN": "not-this"}, "from-a-file"),
    ]:
        proc, base = _serve(cmek_store, *args, env=env)
        try:
            assert wait_until(_up(base), 20)
            cmek = f"/api/v1/clusters/{open_store(cmek_store, unlock=False).id}/cmek"
            with official_client(base) as client:
                assert client.get(cmek, headers={"Authorization": f"Bearer {token}"}).json()["status"] == "ENABLED"
        finally:
            out = _stop(proc)
        assert token not in out
    assert not (cmek_store / "api-token").exists()
