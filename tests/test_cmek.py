"""CMEK on a store: the seed's "How CMEK works" and "Rotation of a CMEK key", paragraph by paragraph.

Every KMS here speaks its real protocol (tests/kms_servers.py): the AWS and GCP servers enforce key
states and count calls, Azure Key Vault and HashiCorp Vault run over HTTPS, PKCS#11 is SoftHSM2.
Tests named ``test_seed_*`` are the seed's sentences; the others are the key hierarchy, "no key, no
start" on every scheme, and the status report and audit log.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from conftest import MARKER, table_rows

from strongroom import Store
from strongroom.cli import main
from strongroom.errors import EncryptionError, KMSError, UsageError
from strongroom.kms.vault import key_version
from strongroom.sqlite.connect import connect
from strongroom.store import RegionStatus
from strongroom.store.audit import acting_as
from strongroom.uri import redact

if TYPE_CHECKING:
    from kms_servers import AwsKey, AwsKmsServer, AzureKeyVaultServer, GcpKmsServer, SoftHSM, VaultServer

pytest_plugins = ("kms_servers",)  # the KMS protocol servers

REGIONS = ("east", "west")
SESSION_TOKEN = "sess-tok-5c1d9e"  # an AWS credential in every AWS CMEK URI: it must never be shown
HSM_PIN = "cmek-pin-7731"  # the token's PIN while a PKCS#11 test runs (restored to the fixture's after)
WRONG_PIN = "changed-pin-0042"  # the token's PIN after "someone changed it" (the store still has HSM_PIN)


# -- helpers -------------------------------------------------------------------------------------------


def aws_cmek(aws_kms: AwsKmsServer, key: AwsKey) -> str:
    return aws_kms.uri(key.key_id, region=key.region, AWS_SESSION_TOKEN=SESSION_TOKEN)


def aws_region_keys(aws_kms: AwsKmsServer) -> tuple[AwsKey, AwsKey, dict[str, str]]:
    """A key per store region, in two AWS regions, and the store's CMEK URIs for them."""
    east, west = aws_kms.create_key("us-east-1"), aws_kms.create_key("us-west-1")
    return east, west, {"east": aws_cmek(aws_kms, east), "west": aws_cmek(aws_kms, west)}


def aws_secrets(aws_kms: AwsKmsServer) -> tuple[str, ...]:
    return (aws_kms.secret, aws_kms.secret.replace("+", "%2B"), SESSION_TOKEN)


def reset_counts(aws_kms: AwsKmsServer) -> None:
    aws_kms.calls.clear()
    aws_kms.decrypted_by.clear()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its mtime (ns) and size."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            st = Path(folder, name).stat()
            out[str(Path(folder, name).relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return out


def without_audit(files: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {name: stat for name, stat in files.items() if name != "audit.log"}


def add_rows(store: Store, db: str, n: int = 40) -> list[tuple[object, ...]]:
    """A table of ``n`` marker rows in ``db`` (created if needed); returns its rows."""
    if not store.has_database(db):
        store.create_database(db)
    conn = store.connect(db)
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    with conn:
        conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"{MARKER}-{db}-{i}",) for i in range(n)])
    conn.close()
    return table_rows(store, db, "notes")


def two_region_store(path: Path, cmek: str | dict[str, str] | None) -> tuple[Store, dict[str, object]]:
    """A store in ``east`` and ``west`` with a database homed in each; returns it and its data."""
    store = Store.init(path, regions=REGIONS, cmek=cmek)
    store.execute('CREATE DATABASE eu PRIMARY REGION "west"')
    data = {"bank": add_rows(store, "bank"), "eu": add_rows(store, "eu")}
    return store, data


def data_of(store: Store) -> dict[str, object]:
    return {db: table_rows(store, db, "notes") for db in ("bank", "eu")}


def open_error(path: Path) -> str:
    with pytest.raises(KMSError) as exc:
        Store.open(path)
    return str(exc.value)


def cannot_open(region: str, what: str, uri: str, detail: str) -> str:
    """The message of a store that cannot unwrap a region's store key."""
    return f'cannot open region "{region}": its {what} {redact(uri)} cannot decrypt the store key: {detail}'


def region_status(store: Store, region: str) -> RegionStatus:
    return next(st for st in store.encryption_status() if st.region == region)


def files_by_key(store: Store, region: str) -> dict[str, tuple[int, bool]]:
    """Data key id -> (files it encrypts, active) from the status report."""
    st = region_status(store, region)
    return {k.key_id: (k.files, k.active) for k in st.data_keys}


@pytest.fixture
def hsm(softhsm: SoftHSM) -> Iterator[SoftHSM]:
    """The SoftHSM token with a long PIN of its own (so "the PIN is not shown" means something)."""
    import pkcs11

    set_hsm_pin(softhsm, softhsm.pin, HSM_PIN)
    old, softhsm.pin = softhsm.pin, HSM_PIN
    try:
        yield softhsm
    finally:
        softhsm.pin = old
        for current in (HSM_PIN, WRONG_PIN):  # a test may have left the token with the wrong PIN
            try:
                set_hsm_pin(softhsm, current, old)
                break
            except pkcs11.exceptions.PinIncorrect:
                continue


def hsm_session(softhsm: SoftHSM, pin: str) -> AbstractContextManager[Any]:
    import pkcs11
    from kms_servers import SOFTHSM_MODULE  # here: pytest loads kms_servers as a plugin first

    token = pkcs11.lib(SOFTHSM_MODULE).get_token(token_label=softhsm.token)
    return token.open(user_pin=pin, rw=True)


def set_hsm_pin(softhsm: SoftHSM, old: str, new: str) -> None:
    with hsm_session(softhsm, old) as session:
        session.set_pin(old, new)


def destroy_hsm_key(softhsm: SoftHSM, label: str) -> None:
    with hsm_session(softhsm, softhsm.pin) as session:
        session.get_key(label=label).destroy()


# -- 2. the key hierarchy ------------------------------------------------------------------------------


def test_one_kms_decrypt_per_region_at_open_and_none_after(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    east, west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(tmp_path / "s", cmek)
    # Init wraps each region's store key once and proves the wrap unwraps.
    assert aws_kms.calls == {"Encrypt": 2, "Decrypt": 2}
    store.close()
    reset_counts(aws_kms)
    reopened = Store.open(tmp_path / "s")
    assert aws_kms.calls == {"Decrypt": 2}
    assert aws_kms.decrypted_by == {(east.key_id, 1): 1, (west.key_id, 1): 1}
    assert data_of(reopened) == data  # databases of both regions open with no further KMS call
    add_rows(reopened, "eu")
    reopened.create_database("more")
    assert aws_kms.calls == {"Decrypt": 2}


def test_init_per_region_cmek_from_the_cli(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    east, _west, cmek = aws_region_keys(aws_kms)
    east_uri, west_uri = cmek["east"], cmek["west"]
    args = ["init", str(tmp_path / "s"), "--region", "east", "--region", "west"]
    result = CliRunner().invoke(main, [*args, "--cmek", f"east={east_uri}", "--cmek", f"west={west_uri}"])
    assert result.exit_code == 0, result.output
    store = Store.open(tmp_path / "s")
    assert result.output.splitlines()[1:] == [
        f"region east: store key wrapped by CMEK {redact(east_uri)}",
        f"region west: store key wrapped by CMEK {redact(west_uri)}",
    ]
    assert all(secret not in result.output for secret in aws_secrets(aws_kms))
    assert [(st.region, st.cmek, st.key_type, st.key_uri) for st in store.encryption_status()] == [
        ("east", True, "AWS_KMS", redact(east_uri)),
        ("west", True, "AWS_KMS", redact(west_uri)),
    ]
    # Each region's store key is wrapped by its own CMEK: the west key alone cannot open east.
    east.state = "Disabled"
    assert open_error(tmp_path / "s").startswith(f'cannot open region "east": its CMEK {redact(east_uri)} ')


def test_a_databases_home_region_decides_its_keys(tmp_path: Path, keys: tuple[str, str, str]) -> None:
    east_uri, west_uri, _ = keys
    store, _data = two_region_store(tmp_path / "s", {"east": east_uri, "west": west_uri})
    store.execute('CREATE DATABASE eu2 PRIMARY REGION "west"')
    assert [(db, store.home_region(db)) for db in store.databases()] == [
        ("bank", "east"),
        ("eu", "west"),
        ("eu2", "west"),
    ]
    east_active = region_status(store, "east").active_data_key_id
    west_active = region_status(store, "west").active_data_key_id
    assert files_by_key(store, "east") == {east_active: (1, True)}
    assert files_by_key(store, "west") == {west_active: (2, True)}
    # The keys really differ: east's data key does not open a west database.
    with pytest.raises(EncryptionError, match="wrong key or cipher"):
        connect(store.database_path("eu"), key=store.database_key("bank"), readonly=True)
    # Rotating west's data key re-keys exactly the databases homed in west.
    assert store.rotate_data_keys(region="west") == {"west": ["eu", "eu2"]}
    assert files_by_key(store, "east") == {east_active: (1, True)}


def test_one_cmek_shared_by_several_regions(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    key = aws_kms.create_key()
    uri = aws_cmek(aws_kms, key)
    store = Store.init(tmp_path / "s", regions=("a", "b", "c"), cmek=uri)
    for region in ("a", "b", "c"):
        store.execute(f'CREATE DATABASE db_{region} PRIMARY REGION "{region}"')
        add_rows(store, f"db_{region}")
    statuses = store.encryption_status()
    assert {st.key_uri for st in statuses} == {redact(uri)}
    assert len({st.store_key_id for st in statuses}) == 3  # one key wraps three distinct store keys
    store.close()
    reset_counts(aws_kms)
    reopened = Store.open(tmp_path / "s")
    assert aws_kms.calls == {"Decrypt": 3} and aws_kms.decrypted_by == {(key.key_id, 1): 3}
    assert [len(table_rows(reopened, f"db_{r}", "notes")) for r in ("a", "b", "c")] == [40, 40, 40]
    key.state = "Disabled"
    assert open_error(tmp_path / "s") == cannot_open(
        "a", "CMEK", uri, f'AWS KMS key "{key.key_id}" (us-east-1): Decrypt: DisabledException: {key.arn} is disabled.'
    )


# -- 3. no key, no start --------------------------------------------------------------------------------


@dataclass
class BrokenKey:
    """One way a region's key becomes unusable, on one KMS scheme."""

    cmek: str | None  # the west region's CMEK (None: a store without CMEK, its local key file breaks)
    secrets: tuple[str, ...]  # credentials in the URI that no message may show
    break_key: Callable[[], None]
    restore: Callable[[], None] | None  # None: the key is gone for good
    detail: Callable[[Store], str]  # the KMS's own error, after "cannot decrypt the store key: "


def local_key_file_deleted(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
    ring = Path(os.environ["STRONGROOM_KEYRING"])
    aside = tmp_path / "key-file-copy"

    def break_key() -> None:
        (key_file,) = ring.glob("strongroom-store-*.key")
        aside.mkdir()
        shutil.move(key_file, aside / key_file.name)

    def restore() -> None:
        for copy in aside.iterdir():
            shutil.move(copy, ring / copy.name)

    def detail(store: Store) -> str:
        name = f"strongroom-store-{store.id}"
        return (
            f'local KMS key "{name}" not found in keyring {ring} '
            "(restore the key file from a copy (a new key cannot decrypt what it encrypted))"
        )

    return BrokenKey(None, (), break_key, restore, detail)


def aws_case(state: str | None) -> Callable[[pytest.FixtureRequest, Path], BrokenKey]:
    """AWS: the key Disabled or PendingDeletion, or (state None) access to it denied."""

    def case(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
        aws_kms: AwsKmsServer = request.getfixturevalue("aws_kms")
        key = aws_kms.create_key("us-west-2")

        def break_key() -> None:
            if state is None:
                aws_kms.deny = True
            else:
                key.state = state

        def restore() -> None:
            key.state, aws_kms.deny = "Enabled", False

        refusal = {
            "Disabled": f"DisabledException: {key.arn} is disabled.",
            "PendingDeletion": f"KMSInvalidStateException: {key.arn} is pending deletion.",
            None: f"AccessDeniedException: User: arn:aws:iam::111122223333:user/test is not authorized to "
            f"perform: kms:Decrypt on resource: {key.arn}",
        }[state]
        detail = f'AWS KMS key "{key.key_id}" (us-west-2): Decrypt: {refusal}'
        return BrokenKey(aws_cmek(aws_kms, key), aws_secrets(aws_kms), break_key, restore, lambda _s: detail)

    return case


def gcp_case(how: str) -> Callable[[pytest.FixtureRequest, Path], BrokenKey]:
    """GCP: the key's version disabled or destroyed, or the key missing (deleted, or no longer visible)."""

    def case(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
        gcp_kms: GcpKmsServer = request.getfixturevalue("gcp_kms")
        name = gcp_kms.create_key(location="us-west1", key="west-cmek")
        key = gcp_kms.keys[name]

        def break_key() -> None:
            if how == "missing":
                del gcp_kms.keys[name]
            elif how == "DESTROYED":
                key.destroy(1)
            else:
                key.versions[1].state = how

        def restore() -> None:
            gcp_kms.keys[name] = key
            key.versions[1].state = "ENABLED"

        refusal = (
            f"NOT_FOUND: {name} not found."
            if how == "missing"
            else f"FAILED_PRECONDITION: {name}/cryptoKeyVersions/1 is not enabled, current state is: {how}."
        )
        detail = f'GCP KMS key "{name}": failed to decrypt: {refusal}'
        return BrokenKey(
            gcp_kms.uri(name),
            ("test-bearer-token",),
            break_key,
            None if how == "DESTROYED" else restore,
            lambda _s: detail,
        )

    return case


def azure_case(how: str) -> Callable[[pytest.FixtureRequest, Path], BrokenKey]:
    """Azure Key Vault: the key disabled, or deleted (and recovered from soft-delete)."""

    def case(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
        vault: AzureKeyVaultServer = request.getfixturevalue("azure_kv")
        key = vault.create_key("west-cmek")

        def break_key() -> None:
            if how == "deleted":
                del vault.keys[(key.name, key.version)]
            else:
                key.enabled = False

        def restore() -> None:
            vault.keys[(key.name, key.version)] = key
            key.enabled = True

        refusal = (
            "KeyNotFound: A key with (name/id) west-cmek was not found"
            if how == "deleted"
            else "Forbidden: Operation decrypt is not allowed on a disabled key."
        )
        detail = f'Azure key "west-cmek/{key.version}" in {vault.url}: decrypt: {refusal}'
        secrets = (vault.SECRET, "az%2Bsecret%2Fvalue")
        return BrokenKey(vault.uri(key), secrets, break_key, restore, lambda _s: detail)

    return case


def vault_case(how: str) -> Callable[[pytest.FixtureRequest, Path], BrokenKey]:
    """HashiCorp Vault: key version 1 retired (min_decryption_version), the key deleted, the AppRole's
    policy revoked (permission denied), or Vault sealed."""

    def case(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
        vault: VaultServer = request.getfixturevalue("vault")
        key = vault.create_key("west-cmek")
        transit = vault.admin().secrets.transit

        def break_key() -> None:
            if how == "retired":
                transit.rotate_key("west-cmek", mount_point="transit")
                transit.update_key_configuration("west-cmek", min_decryption_version=2, mount_point="transit")
            elif how == "deleted":
                transit.update_key_configuration("west-cmek", deletion_allowed=True, mount_point="transit")
                transit.delete_key("west-cmek", mount_point="transit")
            elif how == "denied":
                vault.deny = True
            else:
                vault.sealed = True

        def restore() -> None:
            vault.deny = vault.sealed = False
            key.min_decryption_version = 1

        refusal = {
            "retired": "ciphertext or signature version is disallowed by policy (too old): the data key was wrapped "
            "by key version 1, now below the key's min_decryption_version (lower it again to decrypt)",
            "deleted": "encryption key not found (deleted, or never created in this mount and namespace)",
            "denied": "permission denied (the token is invalid or expired, or its policies do not allow update on "
            "transit/decrypt/west-cmek)",
            "sealed": "Vault is sealed (unseal it, then try again)",
        }[how]
        detail = f'Vault key "transit/keys/west-cmek" at {vault.url}: decrypt: {refusal}'
        secrets = (vault.ROOT_TOKEN, vault.SECRET_ID)
        uri = vault.uri("west-cmek", approle=how == "denied")
        return BrokenKey(uri, secrets, break_key, None if how == "deleted" else restore, lambda _s: detail)

    return case


def pkcs11_case(how: str) -> Callable[[pytest.FixtureRequest, Path], BrokenKey]:
    """PKCS#11: the key object deleted from the token, or the token's PIN changed (a wrong PIN)."""

    def case(request: pytest.FixtureRequest, tmp_path: Path) -> BrokenKey:
        hsm: SoftHSM = request.getfixturevalue("hsm")
        label = f"west-cmek-{how}-{os.urandom(4).hex()}"
        hsm.create_key(label)
        uri = hsm.uri(label)

        def break_key() -> None:
            if how == "deleted":
                destroy_hsm_key(hsm, label)
            else:
                set_hsm_pin(hsm, HSM_PIN, WRONG_PIN)

        def restore() -> None:  # the PIN set back to the one in the store's URI
            set_hsm_pin(hsm, WRONG_PIN, HSM_PIN)

        ident = f"pkcs11:token={hsm.token};object={label}"
        refusal = f'no AES key labelled "{label}" in token "{hsm.token}"' if how == "deleted" else "PIN incorrect"
        restorable = None if how == "deleted" else restore
        return BrokenKey(uri, (HSM_PIN,), break_key, restorable, lambda _s: f"{ident}: {refusal}")

    return case


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(local_key_file_deleted, id="local-key-file-deleted"),
        pytest.param(aws_case("Disabled"), id="aws-disabled"),
        pytest.param(aws_case("PendingDeletion"), id="aws-pending-deletion"),
        pytest.param(aws_case(None), id="aws-access-denied"),
        pytest.param(gcp_case("DISABLED"), id="gcp-version-disabled"),
        pytest.param(gcp_case("DESTROYED"), id="gcp-version-destroyed"),
        pytest.param(gcp_case("missing"), id="gcp-key-missing"),
        pytest.param(azure_case("disabled"), id="azure-disabled"),
        pytest.param(azure_case("deleted"), id="azure-deleted"),
        pytest.param(vault_case("retired"), id="vault-version-retired"),
        pytest.param(vault_case("deleted"), id="vault-key-deleted"),
        pytest.param(vault_case("denied"), id="vault-approle-denied"),
        pytest.param(vault_case("sealed"), id="vault-sealed"),
        pytest.param(pkcs11_case("deleted"), id="pkcs11-key-deleted"),
        pytest.param(pkcs11_case("wrong-pin"), id="pkcs11-wrong-pin"),
    ],
)
def test_no_key_no_start(
    make: Callable[[pytest.FixtureRequest, Path], BrokenKey],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    keys: tuple[str, str, str],
) -> None:
    case = make(request, tmp_path)
    east_cmek = keys[0]  # east keeps a working key, so a failed open has unwrapped east already
    cmek = None if case.cmek is None else {"east": east_cmek, "west": case.cmek}
    path = tmp_path / "s"
    store, data = two_region_store(path, cmek)
    store.close()
    failing = "east" if case.cmek is None else "west"  # without CMEK one key file wraps both regions
    what, uri = ("CMEK", case.cmek) if case.cmek else ("store key file", f"local:///strongroom-store-{store.id}")
    records = len(store.audit_records())
    before = snapshot(path)

    case.break_key()
    message = open_error(path)
    assert message == cannot_open(failing, what, uri, case.detail(store))
    assert all(secret not in message for secret in case.secrets)
    after = snapshot(path)
    assert without_audit(after) == without_audit(before)  # the failed open wrote nothing but its audit
    assert after["audit.log"][1] > before["audit.log"][1]
    tried = [(r.region, r.operation, r.purpose, r.result) for r in store.audit_records()[records:]]
    failed = (failing, "decrypt", "open store", f"error: {case.detail(store)}")
    assert tried == ([failed] if failing == "east" else [("east", "decrypt", "open store", "ok"), failed])

    if case.restore is None:  # gone for good: every later start fails the same way
        assert open_error(path) == message
        return
    case.restore()  # the key enabled again (or access restored): the store starts with all its data
    assert data_of(Store.open(path)) == data


def test_deleted_keys_folder_says_encryption_was_used_before(tmp_path: Path) -> None:
    store, _data = two_region_store(tmp_path / "s", None)
    shutil.rmtree(store.keys_dir / "west")
    for unlock in (True, False):
        with pytest.raises(EncryptionError) as exc:
            Store.open(tmp_path / "s", unlock=unlock)
        assert str(exc.value) == (
            'encryption was used on this store before, but no encryption settings were found for region "west" '
            f"({store.keys_dir / 'west'} is empty or missing): restore the store's keys directory"
        )


# -- 4. the seed, "How CMEK works" -----------------------------------------------------------------------

PRINCIPAL = "arn:aws:iam::111122223333:role/strongroom-cmek"


def test_seed_enabling_cmek_has_no_impact_on_a_clusters_existing_data(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    store, data = two_region_store(tmp_path / "s", None)
    files = {db: store.database_path(db).read_bytes() for db in data}
    old = {r: region_status(store, r).active_data_key_id for r in REGIONS}
    _east, _west, cmek = aws_region_keys(aws_kms)
    store.enable_cmek(cmek, auth_principal=PRINCIPAL)
    # Existing databases are neither rewritten nor re-keyed: same bytes, same data key, same rows.
    assert {db: store.database_path(db).read_bytes() for db in data} == files
    assert data_of(store) == data
    for region, db in (("east", "bank"), ("west", "eu")):
        st = region_status(store, region)
        new = st.active_data_key_id
        usage = {k.key_id: (k.files, k.bytes, k.active, k.under_cmek) for k in st.data_keys}
        assert usage == {
            old[region]: (1, len(files[db]), False, False),  # the existing database, under its old data key
            new: (0, 0, True, True),  # the data key for what is written from now on
        }
    # A new database uses the new data key; the status report counts files and bytes under each key.
    add_rows(store, "after")
    new_east = region_status(store, "east").active_data_key_id
    assert files_by_key(store, "east") == {old["east"]: (1, False), new_east: (1, True)}
    after_bytes = {k.key_id: k.bytes for k in region_status(store, "east").data_keys}
    assert after_bytes[new_east] == os.path.getsize(store.database_path("after")) > 0


def test_seed_at_the_time_you_enable_cmek_steps_1_to_4(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    path = tmp_path / "s"
    store, data = two_region_store(path, None)
    before = {r: region_status(store, r) for r in REGIONS}
    east, west, cmek = aws_region_keys(aws_kms)
    records = len(store.audit_records())
    store.enable_cmek(cmek, auth_principal=PRINCIPAL)
    # 1. Creates the store key and encrypts it using the CMEK key (and proves the CMEK decrypts it).
    assert aws_kms.calls == {"Encrypt": 2, "Decrypt": 2}
    assert [(r.region, r.operation, r.purpose, r.result) for r in store.audit_records()[records:]] == [
        (region, op, "enable CMEK", "ok") for region in REGIONS for op in ("encrypt", "decrypt")
    ]
    for region in REGIONS:
        st, old = region_status(store, region), before[region]
        assert (st.status, st.cmek, st.key_type, st.key_uri, st.auth_principal) == (
            "ENABLED",
            True,
            "AWS_KMS",
            redact(cmek[region]),
            PRINCIPAL,
        )
        assert st.store_key_id != old.store_key_id and st.cmek_enabled_at is not None
        # 2. Creates the data key and encrypts it using the store key.
        (active,) = [k for k in st.data_keys if k.active]
        assert active.key_id != old.active_data_key_id and active.store_key_id == st.store_key_id
        assert active.under_cmek
    # 3-4. Propagates the keys and starts: one Decrypt per region, and the local key file that wrapped
    # the store key before is no longer needed at all.
    for key_file in Path(os.environ["STRONGROOM_KEYRING"]).glob("strongroom-store-*.key"):
        key_file.unlink()
    store.close()
    reset_counts(aws_kms)
    reopened = Store.open(path)
    assert aws_kms.calls == {"Decrypt": 2}
    assert aws_kms.decrypted_by == {(east.key_id, 1): 1, (west.key_id, 1): 1}
    assert data_of(reopened) == data


def test_seed_going_forward_1_the_store_starts_only_when_the_cmek_is_available(
    tmp_path: Path, aws_kms: AwsKmsServer
) -> None:
    path = tmp_path / "s"
    store, data = two_region_store(path, None)
    east, _west, cmek = aws_region_keys(aws_kms)
    store.enable_cmek(cmek)
    store.close()
    # The CMEK becomes unavailable: no start, although the old local key file is still in the keyring.
    assert list(Path(os.environ["STRONGROOM_KEYRING"]).glob("strongroom-store-*.key"))
    east.state = "Disabled"
    disabled = f'AWS KMS key "{east.key_id}" (us-east-1): Decrypt: DisabledException: {east.arn} is disabled.'
    assert open_error(path) == cannot_open("east", "CMEK", cmek["east"], disabled)
    # The store's access to the key is revoked in the KMS (IAM): no start until access is restored.
    east.state, aws_kms.deny = "Enabled", True
    assert "AccessDeniedException" in open_error(path)
    aws_kms.deny = False
    assert data_of(Store.open(path)) == data


def keys_file(store: Store, region: str) -> dict[str, object]:
    """The region's newest key file, as JSON (its plaintext part and the sealed registry)."""
    newest = sorted(store.keys_dir.joinpath(region).glob("KEYS-*"))[-1]
    doc: dict[str, object] = json.loads(newest.read_text())
    return doc


def test_seed_going_forward_2_a_rotated_store_key_is_encrypted_using_the_cmek(
    tmp_path: Path, aws_kms: AwsKmsServer
) -> None:
    east, west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(tmp_path / "s", cmek)
    old = region_status(store, "east").store_key_id
    reset_counts(aws_kms)
    store.rotate_store_key("east")
    # One Encrypt by the east CMEK (and the Decrypt that proves the new wrap before it is committed).
    assert aws_kms.calls == {"Encrypt": 1, "Decrypt": 1} and aws_kms.decrypted_by == {(east.key_id, 1): 1}
    assert region_status(store, "east").store_key_id != old
    assert [(r.region, r.operation, r.purpose, r.result) for r in store.audit_records()[-2:]] == [
        ("east", "encrypt", "rotate store key", "ok"),
        ("east", "decrypt", "rotate store key", "ok"),
    ]
    store.close()
    reset_counts(aws_kms)
    assert data_of(Store.open(tmp_path / "s")) == data
    assert aws_kms.decrypted_by == {(east.key_id, 1): 1, (west.key_id, 1): 1}


def test_seed_going_forward_3_a_rotated_data_key_is_encrypted_using_the_store_key(
    tmp_path: Path, aws_kms: AwsKmsServer
) -> None:
    _east, _west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(tmp_path / "s", cmek)
    before = {r: keys_file(store, r) for r in REGIONS}
    reset_counts(aws_kms)
    assert store.rotate_data_keys() == {"east": ["bank"], "west": ["eu"]}
    assert aws_kms.calls == {}  # no KMS call at all: the store key seals the new data keys
    for region in REGIONS:
        after, st = keys_file(store, region), region_status(store, region)
        assert after["wrapped_store_key"] == before[region]["wrapped_store_key"]  # the CMEK's blob is untouched
        assert after["registry"] != before[region]["registry"]  # the sealed registry holds the new data key
        (active,) = st.data_keys  # the old data key retired with the re-key
        assert active.active and active.store_key_id == st.store_key_id and active.files == 1
    assert data_of(store) == data
    store.close()
    assert data_of(Store.open(tmp_path / "s")) == data


def test_seed_going_forward_4_new_writes_use_the_current_data_key_reads_the_one_that_wrote_them(
    tmp_path: Path, aws_kms: AwsKmsServer
) -> None:
    _east, _west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(tmp_path / "s", cmek)
    first = region_status(store, "east").active_data_key_id
    store.rotate_store_key("east")  # a new store key brings a new current data key; nothing is re-keyed
    current = region_status(store, "east").active_data_key_id
    new_rows = add_rows(store, "fresh")
    assert files_by_key(store, "east") == {first: (1, False), current: (1, True)}
    assert store.database_key("fresh") != store.database_key("bank")
    # Each database is read with the data key that encrypted it.
    with pytest.raises(EncryptionError, match="wrong key or cipher"):
        connect(store.database_path("bank"), key=store.database_key("fresh"), readonly=True)
    assert data_of(store) == data and table_rows(store, "fresh", "notes") == new_rows
    store.close()
    reopened = Store.open(tmp_path / "s")
    assert data_of(reopened) == data and table_rows(reopened, "fresh", "notes") == new_rows
    # The next data key rotation moves every database onto the current key and retires the old ones.
    reopened.rotate_data_keys("east")
    newest = region_status(reopened, "east").active_data_key_id
    assert files_by_key(reopened, "east") == {newest: (2, True)}
    assert data_of(reopened) == data


# -- 4. the seed, "Rotation of a CMEK key" -----------------------------------------------------------------


def test_seed_rotation_new_version_of_the_same_key_aws(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    east, west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(tmp_path / "s", cmek)
    store_keys = {r: region_status(store, r).store_key_id for r in REGIONS}
    # 1. The KMS rotates the key material (automatic or manual rotation).
    assert east.rotate() == 2 and west.rotate() == 2
    # 2. The store key is not re-encrypted by itself: it still opens with the old material.
    store.close()
    reset_counts(aws_kms)
    store = Store.open(tmp_path / "s")
    assert aws_kms.decrypted_by == {(east.key_id, 1): 1, (west.key_id, 1): 1}
    # A rotation without a new URI re-encrypts the store key with the new key version.
    store.rotate_cmek({"east": None, "west": None})
    assert [(st.key_uri, st.store_key_id) for st in store.encryption_status()] == [
        (redact(cmek[r]), store_keys[r]) for r in REGIONS
    ]
    store.close()
    reset_counts(aws_kms)
    assert data_of(Store.open(tmp_path / "s")) == data
    assert aws_kms.decrypted_by == {(east.key_id, 2): 1, (west.key_id, 2): 1}


def test_seed_rotation_new_version_of_the_same_key_gcp(tmp_path: Path, gcp_kms: GcpKmsServer) -> None:
    name = gcp_kms.create_key(location="us-east1", key="store-cmek")
    key, uri = gcp_kms.keys[name], gcp_kms.uri(name)
    path = tmp_path / "s"
    store, data = two_region_store(path, uri)
    store.close()
    assert key.rotate() == 2  # a new primary version
    key.versions[1].state = "DISABLED"  # before the store re-encrypts, version 1 is still what it needs
    v1_disabled = f"FAILED_PRECONDITION: {name}/cryptoKeyVersions/1 is not enabled, current state is: DISABLED."
    assert open_error(path) == cannot_open(
        "east", "CMEK", uri, f'GCP KMS key "{name}": failed to decrypt: {v1_disabled}'
    )
    key.versions[1].state = "ENABLED"
    store = Store.open(path)
    store.rotate_cmek({"east": None, "west": None})
    store.close()
    key.destroy(1)  # the old version is no longer needed: the store key is under version 2
    assert data_of(Store.open(path)) == data


def test_seed_rotation_new_version_of_the_same_key_vault(tmp_path: Path, vault: VaultServer) -> None:
    vault.create_key("store-cmek")
    uri, path = vault.uri("store-cmek"), tmp_path / "s"
    transit = vault.admin().secrets.transit
    store, data = two_region_store(path, uri)
    store_keys = {r: region_status(store, r).store_key_id for r in REGIONS}

    def wrapped_by() -> dict[str, int | None]:
        """The Vault key version each region's store key is wrapped by (the ciphertext says)."""
        return {r: key_version(store.region_keys(r).spec.wrapped_store_key) for r in REGIONS}

    assert wrapped_by() == {"east": 1, "west": 1}
    store.close()
    transit.rotate_key("store-cmek", mount_point="transit")  # 1. Vault makes version 2 the latest
    store = Store.open(path)  # 2. the store still opens: its wraps name version 1, which Vault keeps
    assert data_of(store) == data
    store.rotate_cmek({"east": None, "west": None})  # 3. the same URI: re-wrap under the latest version
    assert wrapped_by() == {"east": 2, "west": 2}
    assert {r: region_status(store, r).store_key_id for r in REGIONS} == store_keys  # re-wrapped, not replaced
    store.close()
    # Version 1 retired: nothing the store needs is under it any more.
    transit.update_key_configuration("store-cmek", min_decryption_version=2, mount_point="transit")
    assert data_of(Store.open(path)) == data
    # The key made unusable at Vault (deleted): the store does not start, and says why.
    transit.update_key_configuration("store-cmek", deletion_allowed=True, mount_point="transit")
    transit.delete_key("store-cmek", mount_point="transit")
    gone = "encryption key not found (deleted, or never created in this mount and namespace)"
    message = open_error(path)
    assert message == cannot_open(
        "east", "CMEK", uri, f'Vault key "transit/keys/store-cmek" at {vault.url}: decrypt: {gone}'
    )
    assert vault.ROOT_TOKEN not in message and "VAULT_TOKEN=redacted" in message


def test_vault_cmek_from_the_cli_never_shows_a_credential(tmp_path: Path, vault: VaultServer) -> None:
    vault.create_key("cli-cmek")
    uri, path = vault.uri("cli-cmek", approle=True), str(tmp_path / "s")
    runner = CliRunner()
    outputs = []

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        outputs.append(result.output)
        return result.output

    assert f"store key wrapped by CMEK {redact(uri)}" in run("init", path, "--cmek", uri)
    vault.admin().secrets.transit.rotate_key("cli-cmek", mount_point="transit")
    assert "ENABLED" in run("cmek", "rotate", "--store", path)
    assert key_version(Store.open(Path(path)).region_keys("local").spec.wrapped_store_key) == 2
    assert redact(uri) in run("cmek", "status", "--store", path, "--format", "json")
    run("cmek", "audit", "--store", path)
    vault.sealed = True
    assert "Vault is sealed" in run("cmek", "status", "--store", path)  # the NOTE says why the keys are locked
    assert "Vault is sealed" in run("sql", "--store", path, "-e", "SHOW DATABASES", code=1)
    issued = [t for t in vault.tokens if t != vault.ROOT_TOKEN]
    assert issued and vault.calls["login"] >= 1
    for text in outputs:
        for secret in (vault.SECRET_ID, *issued):
            assert secret not in text, f"{secret!r} is shown in {text[:80]!r}"


def test_seed_rotation_to_an_entirely_new_cmek_key(
    tmp_path: Path, aws_kms: AwsKmsServer, gcp_kms: GcpKmsServer
) -> None:
    east, west, cmek = aws_region_keys(aws_kms)
    path = tmp_path / "s"
    store, data = two_region_store(path, cmek)
    # 1. A new key in the KMS (here another provider); 2. a rotation with the new key's URI.
    new_uri = gcp_kms.uri(gcp_kms.create_key(location="us-east1", key="east-2026"))
    store.rotate_cmek({"east": new_uri}, auth_principal="backup@p.iam.gserviceaccount.com")
    st = region_status(store, "east")
    assert (st.key_type, st.key_uri, st.auth_principal, st.status) == (
        "GCP_CLOUD_KMS",
        redact(new_uri),
        "backup@p.iam.gserviceaccount.com",
        "ENABLED",
    )
    store.close()
    east.state = "Disabled"  # the old key can go: the store no longer needs it
    reset_counts(aws_kms)
    assert data_of(Store.open(path)) == data
    assert aws_kms.decrypted_by == {(west.key_id, 1): 1} and gcp_kms.calls["decrypt"] == 2


def test_seed_if_the_cmek_key_is_destroyed_the_data_cannot_be_recovered(tmp_path: Path, gcp_kms: GcpKmsServer) -> None:
    path = tmp_path / "s"
    store, _data = two_region_store(path, None)  # the store began without CMEK: a local key file
    name = gcp_kms.create_key(key="shred-me")
    uri = gcp_kms.uri(name)
    store.enable_cmek({"east": uri, "west": uri})
    store.close()
    gcp_kms.keys[name].destroy(1)
    destroyed = f"FAILED_PRECONDITION: {name}/cryptoKeyVersions/1 is not enabled, current state is: DESTROYED."
    message = cannot_open("east", "CMEK", uri, f'GCP KMS key "{name}": failed to decrypt: {destroyed}')
    assert open_error(path) == message
    # Even with every file of the store and the whole local keyring, nothing opens: every key found
    # on this machine fails on every database file, and no file holds the data in the clear.
    keyring = Path(os.environ["STRONGROOM_KEYRING"])
    candidates = [None, *(f.read_bytes() for f in keyring.glob("*.key"))]
    assert len(candidates) == 2  # the store's old local key file is still there
    for db in ("bank", "eu"):
        for key in candidates:
            with pytest.raises(EncryptionError):
                connect(store.database_path(db), key=key, readonly=True)
    for folder, _dirs, names in os.walk(path):
        for file_name in names:
            assert MARKER.encode() not in Path(folder, file_name).read_bytes()
    # Re-enabling CMEK with another key needs the old one to unwrap the store key: refused.
    locked = Store.open(path, unlock=False)
    other = gcp_kms.uri(gcp_kms.create_key(key="too-late"))
    with pytest.raises(KMSError) as exc:
        locked.enable_cmek({"east": other, "west": other})
    assert str(exc.value) == message


def test_seed_revoking_the_cmek_stops_the_store_until_cmek_is_enabled_again(
    tmp_path: Path, aws_kms: AwsKmsServer
) -> None:
    path = tmp_path / "s"
    east, west, cmek = aws_region_keys(aws_kms)
    store, data = two_region_store(path, cmek)
    other_process = Store.open(path)
    store.revoke_cmek()
    statuses = Store.open(path, unlock=False).encryption_status()
    assert [(st.region, st.status, st.active_data_key_id) for st in statuses] == [
        ("east", "REVOKED", None),
        ("west", "REVOKED", None),
    ]
    revoked_at = statuses[0].updated_at
    # The store closed itself; a store open elsewhere loses access at its next use.
    with pytest.raises(EncryptionError) as closed:
        store.connect("bank")
    assert str(closed.value) == 'region "east" is not open: its keys are locked (see strongroom cmek status)'
    with pytest.raises(KMSError) as elsewhere:
        other_process.connect("bank")
    assert str(elsewhere.value) == f'region "east": its CMEK {redact(cmek["east"])} was revoked ({revoked_at})'
    assert other_process.encryption_status() == statuses  # its status report says so (it does not fail)
    # It refuses to start although the KMS key is fine, and asks the KMS nothing.
    reset_counts(aws_kms)
    assert open_error(path) == (
        f'region "east" cannot start: its CMEK {redact(cmek["east"])} was revoked ({revoked_at}); '
        "after restoring the store's access to the key, enable it again (strongroom cmek enable)"
    )
    assert aws_kms.calls == {}
    # Enabling CMEK again, with a key that can unwrap the store key, brings back all the data.
    Store.open(path, unlock=False).enable_cmek(cmek)
    assert aws_kms.decrypted_by[(east.key_id, 1)] >= 1 and aws_kms.decrypted_by[(west.key_id, 1)] >= 1
    reopened = Store.open(path)
    assert data_of(reopened) == data
    assert [st.status for st in reopened.encryption_status()] == ["ENABLED", "ENABLED"]


def test_cmek_changes_are_refused_with_a_reason(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    store, _data = two_region_store(tmp_path / "s", None)
    uri = aws_cmek(aws_kms, aws_kms.create_key())

    def refused(call: Callable[[], None], message: str) -> None:
        before = snapshot(store.path)
        with pytest.raises(UsageError) as exc:
            call()
        assert str(exc.value) == message
        assert snapshot(store.path) == before and aws_kms.calls == {}

    refused(lambda: store.revoke_cmek(), "CMEK is not enabled on this store: there is nothing to revoke")
    refused(
        lambda: store.enable_cmek({"east": uri}),
        "enabling CMEK needs a key for every region of the store; missing: west",
    )
    refused(
        lambda: store.rotate_cmek({"east": None}), 'region "east" has no CMEK to rotate: give a key URI to enable one'
    )
    refused(
        lambda: store.enable_cmek({"east": uri, "west": uri, "mars": uri}),
        'region "mars" does not exist\nHINT: valid regions: east, west',
    )
    store.enable_cmek({"east": uri, "west": uri})
    reset_counts(aws_kms)
    refused(
        lambda: store.rotate_cmek({"west": ""}),
        'region "west": encryption was used on this store before; CMEK cannot be dropped '
        "(revoke it instead: strongroom cmek revoke)",
    )


# -- 5. status, redaction and the audit log -----------------------------------------------------------------


def test_no_cmek_secret_in_status_audit_errors_or_reprs(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    east, west, cmek = aws_region_keys(aws_kms)
    path = tmp_path / "s"
    store, _data = two_region_store(path, cmek)
    shown: list[str] = []
    store.rotate_store_key()
    store.rotate_cmek({"east": None})
    west.state = "Disabled"
    with pytest.raises(KMSError) as failed_rotation:  # a failed rotation keeps its message in the status
        store.rotate_cmek({"west": None})
    shown.append(str(failed_rotation.value))
    shown.append(open_error(path))
    west.state = "Enabled"
    statuses = store.encryption_status()
    assert [st.status for st in statuses] == ["ENABLED", "ROTATE_FAILED"]
    assert f'region "west": {statuses[1].user_message}' == str(failed_rotation.value)
    shown += [repr(statuses), str(statuses), repr(store), str(store)]
    for region in REGIONS:
        keys = store.region_keys(region)
        shown += [repr(keys), repr(keys.spec), repr(keys.registry)]
    shown += [repr(store.audit_records()), (path / "audit.log").read_text()]
    locked = Store.open(path, unlock=False)
    shown += [repr(locked.encryption_status())]
    assert redact(cmek["east"]) in shown[-1]  # the URIs are shown, redacted
    for text in shown:
        for secret in aws_secrets(aws_kms):
            assert secret not in text, f"{secret!r} is shown in {text[:80]!r}"
    del east


def test_the_audit_log_records_who_what_which_key_when_and_the_result(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    import getpass

    start = datetime.now(UTC).replace(microsecond=0)  # the log keeps milliseconds
    east, _west, cmek = aws_region_keys(aws_kms)
    path = tmp_path / "s"
    store, _data = two_region_store(path, cmek)
    with acting_as("api:alice"):
        store.rotate_store_key("east")
    store.close()
    east.state = "Disabled"
    open_error(path)
    records = Store.open(path, unlock=False).audit_records()
    me = f"user:{getpass.getuser()}"
    disabled = f'error: AWS KMS key "{east.key_id}" (us-east-1): Decrypt: DisabledException: {east.arn} is disabled.'
    east_key, west_key = redact(cmek["east"]), redact(cmek["west"])
    assert [(r.actor, r.region, r.operation, r.purpose, r.key, r.result) for r in records] == [
        (me, "east", "encrypt", "create store key", east_key, "ok"),
        (me, "east", "decrypt", "create store key", east_key, "ok"),
        (me, "west", "encrypt", "create store key", west_key, "ok"),
        (me, "west", "decrypt", "create store key", west_key, "ok"),
        ("api:alice", "east", "encrypt", "rotate store key", east_key, "ok"),
        ("api:alice", "east", "decrypt", "rotate store key", east_key, "ok"),
        (me, "east", "decrypt", "open store", east_key, disabled),
    ]
    times = [datetime.fromisoformat(r.time) for r in records]
    assert times == sorted(times) and start <= times[0] and times[-1] <= datetime.now(UTC)


def test_a_failed_enable_leaves_the_failing_region_as_it_was(tmp_path: Path, aws_kms: AwsKmsServer) -> None:
    path = tmp_path / "s"
    store, data = two_region_store(path, None)
    _east, west, cmek = aws_region_keys(aws_kms)
    west.state = "Disabled"
    with pytest.raises(KMSError) as exc:
        store.enable_cmek(cmek)
    refusal = f'AWS KMS key "{west.key_id}" (us-west-1): Encrypt: DisabledException: {west.arn} is disabled.'
    assert str(exc.value) == f'region "west": {refusal}'
    statuses = store.encryption_status()
    assert [(st.region, st.status, st.cmek, st.key_type, st.user_message) for st in statuses] == [
        ("east", "ENABLED", True, "AWS_KMS", ""),
        ("west", "ENABLE_FAILED", False, "LOCAL_KEY_FILE", refusal),  # still under its local key file
    ]
    store.close()
    assert data_of(Store.open(path)) == data
    west.state = "Enabled"
    store = Store.open(path)
    store.enable_cmek(cmek)
    assert [(st.status, st.cmek) for st in store.encryption_status()] == [("ENABLED", True), ("ENABLED", True)]
    assert data_of(store) == data
