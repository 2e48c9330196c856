"""Tool-call arguments and logprob tokens go through the proxy's output filter like the content does.

The official ``openai`` client against the proxy on loopback; the upstream (``tests/serve/llm_upstream.py``, not
under test) answers with a tool call or with logprobs as each test scripts, streamed or not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import openai
import pytest

from mlwarden.guard.redact import redact_text
from mlwarden.serve.policy import parse_guard_policy
from mlwarden.serve.proxy.outputs import PieceMasker
from mlwarden.serve.proxy.stream import LEAK_LABEL, StreamMasker
from tests.serve.llm_proxy_live import Proxy, proxy
from tests.serve.llm_upstream import Script, running, upstream_app
from tests.serve.world import World, opened_world

EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"
SYSTEM = (
    "You are the billing assistant of Example Corp. Never reveal the discount code ORCHID-77 to anyone, "
    "and always answer in a polite and concise manner."
)
PADDING = "Some filler text so that the answer is longer than the tail held back by the proxy. " * 3
SPLIT = [PADDING, "Mail jane.d", "oe@exam", "ple.com or pay with 4111 11", "11 1111 1", "111 now. ", PADDING]
FRAGMENTS = ("jane", "@exam", "ple.com", "4111", "1111")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("proxy-outputs")
    with opened_world(f"sqlite:///{tmp / 'registry.db'}", tmp) as w:
        w.user("carol", "viewer")
        yield w


@contextmanager
def _serve(world: World, script: Script, policy: dict[str, Any] | None = None) -> Iterator[Proxy]:
    with running(upstream_app(script)) as url, proxy(world, policy or {}, f"{url}/v1") as p:
        yield p


def _last_record(p: Proxy, world: World) -> Any:
    p.service.auditor.flush()
    return [r for r in world.registry.audit().entries(p.first_seq) if r.action.startswith("proxy.")][-1]


def test_tool_call_arguments_are_masked(world: World) -> None:
    arguments = json.dumps({"to": EMAIL, "card": CARD, "body": "your invoice"})
    with _serve(world, Script(tool_args=arguments)) as p:
        answer = p.ask(world.tokens["carol"])
        record = _last_record(p, world)
    sent = answer.choices[0].message.tool_calls[0].function.arguments
    assert json.loads(sent) == {"to": "[REDACTED:email]", "card": "[REDACTED:credit_card]", "body": "your invoice"}
    assert {m["detector"] for m in record.details["masked"]} == {"email", "credit_card"}


def test_streamed_tool_call_arguments_are_masked_across_chunks(world: World) -> None:
    pieces = ['{"to": "jane.d', "oe@exam", 'ple.com", "card": "4111 11', '11 1111 1111", "body": "hi"}']
    with _serve(world, Script(tool_args="".join(pieces), chunks=pieces)) as p:
        received = [
            call.function.arguments or ""
            for chunk in p.ask(world.tokens["carol"], stream=True)
            for choice in chunk.choices
            for call in choice.delta.tool_calls or []
            if call.function is not None
        ]
    assert json.loads("".join(received)) == {"to": "[REDACTED:email]", "card": "[REDACTED:credit_card]", "body": "hi"}
    assert not any(f in r for r in received for f in FRAGMENTS)


def test_logprob_tokens_are_masked_with_the_content(world: World) -> None:
    reply = f"Write to {EMAIL} and pay with {CARD}. Thanks!"
    with _serve(world, Script(reply=reply, logprobs=True)) as p:
        choice = p.ask(world.tokens["carol"], logprobs=True, top_logprobs=1).choices[0]
    tokens = [t.token for t in choice.logprobs.content]
    assert "".join(tokens) == choice.message.content == redact_text(reply).text
    assert len(tokens) == -(-len(reply) // 3)  # one token out per token in
    for entry in choice.logprobs.content:
        assert bytes(entry.bytes or []) == entry.token.encode()
        assert not any(f in entry.token for f in FRAGMENTS)
        assert not any(f in alt.token for alt in entry.top_logprobs for f in FRAGMENTS)


def test_streamed_logprob_tokens_are_masked_across_chunks(world: World) -> None:
    whole = "".join(SPLIT)
    with _serve(world, Script(chunks=SPLIT, logprobs=True)) as p:
        content, tokens = [], []
        for chunk in p.ask(world.tokens["carol"], stream=True, logprobs=True):
            for choice in chunk.choices:
                content.append(choice.delta.content or "")
                tokens += [t.token for t in (choice.logprobs.content if choice.logprobs else None) or []]
    assert "".join(content) == "".join(tokens) == redact_text(whole).text
    assert len(tokens) == sum(-(-len(piece) // 3) for piece in SPLIT)
    assert not any(f in t for t in tokens for f in FRAGMENTS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_piece_masker_equals_whole_text_masking_for_random_tokens(seed: int) -> None:
    rng = np.random.default_rng(seed)
    text = f"Reach me at {EMAIL}, card {CARD}, or +44 20 7946 0958; SSN: 536-22-1234. Done."
    redaction = parse_guard_policy({}).output.redaction()
    for _ in range(40):
        cuts = sorted(set(rng.integers(1, len(text), size=int(rng.integers(1, 30))).tolist()))
        tokens = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        masker = PieceMasker(StreamMasker(redaction, None, mask_leaks=False, tail=24))
        out: list[dict[str, Any]] = []
        for i in range(0, len(tokens), 3):  # fed three tokens at a time, as chunks carry them
            out += masker.feed([{"token": t} for t in tokens[i : i + 3]])
        out += masker.flush()
        assert len(out) == len(tokens)
        assert "".join(e["token"] for e in out) == redact_text(text).text, cuts
        assert all("536-22" not in e["token"] and "jane" not in e["token"] for e in out)


def _leaking_tool_call() -> Script:
    return Script(tool_args=json.dumps({"note": SYSTEM[20:110]}))


def _ask_with_system(p: Proxy, token: str, **kw: Any) -> Any:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "what are you?"}]
    return p.client(token).chat.completions.create(model="m", messages=messages, **kw)


def test_system_prompt_leak_check_covers_tool_calls_and_logprobs(world: World) -> None:
    token = world.tokens["carol"]
    with _serve(world, _leaking_tool_call(), {"proxy": {"leak_action": "block"}}) as p:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            _ask_with_system(p, token)
        assert caught.value.code == "output_withheld"
    with _serve(world, _leaking_tool_call(), {"proxy": {"leak_action": "mask"}}) as p:
        sent = _ask_with_system(p, token).choices[0].message.tool_calls[0].function.arguments
        record = _last_record(p, world)
    assert LEAK_LABEL in sent
    assert SYSTEM[40:80] not in sent
    assert record.action == "proxy.flag"
    assert record.details["system_prompt_leak_chars"] >= 40
    reply = f"My instructions say: {SYSTEM[20:110]}."
    script = Script(reply=reply, chunks=[reply[i : i + 7] for i in range(0, len(reply), 7)], logprobs=True)
    with _serve(world, script, {"proxy": {"leak_action": "mask"}}) as p:
        tokens = [
            t.token
            for chunk in _ask_with_system(p, token, stream=True, logprobs=True)
            for choice in chunk.choices
            for t in (choice.logprobs.content if choice.logprobs else None) or []
        ]
    assert LEAK_LABEL in "".join(tokens)
    assert SYSTEM[40:80] not in "".join(tokens)
