"""PII and secret detectors: each one finds valid values and rejects checksum failures and near-misses."""

from __future__ import annotations

import base64
import json
import random

import pytest

from mlwarden.core.errors import LimitExceeded, UsageError
from mlwarden.guard.pii import (
    DETECTORS,
    Match,
    PiiConfig,
    card_issuer_ok,
    find,
    iban_valid,
    luhn_valid,
    resolve_overlaps,
)
from mlwarden.guard.pii_secrets import shannon_entropy


def found(text: str, detector: str | None = None) -> list[str]:
    return [text[m.start : m.end] for m in find(text) if detector is None or m.detector == detector]


def _jwt(header: dict[str, object], payload: dict[str, object]) -> str:
    def enc(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{enc(header)}.{enc(payload)}.c2lnbmF0dXJlLWJ5dGVz"


# detector id -> (texts whose single match must be exactly the value, texts with no match of that detector)
CASES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "credit_card": (
        [
            ("Card: 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
            ("mc 5555-5555-5555-4444.", "5555-5555-5555-4444"),
            ("amex 378282246310005 ok", "378282246310005"),
            ("amex grouped 3782 822463 10005", "3782 822463 10005"),
            ("discover 6011111111111117", "6011111111111117"),
            ("jcb 3530111333300000", "3530111333300000"),
            ("2-series 2223003122003222", "2223003122003222"),
            ("ref 1234 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ],
        [
            "bad luhn 4111 1111 1111 1112",
            "Order #1234567890123456 shipped",  # no issuer starts with 1
            "epoch ms 1700000000000 and 17000000000000",
            "timestamp 20240115123045123",
            "mixed separators 4111 1111-1111 1111",
            "odd grouping 41 1111111 1111 111",
            "too long 41111111111111111111111",
            "isbn 978-3-16-148410-0",
        ],
    ),
    "iban": (
        [
            ("pay to GB82 WEST 1234 5698 7654 32 AND thanks", "GB82 WEST 1234 5698 7654 32"),
            ("DE89370400440532013000", "DE89370400440532013000"),
            ("FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
            ("NL91ABNA0417164300.", "NL91ABNA0417164300"),
        ],
        [
            "bad check digits GB82 WEST 1234 5698 7654 33",
            "wrong length DE8937040044053201300",
            "unknown country ZZ82 WEST 1234 5698 7654 32",
            "product code AB12CDEFGHIJKLMN",
        ],
    ),
    "us_ssn": (
        [
            ("SSN 123-45-6789.", "123-45-6789"),
            ("ssn: 123456789", "123456789"),
            ("social security 536 22 1234", "536 22 1234"),
        ],
        [
            "area 000-12-3456",
            "area 666-12-3456",
            "area 912-34-5678",
            "group 123-00-4567",
            "serial 123-45-0000",
            "the Woolworth card 078-05-1120",
            "order 123456789 shipped",  # bare nine digits without an SSN keyword
            "part 123-45-6789-01",
            "date 2024-01-15",
        ],
    ),
    "email": (
        [("mail Jane.Doe+tag@mail.example.co.uk now", "Jane.Doe+tag@mail.example.co.uk")],
        ["pip install pkg@1.2.3", "user@localhost", "@decorator", "a..b@example.com", "name.@example.com"],
    ),
    "phone": (
        [
            ("call +1 (415) 555-2671 today", "+1 (415) 555-2671"),
            ("ring +44 20 7946 0958.", "+44 20 7946 0958"),
            ("e164 +14155552671", "+14155552671"),
            ("us 415-555-2671", "415-555-2671"),
            ("fr 01 23 45 67 89", "01 23 45 67 89"),
            ("uk 020 7946 0958", "020 7946 0958"),
        ],
        [
            "date 2024-01-15",
            "version v1.2.3",
            "ip 192.168.1.1",
            "order 12345678",
            "nanp exchange 415-155-2671",
            "too short +12 345",
            "score 3-2-1",
            "iso time 2024-01-15T12:30:45",
        ],
    ),
    "ipv4": (
        [("server 203.0.113.42 is up", "203.0.113.42"), ("10.0.0.1.", "10.0.0.1")],
        ["octet 256.1.1.1", "version 1.2.3.4", "v1.2.3.4", "oid 1.3.6.1.4.1", "pi 3.14"],
    ),
    "ipv6": (
        [
            ("addr 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
            ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
        ],
        ["time 12:30:45", "mac 00:1A:2B:3C:4D:5E", "std::vector", "ratio a::b", "bad 2001:db8:::1"],
    ),
    "aws_access_key_id": (
        [("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE")],
        ["AKIAIOSFODNN7EXAMPL (19 chars)", "XAKIAIOSFODNN7EXAMPLE", "akiaiosfodnn7example"],
    ),
    "aws_secret_key": (
        [
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )
        ],
        [
            "checksum wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # no AWS/secret context
            "aws sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",  # hex digest: no upper case
        ],
    ),
    "github_token": (
        [("token ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8 ok", "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8")],
        ["ghp_short", "ghx_" + "a" * 36, "aghp_" + "a" * 36],
    ),
    "gitlab_token": (
        [("glpat-AbCdEfGhIjKlMnOpQrSt", "glpat-AbCdEfGhIjKlMnOpQrSt")],
        ["glpat-short", "glpatx-AbCdEfGhIjKlMnOpQrSt"],
    ),
    "slack_token": (
        [
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            )
        ],
        ["xoxz-123456789012", "xoxb-123"],
    ),
    "stripe_key": (
        [("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc")],
        ["pk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk_prod_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk_live_short"],
    ),
    "private_key": (
        [
            (
                "k: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- end",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE\nAAAABG5vbmU\n\ntruncated, sorry",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE\nAAAABG5vbmU",
            ),
        ],
        ["-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----", "-----BEGIN CERTIFICATE-----\nMIIB\n"],
    ),
    "jwt": (
        [
            (
                f"Bearer {_jwt({'alg': 'HS256', 'typ': 'JWT'}, {'sub': '1'})} x",
                _jwt({"alg": "HS256", "typ": "JWT"}, {"sub": "1"}),
            )
        ],
        [
            _jwt({"typ": "JWT"}, {"sub": "1"}),  # header without "alg"
            "eyJub3QganNvbiBhdCBhbGw.eyJzdWIiOiIxIn0.c2ln",  # header is not JSON
            "www.example.com",
        ],
    ),
    "generic_secret": (
        [("password = 'Tr0ub4dor&3xQ9'", "Tr0ub4dor&3xQ9"), ('{"api_key": "Zk9xP2mQ7vL4wR8s"}', "Zk9xP2mQ7vL4wR8s")],
        [
            "password reset instructions were sent",
            "secret = get_secret_value",
            "token: the_next_token",
            "password = ********",
            "password = ${DB_PASSWORD}",
            "api_key = <your-api-key-here>",
            "password: aaaaaaaaaaaa1",  # low entropy
        ],
    ),
}


@pytest.mark.parametrize(("detector", "text", "value"), [(d, t, v) for d, (pos, _) in CASES.items() for t, v in pos])
def test_detector_finds_valid_values(detector: str, text: str, value: str) -> None:
    assert found(text, detector) == [value]


@pytest.mark.parametrize(("detector", "text"), [(d, t) for d, (_, neg) in CASES.items() for t in neg])
def test_detector_rejects_invalid_values_and_near_misses(detector: str, text: str) -> None:
    assert found(text, detector) == []


def test_every_registered_detector_is_tested_and_documented() -> None:
    assert set(DETECTORS) == set(CASES)
    for det in DETECTORS.values():
        assert det.description
        assert det.example
        assert any(m.detector == det.id for m in find(det.example.replace("\\n", "\n"))), det.id


def test_luhn_iban_and_issuer_checks() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert card_issuer_ok("4111111111111111")
    assert not card_issuer_ok("1111111111111111")
    assert not card_issuer_ok("378282246310005" + "0")  # Amex is 15 digits only
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST12345698765431")
    assert not iban_valid("GB82WEST1234569876543")


def test_random_order_numbers_rarely_match_as_cards() -> None:
    """Random 16-digit references match as cards 2.5% of the time (123/5000, seed 7), exactly those that pass both
    checks.

    Luhn alone passes 10% of random numbers; issuer prefixes and lengths cut that by four. The rest *are* valid card
    numbers as far as any offline check can tell, so a redactor should mask them.
    """
    rng = random.Random(7)
    numbers = ["".join(rng.choice("0123456789") for _ in range(16)) for _ in range(5000)]
    hits = sum(bool(found(f"order {n}", "credit_card")) for n in numbers)
    assert 0.01 < hits / len(numbers) < 0.03
    assert hits == sum(luhn_valid(n) and card_issuer_ok(n) for n in numbers)


def test_evidence_is_masked() -> None:
    text = "card 4111 1111 1111 1111, mail jane@example.com, key AKIAIOSFODNN7EXAMPLE, ssn 123-45-6789"
    matches = find(text)
    evidence = {m.detector: m.evidence_masked for m in matches}
    assert evidence["credit_card"] == "**** **** **** 1111"
    assert evidence["us_ssn"] == "***-**-6789"
    assert "jane" not in evidence["email"]
    assert "example" not in evidence["email"]
    assert "IOSFODNN7EXAMPLE" not in evidence["aws_access_key_id"]


def test_overlaps_keep_the_most_confident_then_longest() -> None:
    token = _jwt({"alg": "none"}, {"sub": "x"})
    matches = find(f"token={token}")
    assert [m.detector for m in matches] == ["jwt"]  # beats generic_secret (lower confidence) on the same span
    a, b, c = Match("a", 0, 10, 0.5, ""), Match("b", 5, 8, 0.9, ""), Match("c", 8, 20, 0.5, "")
    assert resolve_overlaps([a, b, c]) == [b, c]


def test_several_detectors_in_one_text_keep_offsets() -> None:
    text = "Contact jane@example.com or +44 20 7946 0958; card 5555 5555 5555 4444."
    assert [(m.detector, text[m.start : m.end]) for m in find(text)] == [
        ("email", "jane@example.com"),
        ("phone", "+44 20 7946 0958"),
        ("credit_card", "5555 5555 5555 4444"),
    ]


def test_config_selects_detectors_and_confidence() -> None:
    text = "jane@example.com 415-555-2671"
    assert [m.detector for m in find(text, PiiConfig(detectors=("email",)))] == ["email"]
    assert [m.detector for m in find(text, PiiConfig(min_confidence=0.8))] == ["email"]  # national phone is 0.7


def test_limits_and_bad_input_raise_clear_errors() -> None:
    with pytest.raises(LimitExceeded, match="PII input size exceeded: 11 characters > max_chars=10"):
        find("x" * 11, PiiConfig(max_chars=10))
    with pytest.raises(UsageError, match="needs a str"):
        find(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown PII detector"):
        PiiConfig(detectors=("nope",))
    with pytest.raises(UsageError, match="max_chars"):
        PiiConfig(max_chars=0)
    with pytest.raises(UsageError, match="min_confidence"):
        PiiConfig(min_confidence=1.5)


def test_entropy() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
