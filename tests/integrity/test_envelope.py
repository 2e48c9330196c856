from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.core.errors import UsageError
from mlwarden.integrity.envelope import (
    BUNDLE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    pae,
    read_bundle,
    sign_statement,
    verify_statement,
    write_bundle,
)
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.keys import hash_for, key_hint, load_private_key, load_public_key
from tests.integrity.signing_helpers import write_key_pair

STATEMENT: dict[str, Any] = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [{"name": "dataset", "digest": {"sha256": "ab" * 32}}],
    "predicateType": "https://mlwarden.dev/dataset-manifest/v1",
    "predicate": {"licence": "CC-BY-4.0", "files": 3, "note": "ünïcode"},
}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_key_pair(tmp_path / "keys")


def test_pae_matches_the_dsse_spec_example() -> None:
    # https://github.com/secure-systems-lab/dsse/blob/v1.0.0/protocol.md#test-vectors
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_round_trip_on_every_supported_curve(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    private, public = write_key_pair(tmp_path, curve=curve)
    bundle = sign_statement(STATEMENT, private)
    assert verify_statement(bundle, public) == STATEMENT
    # the bundle is what model_signing writes for its key method
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    assert bundle["verificationMaterial"] == {
        "publicKey": {"hint": key_hint(load_public_key(public))},
        "tlogEntries": [],
    }
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert json.loads(base64.b64decode(envelope["payload"])) == STATEMENT
    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    key = load_public_key(public)
    key.verify(signature, pae(PAYLOAD_TYPE, base64.b64decode(envelope["payload"])), ec.ECDSA(hash_for(key)))


def test_loaded_key_objects_are_accepted(keys: tuple[Path, Path]) -> None:
    bundle = sign_statement(STATEMENT, load_private_key(keys[0]))
    assert verify_statement(bundle, load_public_key(keys[1]))["predicateType"] == STATEMENT["predicateType"]


def test_wrong_key_is_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, other = write_key_pair(tmp_path / "other")
    bundle = sign_statement(STATEMENT, keys[0])
    with pytest.raises(VerificationError, match=r"does not verify with this key \(wrong key\?\)"):
        verify_statement(bundle, other)
    del bundle["verificationMaterial"]["publicKey"]  # no hint: the signature check itself must refuse
    with pytest.raises(VerificationError, match=r"wrong key\?"):
        verify_statement(bundle, other)


def _resign_payload(bundle: dict[str, Any], payload: bytes) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    out["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    return out


def test_altered_payload_fails(keys: tuple[Path, Path]) -> None:
    bundle = sign_statement(STATEMENT, keys[0])
    forged = dict(STATEMENT, predicate={"licence": "proprietary"})
    with pytest.raises(VerificationError, match="altered"):
        verify_statement(_resign_payload(bundle, json.dumps(forged).encode()), keys[1])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("dsseEnvelope"), "no dsseEnvelope"),
        (lambda b: b.update(mediaType="application/json"), "media type"),
        (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "wrong payload type 'text/plain'"),
        (lambda b: b["dsseEnvelope"].update(signatures=[]), "no signature"),
        (lambda b: b["dsseEnvelope"].update(payload="%%%not base64%%%"), "not valid base64"),
        (lambda b: b["dsseEnvelope"]["signatures"][0].pop("sig"), "signature 0 is missing"),
    ],
)
def test_malformed_bundles_are_named(keys: tuple[Path, Path], mutate: Any, message: str) -> None:
    bundle = sign_statement(STATEMENT, keys[0])
    mutate(bundle)
    with pytest.raises(VerificationError, match=message) as info:
        verify_statement(bundle, keys[1])
    assert info.value.problems
    assert message.split()[0] in info.value.problems[0]


def test_signed_payload_that_is_not_a_statement_is_refused(keys: tuple[Path, Path]) -> None:
    key = load_private_key(keys[0])
    payload = json.dumps({"_type": "https://example.com/Other", "subject": []}).encode()
    signature = key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hash_for(key)))
    bundle = sign_statement(STATEMENT, key)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"] = [{"sig": base64.b64encode(signature).decode(), "keyid": ""}]
    with pytest.raises(VerificationError) as info:
        verify_statement(bundle, keys[1])
    assert any("_type" in p for p in info.value.problems)
    assert any("subject" in p for p in info.value.problems)


@pytest.mark.parametrize(
    "statement",
    [
        {"subject": [{"digest": {"sha256": "00"}}], "predicateType": "x"},
        {"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": "x"},
        {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "a"}], "predicateType": "x"},
        {"_type": "https://in-toto.io/Statement/v1", "subject": [{"digest": {"sha256": "00"}}]},
    ],
)
def test_signing_refuses_what_is_not_an_in_toto_statement(keys: tuple[Path, Path], statement: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="cannot sign"):
        sign_statement(statement, keys[0])


def test_write_and_read_bundle(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = sign_statement(STATEMENT, keys[0])
    path = tmp_path / "out" / "stmt.sig"
    path.parent.mkdir()
    write_bundle(bundle, path)
    assert read_bundle(path) == bundle
    assert [p.name for p in path.parent.iterdir()] == ["stmt.sig"]  # no temporary file left behind
    assert verify_statement(read_bundle(path), keys[1]) == STATEMENT


def test_truncated_bundle_file(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = tmp_path / "stmt.sig"
    write_bundle(sign_statement(STATEMENT, keys[0]), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VerificationError, match=r"stmt\.sig is not a valid signature bundle: .*truncated"):
        read_bundle(path)


@pytest.mark.parametrize(("content", "message"), [(b"[1, 2]", "not a JSON object"), (b"\xff\xfe", "not UTF-8")])
def test_invalid_bundle_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.sig"
    path.write_bytes(content)
    with pytest.raises(VerificationError, match=message):
        read_bundle(path)


def test_missing_bundle_and_unwritable_destination(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(VerificationError, match="does not exist"):
        read_bundle(tmp_path / "absent.sig")
    with pytest.raises(UsageError, match="does not exist"):
        write_bundle(sign_statement(STATEMENT, keys[0]), tmp_path / "no-such-dir" / "x.sig")
