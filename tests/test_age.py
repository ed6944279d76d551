"""Write-only backup hosts: age recipients and AWS asymmetric keys (issue 14 §1, restic #187).

A host given only a public key writes full and incremental backups it cannot read; the private key
(an age identity, kms:Decrypt on the AWS key) restores them. The real ``age`` CLI checks, apart from
pyrage, that what we wrap is an ordinary age file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from conftest import MARKER, fill_bank, table_rows

from strongroom import Store
from strongroom.backup.chainkeys import HOST_VIEW, host_view_key
from strongroom.backup.engine import check
from strongroom.backup.keys import BackupKeys, Encryption, read_encryption_infos
from strongroom.backup.manifest import read_manifest
from strongroom.crypto import kms_identity
from strongroom.errors import EncryptionError, StrongroomError, UsageError, WrapOnlyError
from strongroom.kms import create_key, open_kms
from strongroom.storage import open_storage

if TYPE_CHECKING:
    from cloud_servers import CloudTarget
    from kms_servers import AwsKmsServer

pytest_plugins = ("kms_servers", "cloud_servers")
pyrage = pytest.importorskip("pyrage")
COLL = "nodelocal://1/wo"
AGE = shutil.which("age")


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    """An age identity file written by age-keygen itself when present (else pyrage), and its recipient."""
    path = tmp_path / "backup.key"
    keygen = shutil.which("age-keygen")
    if keygen:
        subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
        recipient = subprocess.run([keygen, "-y", str(path)], check=True, capture_output=True, text=True).stdout
    else:
        ident = pyrage.x25519.Identity.generate()
        path.write_text(f"# test\n{ident}\n")
        recipient = str(ident.to_public())
    return path, recipient.strip()


def change_some_rows(store: Store, first: int = 2900, value: int = -1) -> None:
    conn = store.connect("bank")
    with conn:
        conn.execute("UPDATE accounts SET balance = ? WHERE id > ?", (value, first))
    conn.close()


def layer_bytes(store: Store, prefix: str) -> int:
    """Bytes of the pack files under the collection's ``prefix`` (a full dir, or ``incrementals``)."""
    root = store.extern_dir / "wo" / prefix
    return sum(p.stat().st_size for p in root.rglob("data/*.pack") if p.is_file()) if root.exists() else 0


def full_dir(store: Store) -> Path:
    (manifest,) = [p for p in (store.extern_dir / "wo").glob("[0-9]*/*/*/BACKUP_MANIFEST")]
    return manifest.parent


def test_a_recipient_writes_full_and_incrementals_it_cannot_read(store: Store, identity: tuple[Path, str]) -> None:
    path, recipient = identity
    public = Encryption(kms=(f"age:///{recipient}",))
    private = Encryption(kms=(f"age:///?IDENTITY={path}",))
    fill_bank(store)
    store.backup(COLL, encryption=public)
    full_packs = layer_bytes(store, full_dir(store).relative_to(store.extern_dir / "wo").as_posix())
    change_some_rows(store)
    store.backup(COLL, encryption=public, incremental="LATEST")
    first_inc = layer_bytes(store, "incrementals")
    assert 0 < first_inc < full_packs // 4  # only the changed chunks were stored
    change_some_rows(store, first=2950, value=-2)
    store.backup(COLL, encryption=public, incremental="LATEST")
    assert 0 < layer_bytes(store, "incrementals") - first_inc < full_packs // 4

    # Every read with the public key alone fails, naming what is missing.
    reads = (
        lambda: store.restore(COLL, encryption=public, databases=["bank"], new_db_name="x"),
        lambda: store.show_backup(COLL, encryption=public),
        lambda: store.open_backup(COLL, encryption=public),
    )
    for read in reads:
        with pytest.raises(WrapOnlyError, match=r"can only encrypt \(public keys\).*age identity"):
            read()
    (report,) = check(COLL, public, context=store.storage_context)  # check reports it on the chain's row
    assert "can only encrypt (public keys)" in report.status

    # The identity restores the newest layer, and SHOW BACKUP lists the whole chain.
    store.restore(COLL, encryption=private, databases=["bank"], new_db_name="restored")
    assert table_rows(store, "restored", "accounts") == table_rows(store, "bank", "accounts")
    shown = store.show_backup(COLL, encryption=private)
    assert [m.backup_type for m in shown.manifests] == ["full", "incremental", "incremental"]
    assert [r.status for r in check(COLL, private, read_data=True, context=store.storage_context)] == ["ok"]


def test_only_the_host_that_started_a_write_only_chain_appends_to_it(
    store: Store, identity: tuple[Path, str], _keyring: Path
) -> None:
    path, recipient = identity
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=Encryption(kms=(f"age:///{recipient}",)))
    for state in (_keyring / "chains").glob("*.json"):
        state.unlink()  # another host: it holds the identity, not this chain's state
    for uri in (f"age:///?IDENTITY={path}", f"age:///{recipient}"):
        with pytest.raises(UsageError, match="started by a write-only backup host"):
            store.backup(COLL, encryption=Encryption(kms=(uri,)), incremental="LATEST")


def test_nothing_the_host_keeps_reads_a_backup(store: Store, identity: tuple[Path, str], _keyring: Path) -> None:
    """The host's chain state holds no data key: its bytes do not unseal the manifest, and no file
    of the host's holds plaintext rows."""
    _path, recipient = identity
    fill_bank(store, accounts=200)
    store.backup(COLL, encryption=Encryption(kms=(f"age:///{recipient}",)))
    (state,) = (_keyring / "chains").glob("*.json")
    assert state.stat().st_mode & 0o077 == 0
    storage = open_storage(COLL, store.storage_context)
    layer = full_dir(store).relative_to(store.extern_dir / "wo").as_posix()
    kept = json.loads(state.read_text())
    for secret in (kept["dedup_key"], kept["state"]):
        with pytest.raises(EncryptionError):
            read_manifest(storage, layer, BackupKeys(bytes.fromhex(secret)))
    for f in full_dir(store).rglob("*"):
        assert not f.is_file() or MARKER.encode() not in f.read_bytes()
    # What the host does read: its HOST-VIEW of the layer, with no schema and no counts, pointing at
    # its own copies of the chunk index and of the ciphertext fingerprints.
    view = read_manifest(storage, layer, BackupKeys(host_view_key(bytes.fromhex(kept["dedup_key"]))), file=HOST_VIEW)
    (entry,) = view.databases
    assert entry.objects == [] and entry.rows == 0 and view.rows == 0
    assert entry.index.path.endswith(".hidx") and entry.fingerprints and entry.fingerprints.path.endswith(".hfpr")


@pytest.mark.skipif(AGE is None, reason="the age CLI is installed by scripts/test.sh (apt-get install age)")
def test_the_age_cli_unwraps_the_data_key_we_wrote(store: Store, identity: tuple[Path, str], tmp_path: Path) -> None:
    path, recipient = identity
    fill_bank(store, accounts=100)
    store.backup(COLL, encryption=Encryption(kms=(f"age:///{recipient}",)))
    storage = open_storage(COLL, store.storage_context)
    layer = full_dir(store).relative_to(store.extern_dir / "wo").as_posix()
    (_name, info), *_ = read_encryption_infos(storage, layer)
    wrapped = info.encrypted_data_keys[kms_identity(recipient)]
    assert AGE is not None
    out = subprocess.run([AGE, "-d", "-i", str(path)], input=wrapped, check=True, capture_output=True).stdout
    assert len(out) == 32
    manifest = read_manifest(storage, layer, BackupKeys(out))  # the data key opens the sealed manifest
    assert manifest.databases[0].name == "bank" and manifest.rows == 100 + 50


def test_the_identity_of_the_recipient_opens_it_by_name_and_by_file(store: Store, _keyring: Path) -> None:
    ident = pyrage.x25519.Identity.generate()
    (_keyring / "ops.age").write_text(f"# public key: {ident.to_public()}\n{ident}\n")
    fill_bank(store, accounts=50)
    store.backup(COLL, encryption=Encryption(kms=(f"age:///{ident.to_public()}",)))
    for n, uri in enumerate(("age:///ops", f"age:///{ident.to_public()}?IDENTITY={_keyring / 'ops.age'}")):
        store.restore(COLL, encryption=Encryption(kms=(uri,)), databases=["bank"], new_db_name=f"r{n}")
        assert len(table_rows(store, f"r{n}", "accounts")) == 50
    other = pyrage.x25519.Identity.generate()
    (_keyring / "other.age").write_text(f"{other}\n")
    with pytest.raises(EncryptionError, match="was not used when encrypting"):
        store.restore(COLL, encryption=Encryption(kms=("age:///other",)), databases=["bank"], new_db_name="x")


def test_mixed_recipients_and_kms_each_restore(store: Store, tmp_path: Path) -> None:
    """age X25519, an SSH ed25519 key (URL-encoded) and a local key in one kms = (...): any one restores."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ident = pyrage.x25519.Identity.generate()
    id_file = tmp_path / "x25519.key"
    id_file.write_text(f"{ident}\n")
    ssh_key = Ed25519PrivateKey.generate()
    ssh_file = tmp_path / "id_ed25519"
    ssh_file.write_bytes(
        ssh_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    ssh_pub = ssh_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    create_key("k")
    kms = (f"age:///{ident.to_public()}", "age:///" + quote(ssh_pub.decode() + " me@host"), "local:///k")
    fill_bank(store, accounts=80)
    store.backup(COLL, encryption=Encryption(kms=kms))
    change_some_rows(store, first=40)
    store.backup(COLL, encryption=Encryption(kms=kms[:1]), incremental="LATEST")
    for n, uri in enumerate((f"age:///?IDENTITY={id_file}", f"age:///?IDENTITY={ssh_file}", "local:///k")):
        store.restore(COLL, encryption=Encryption(kms=(uri,)), databases=["bank"], new_db_name=f"r{n}")
        assert table_rows(store, f"r{n}", "accounts") == table_rows(store, "bank", "accounts")


def test_bad_age_uris_are_refused_with_one_clear_message(tmp_path: Path) -> None:
    secret = pyrage.x25519.Identity.generate()
    bad = tmp_path / "bad.key"
    bad.write_text(f"{secret}\n{pyrage.x25519.Identity.generate()}\n")
    with pytest.raises(UsageError, match="X25519 public key"):
        open_kms("age:///age1notakey")
    with pytest.raises(UsageError, match="needs a recipient"):
        open_kms("age:///")
    with pytest.raises(StrongroomError) as exc:
        _ = open_kms(f"age:///?IDENTITY={bad}").master_key_id
    assert "exactly one age identity" in str(exc.value) and str(secret) not in str(exc.value)
    mismatched = tmp_path / "one.key"
    mismatched.write_text(f"{secret}\n")
    other = pyrage.x25519.Identity.generate().to_public()
    with pytest.raises(UsageError, match="is not the identity of recipient"):
        open_kms(f"age:///{other}?IDENTITY={mismatched}").decrypt(b"x")


def test_aws_asymmetric_key_backup_host_uses_only_get_public_key(
    store: Store, aws_kms: AwsKmsServer, tmp_path: Path
) -> None:
    key = aws_kms.create_key(spec="RSA_4096")
    writer = aws_kms.uri(key.key_id, ASYMMETRIC="RSAES_OAEP_SHA_256")
    aws_kms.allowed_ops = {"GetPublicKey"}  # the backup host's IAM policy: no kms:Decrypt, no kms:Encrypt
    fill_bank(store, accounts=300)
    store.backup(COLL, encryption=Encryption(kms=(writer,)))
    change_some_rows(store, first=290)
    store.backup(COLL, encryption=Encryption(kms=(writer,)), incremental="LATEST")
    assert aws_kms.calls == {"GetPublicKey": 1}  # fetched once, every wrap offline; nothing for incrementals
    with pytest.raises(StrongroomError, match=r"AccessDenied.*kms:Decrypt"):
        store.restore(COLL, encryption=Encryption(kms=(writer,)), databases=["bank"], new_db_name="x")
    aws_kms.allowed_ops = None  # the restore host may Decrypt with the same key
    store.restore(COLL, encryption=Encryption(kms=(writer,)), databases=["bank"], new_db_name="restored")
    assert table_rows(store, "restored", "accounts") == table_rows(store, "bank", "accounts")
    assert aws_kms.decrypted_by[(key.key_id, 1)] == 1  # one Decrypt opens the whole chain


def test_on_s3_with_a_moto_asymmetric_key_and_an_age_recipient(
    store: Store, moto_s3: CloudTarget, moto_kms: str, identity: tuple[Path, str]
) -> None:
    """The write-only chain on S3, wrapping with moto's real GetPublicKey answer and an age recipient.
    moto cannot RSA-decrypt (its Decrypt only knows its own symmetric blobs), so the age identity
    restores here; the fake AWS KMS above covers kms:Decrypt of an asymmetric key."""
    import boto3

    creds = {"aws_access_key_id": "AKIDMOTO", "aws_secret_access_key": "moto-secret-key-123"}
    kms = boto3.client("kms", endpoint_url=moto_kms, region_name="us-east-1", **creds)
    key_id = kms.create_key(KeySpec="RSA_4096", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    aws_uri = (
        f"aws:///{key_id}?REGION=us-east-1&AWS_ACCESS_KEY_ID={creds['aws_access_key_id']}"
        f"&AWS_SECRET_ACCESS_KEY={creds['aws_secret_access_key']}&AWS_ENDPOINT={moto_kms}"
        "&ASYMMETRIC=RSAES_OAEP_SHA_256"
    )
    path, recipient = identity
    public = Encryption(kms=(aws_uri, f"age:///{recipient}"))
    coll = moto_s3.uri(f"write-only-{os.urandom(4).hex()}")
    fill_bank(store, accounts=6000)
    full = store.backup(coll, encryption=public)
    change_some_rows(store, first=5990)
    store.backup(coll, encryption=public, incremental="LATEST")
    shown = store.show_backup(coll, encryption=Encryption(kms=(f"age:///?IDENTITY={path}",)))
    full_m, inc_m = shown.manifests
    assert full_m.rows == full.rows and inc_m.databases[0].chunks_written < full_m.databases[0].chunks_written // 4
    store.restore(coll, encryption=Encryption(kms=(f"age:///?IDENTITY={path}",)), databases=["bank"], new_db_name="r")
    assert table_rows(store, "r", "accounts") == table_rows(store, "bank", "accounts")


def test_keys_create_age_makes_an_identity_the_recipient_uri_matches(store: Store, _keyring: Path) -> None:
    from click.testing import CliRunner

    from strongroom.cli import main

    out = CliRunner().invoke(main, ["keys", "create-age", "dr"])
    assert out.exit_code == 0, out.output
    recipient = out.output.split("kms = 'age:///", 1)[1].split("'", 1)[0]
    assert "restore uses:      kms = 'age:///dr'" in out.output
    ident = _keyring / "dr.age"
    assert ident.stat().st_mode & 0o077 == 0 and ident.read_text() not in out.output
    assert open_kms("age:///dr").master_key_id == recipient
    again = CliRunner().invoke(main, ["keys", "create-age", "dr"])
    assert again.exit_code == 1 and "already exists" in again.output
    fill_bank(store, accounts=30)
    store.backup(COLL, encryption=Encryption(kms=(f"age:///{recipient}",)))
    store.restore(COLL, encryption=Encryption(kms=("age:///dr",)), databases=["bank"], new_db_name="r")
    assert len(table_rows(store, "r", "accounts")) == 30


def test_layer_keys_pick_each_files_key_whichever_layer_reads_it() -> None:
    full, layer = bytes(32), bytes([1]) * 32
    keys = BackupKeys(full, hash_key=bytes([2]) * 32, layer_keys={"incrementals/f/20261202/000000.00": layer})
    as_layer = keys.for_layer("incrementals/f/20261202/000000.00")
    assert as_layer.key == layer and as_layer.hasher is keys.hasher
    for k in (keys, as_layer):  # an incremental's manifest names the full's packs too
        assert k.key_for("2026/12/02-000000.00/data/000001.pack") == full
        assert k.key_for("incrementals/f/20261202/000000.00/data/000001.pack") == layer
    assert keys.for_layer("2026/12/02-000000.00") is keys


def test_sql_locality_aware_write_only_chain(tmp_path: Path, identity: tuple[Path, str]) -> None:
    """The statements verbatim, with a recipient on the backup side and a locality-aware collection:
    the host's index copies go where each database's files go, and the identity restores from both."""
    from strongroom import init_store

    path, recipient = identity
    store = init_store(tmp_path / "regions", regions=["us-east1", "us-west1"])
    both = (
        "('nodelocal://1/main?COCKROACH_LOCALITY=default', 'nodelocal://1/west?COCKROACH_LOCALITY=region%3Dus-west1')"
    )
    store.execute('CREATE DATABASE west_db PRIMARY REGION "us-west1"')
    store.execute("USE west_db; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    store.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) "
        f"INSERT INTO t(v) SELECT '{MARKER}-' || i FROM s"
    )
    store.execute(f"BACKUP INTO {both} WITH kms = 'age:///{recipient}'")
    store.execute("UPDATE t SET v = 'changed' WHERE id <= 10")
    store.execute(f"BACKUP INTO LATEST IN {both} WITH kms = 'age:///{recipient}'")
    west = store.extern_dir / "west"
    assert len([p for p in west.rglob("*.hidx")]) == 2  # the full's and the incremental's, beside their packs
    with pytest.raises(WrapOnlyError):
        store.execute(f"SHOW BACKUP LATEST IN {both} WITH kms = 'age:///{recipient}'")
    shown = store.execute(f"SHOW BACKUP LATEST IN {both} WITH kms = 'age:///?IDENTITY={path}', check_files")
    assert {r[4] for r in shown.rows} == {"full", "incremental"}
    store.execute("CREATE DATABASE other; USE other; DROP DATABASE west_db")
    store.execute(f"RESTORE FROM LATEST IN {both} WITH kms = 'age:///?IDENTITY={path}'")
    rows = table_rows(store, "west_db", "t")
    assert len(rows) == 3000 and rows[0][1] == "changed" and rows[10][1] == f"{MARKER}-11"


def test_without_pyrage_an_age_uri_says_which_extra_installs_it(tmp_path: Path) -> None:
    """A fresh interpreter in which pyrage cannot be imported (as without strongroom[age])."""
    import sys

    code = (
        "import sys; sys.modules['pyrage'] = None\n"
        "from strongroom.kms import open_kms\n"
        "from strongroom.errors import UsageError\n"
        "try:\n"
        "    open_kms('age:///age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p').encrypt(b'k' * 32)\n"
        "except UsageError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "age:// keys needs pyrage: pip install 'strongroom[age]'"
