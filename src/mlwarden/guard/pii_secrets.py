"""Detectors of credentials in model outputs: cloud and SaaS tokens, private keys, JWTs and generic secrets.

Tokens are recognised by the prefixes their issuers document (AWS key ids, GitHub, GitLab, Slack, Stripe),
which makes them precise; JWTs by decoding their header (RFC 7519); PEM private keys by their armour
(RFC 7468); and secrets without a format by a keyword followed by a high-entropy value, the approach of
truffleHog and Yelp's detect-secrets. Importing :mod:`mlwarden.guard.pii` registers them all.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter

from mlwarden.guard.pii import PiiConfig, RegexDetector, Validator, mask_secret, register

# --- credentials with documented prefixes ----------------------------------------------------------------------


def _always(confidence: float) -> Validator:
    return lambda m, text, config: confidence


def _token(
    id: str, description: str, example: str, pattern: str, prefix_len: int, confidence: float, trigger: str
) -> None:
    """Register a prefixed-token detector; ``trigger``: the prefixes of ``pattern``, exactly as it spells them."""
    validate, mask = _always(confidence), mask_secret(prefix_len)
    register(RegexDetector(id, description, example, pattern, validate, mask, trigger=re.compile(trigger)))


_token(
    "aws_access_key_id",
    "AWS access key id (AKIA long-term, ASIA temporary, and other documented 4-letter prefixes)",
    "AKIAIOSFODNN7EXAMPLE",
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])",
    4,
    0.95,
    "AKIA|ASIA|ABIA|ACCA|A3T",
)
_token(
    "github_token",
    "GitHub token: ghp_/gho_/ghu_/ghs_/ghr_ classic tokens and github_pat_ fine-grained tokens",
    "ghp_" + "a" * 36,
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])",
    4,
    0.97,
    "gh[pousr]_|github_pat_",
)
_token(
    "gitlab_token",
    "GitLab personal, deploy, runner or CI token (glpat-, gldt-, glrt-, glcbt- prefixes)",
    "glpat-" + "a" * 20,
    r"(?<![A-Za-z0-9_-])(?:glpat|gldt|glrt|glcbt|glptt|glsoat)-[A-Za-z0-9_-]{20,64}(?![A-Za-z0-9_-])",
    6,
    0.95,
    "glpat|gldt|glrt|glcbt|glptt|glsoat",
)
_token(
    "slack_token",
    "Slack bot/user/app token (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xapp-) or incoming-webhook URL",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    r"(?<![A-Za-z0-9-])(?:xox[abprs]-[0-9A-Za-z-]{10,250}|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+"
    r"|https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,})(?![A-Za-z0-9-])",
    5,
    0.95,
    r"xox[abprs]-|xapp-|https://hooks\.slack\.com/services/",
)
_token(
    "stripe_key",
    "Stripe secret or restricted API key (sk_/rk_ live or test) or webhook signing secret (whsec_)",
    "sk_live_" + "a" * 24,
    r"(?<![A-Za-z0-9_])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}|whsec_[A-Za-z0-9]{24,})(?![A-Za-z0-9_])",
    8,
    0.95,
    "(?:sk|rk)_(?:live|test)_|whsec_",
)

# --- PEM private keys (RFC 7468); a block without its END line is still a key -----------------------------------

register(
    RegexDetector(
        "private_key",
        "PEM private key block (PKCS#1/#8, EC, OpenSSH, encrypted, PGP), also when truncated",
        "-----BEGIN RSA PRIVATE KEY-----\\nMIIE...\\n-----END RSA PRIVATE KEY-----",
        r"-----BEGIN ((?:[A-Z0-9]+ ){0,2})PRIVATE KEY((?: BLOCK)?)-----"
        r"(?:[\s\S]{0,16384}?-----END \1PRIVATE KEY\2-----"
        r"|(?:\r?\n[A-Za-z0-9+/=:,-][A-Za-z0-9+/=:, -]{0,200}){0,400})",
        _always(0.99),
        lambda v: v.split("\n", 1)[0].strip() + f" … ({len(v)} chars)",
        trigger=re.compile("-----BEGIN "),
    )
)

# --- JWT (RFC 7519): three base64url parts, the first a JSON header naming its "alg" -----------------------------


def b64url_json(part: str) -> object:
    """Decode one base64url JWT part as JSON, or return ``None``."""
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def _validate_jwt(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    header = b64url_json(m.group(1))
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return 0.95 if isinstance(b64url_json(m.group(2)), dict) else 0.8


register(
    RegexDetector(
        "jwt",
        "JSON Web Token: three base64url parts whose header decodes to JSON with an 'alg'",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        r"(?<![\w-])(ey[A-Za-z0-9_-]{8,2048})\.([A-Za-z0-9_-]{2,8192})\.([A-Za-z0-9_-]{0,2048})(?![\w-])",
        _validate_jwt,
        lambda v: f"{v.split('.', 1)[0][:12]}….**** ({len(v)} chars)",
        trigger=re.compile("ey"),
    )
)

# --- AWS secret access key (40 base64 chars) only near an AWS/secret keyword -----------------------------------

_AWS_SECRET_CONTEXT = re.compile(r"(?i)(?:aws|secret)[\w\s\"'.:=>-]{0,40}$")


def shannon_entropy(value: str) -> float:
    """Shannon entropy in bits per character of the value's own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _validate_aws_secret(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    value = m.group()
    in_context = _AWS_SECRET_CONTEXT.search(text, max(0, m.start() - 60), m.start()) is not None
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)
    return 0.9 if in_context and mixed and shannon_entropy(value) >= config.entropy_threshold else None


register(
    RegexDetector(
        "aws_secret_key",
        "AWS secret access key: 40 base64 characters after an 'aws'/'secret' keyword, high entropy",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
        _validate_aws_secret,
        mask_secret(0),
        trigger=re.compile("(?i)aws|secret"),  # the validator wants one of them in the 60 characters before
    )
)

# --- generic secrets: a keyword, an assignment, and a high-entropy value ---------------------------------------

_GENERIC = (
    r"(?i)\b(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|auth[_-]?key"
    r"|client[_-]?secret|credentials?|bearer)\w{0,20}[\"']?(?:\s*[:=]>?\s*|\s+is\s+|\s+)[\"'`]?"
    r"([^\s\"'`,;<>(){}\[\]]{8,128})"
)
_PLACEHOLDER = re.compile(
    r"(?i)^(?:\*+|x+|\$\{.*\}|\{\{.*\}\}|%\(.*\)s|<.*>|.*(?:redacted|example|placeholder|changeme).*)$"
)


def _validate_generic(m: re.Match[str], text: str, config: PiiConfig) -> float | None:
    value = m.group(1).rstrip(".")
    if len(value) < 8 or _PLACEHOLDER.match(value) or re.fullmatch(r"[a-z]+(?:[_.-][a-z]+)*", value):
        return None  # words, identifiers and placeholders are not secrets
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    if classes < 2 or shannon_entropy(value) < config.entropy_threshold:
        return None
    return 0.7


register(
    RegexDetector(
        "generic_secret",
        "High-entropy value after a password/secret/token/api-key keyword (Shannon entropy threshold)",
        "password = 'Tr0ub4dor&3xQ9'",
        _GENERIC,
        _validate_generic,
        mask_secret(0),
        group=1,
    )
)
