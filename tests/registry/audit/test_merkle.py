"""Properties of the RFC 6962 tree math: every proof verifies, every tampered proof fails, all roots agree."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.registry.audit.errors import ProofError
from mlwarden.registry.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    TreeBuilder,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def reference_mth(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 6962 §2.1 (recursive, split at the largest power of two below n)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def leaves_of(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"entry-{salt}-{i}".encode()) for i in range(n)]


def flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 255, 256, 257, 1000, 1025])
def test_all_roots_agree_with_the_rfc_definition(n: int) -> None:
    leaves = leaves_of(n)
    want = reference_mth(leaves)
    assert root(leaves) == want
    assert MerkleTree(leaves).root() == want
    builder = TreeBuilder()
    for leaf in leaves:
        builder.append(leaf)
    assert builder.root() == want
    assert len(builder.frontier) == n.bit_count()


def test_tree_builder_resumes_from_its_frontier() -> None:
    leaves = leaves_of(300)
    first = TreeBuilder()
    for leaf in leaves[:123]:
        first.append(leaf)
    resumed = TreeBuilder(123, first.frontier)
    for leaf in leaves[123:]:
        resumed.append(leaf)
    assert resumed.root() == reference_mth(leaves)


@pytest.mark.parametrize(("size", "frontier"), [(3, [b"\x00" * 32]), (1, [b"short"]), (-1, [])])
def test_tree_builder_refuses_a_frontier_that_cannot_be(size: int, frontier: list[bytes]) -> None:
    with pytest.raises(ProofError):
        TreeBuilder(size, frontier)


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 600))
    size = draw(st.integers(1, n))
    index = draw(st.integers(0, size - 1))
    return n, size, index


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.integers(0, 10_000))
def test_every_inclusion_proof_verifies_and_tampering_fails(params: tuple[int, int, int], bit: int) -> None:
    n, size, index = params
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    head = reference_mth(leaves[:size])
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(index, size, leaves[index], proof, head)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, flip(leaves[index], bit), proof, head)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaves[index], proof, flip(head, bit))
    if proof:
        position = bit % len(proof)
        bad = [*proof[:position], flip(proof[position], bit), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaves[index], bad, head)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaves[index], proof[:-1], head)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaves[index], [*proof, head], head)
    if size > 1:
        other = (index + 1 + bit % (size - 1)) % size
        with pytest.raises(ProofError):
            verify_inclusion(other, size, leaves[index], proof, head)
    # (index, size + 1) can verify against the size-``size`` head (e.g. 0 of 3 vs 0 of 4): RFC 6962 binds the size
    # only through the signed checkpoint, which is why checkpoints sign the size with the root.


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 600))
    new = draw(st.integers(1, n))
    old = draw(st.integers(1, new))
    return n, old, new


@settings(max_examples=150, deadline=None)
@given(two_sizes(), st.integers(0, 10_000))
def test_every_consistency_proof_verifies_and_tampering_fails(params: tuple[int, int, int], bit: int) -> None:
    n, old, new = params
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    old_root, new_root = reference_mth(leaves[:old]), reference_mth(leaves[:new])
    proof = tree.consistency_proof(old, new)
    verify_consistency(old, new, proof, old_root, new_root)
    with pytest.raises(ProofError):
        verify_consistency(old, new, proof, flip(old_root, bit), new_root)
    with pytest.raises(ProofError):
        verify_consistency(old, new, proof, old_root, flip(new_root, bit))
    if proof:
        position = bit % len(proof)
        bad = [*proof[:position], flip(proof[position], bit), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(old, new, bad, old_root, new_root)
        with pytest.raises(ProofError):
            verify_consistency(old, new, proof[:-1], old_root, new_root)
        with pytest.raises(ProofError):
            verify_consistency(old, new, [*proof, new_root], old_root, new_root)


def test_a_rewritten_history_is_not_consistent() -> None:
    leaves = leaves_of(40)
    forked = [*leaves[:10], leaf_hash(b"forged"), *leaves[11:]]
    proof = MerkleTree(forked).consistency_proof(20, 40)
    with pytest.raises(ProofError):
        verify_consistency(20, 40, proof, reference_mth(leaves[:20]), reference_mth(forked))


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 3), (0, 11)])
def test_inclusion_proof_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        MerkleTree(leaves_of(10)).inclusion_proof(index, size)


@pytest.mark.parametrize(("old", "new"), [(0, 5), (6, 5), (3, 11)])
def test_consistency_proof_out_of_range(old: int, new: int) -> None:
    with pytest.raises(ProofError):
        MerkleTree(leaves_of(10)).consistency_proof(old, new)


def test_proofs_for_many_sizes_reuse_the_cache_and_stay_correct() -> None:
    leaves = leaves_of(5000, salt=7)
    tree = MerkleTree(leaves)
    for size in (1, 255, 256, 257, 1024, 4097, 5000):
        head = reference_mth(leaves[:size]) if size < 600 else root(leaves[:size])
        for index in {0, size // 2, size - 1}:
            verify_inclusion(index, size, leaves[index], tree.inclusion_proof(index, size), head)
