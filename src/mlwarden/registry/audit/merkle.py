"""RFC 6962 Merkle tree math: hashes, roots, inclusion and consistency proofs, and their verification.

Pure functions over SHA-256 hashes (``bytes`` of 32), no database. The definitions are those of RFC 6962 §2.1,
restated with the verification algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2:

* leaf hash ``H(0x00 || entry)``, node hash ``H(0x01 || left || right)``, empty tree ``H()``;
* ``MTH(D[n])`` splits at the largest power of two smaller than ``n``, which is the same as hashing level by level
  and carrying an odd last node up unchanged — the form used here, because it needs no recursion and streams.

Why three ways to get a root: :func:`root` hashes a list level by level (the fastest for one root);
:class:`TreeBuilder` takes leaves one at a time in O(log n) memory and gives the root at any size (verification streams
a million rows through it and checks every checkpoint on the way); :class:`MerkleTree` answers proofs for any tree
size, caching the big complete subtrees so that many proofs over one tree cost little more than one.

Edge cases follow the transparency-dev/merkle reference (tests replay its vectors): a consistency proof from the empty
tree is meaningless and refused, equal sizes need an empty proof and equal roots, every hash must be 32 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256

from mlwarden.registry.audit.errors import ProofError

HASH_SIZE = 32
#: Root of the empty tree: SHA-256 of nothing.
EMPTY_ROOT = sha256(b"").digest()
_LEAF, _NODE = b"\x00", b"\x01"
#: Complete subtrees of at least 2**_CACHE_HEIGHT leaves are memoised by :class:`MerkleTree`.
_CACHE_HEIGHT = 8


def leaf_hash(entry: bytes) -> bytes:
    """``H(0x00 || entry)``: the hash of one log entry."""
    return sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 || left || right)``: the hash of an interior node."""
    return sha256(_NODE + left + right).digest()


def _level_up(level: Sequence[bytes]) -> list[bytes]:
    """Hash neighbours pairwise; an odd last node moves up unchanged (RFC 6962's left-balanced tree)."""
    parents = [sha256(_NODE + left + right).digest() for left, right in zip(level[0::2], level[1::2], strict=False)]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of the leaves whose hashes are given (:data:`EMPTY_ROOT` for none), level by level."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level: Sequence[bytes] = leaf_hashes
    while len(level) > 1:
        level = _level_up(level)
    return level[0]


class TreeBuilder:
    """A growing tree kept as its frontier (the roots of its complete subtrees, biggest first): O(log n) memory.

    ``append`` costs one leaf plus, amortised, one node hash; ``root`` folds the frontier right to left. The frontier
    at a checkpoint's size is stored with the checkpoint, so the next checkpoint only hashes the entries since.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Resume a tree of ``size`` leaves from its frontier (the default: an empty tree).

        Raises:
            ProofError: the frontier does not have one 32-byte hash per set bit of ``size``.
        """
        if size < 0 or len(frontier) != size.bit_count() or any(len(h) != HASH_SIZE for h in frontier):
            raise ProofError(f"a frontier of a {size}-leaf tree has {size.bit_count()} hashes of {HASH_SIZE} bytes")
        self.size = size
        self._frontier = list(frontier)

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Roots of the complete subtrees, biggest (leftmost) first."""
        return tuple(self._frontier)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        frontier, carry = self._frontier, self.size
        frontier.append(leaf)
        while carry & 1:
            right = frontier.pop()
            frontier[-1] = sha256(_NODE + frontier[-1] + right).digest()
            carry >>= 1
        self.size += 1

    def append_subtree(self, node: bytes, height: int) -> None:
        """Add a complete subtree of ``2**height`` leaves by its root; the size must be a multiple of its width."""
        width = 1 << height
        if self.size % width:
            raise ProofError(f"a subtree of {width} leaves cannot start at position {self.size}")
        frontier, carry = self._frontier, self.size >> height
        frontier.append(node)
        while carry & 1:
            right = frontier.pop()
            frontier[-1] = sha256(_NODE + frontier[-1] + right).digest()
            carry >>= 1
        self.size += width

    def extended(self, frontier: Sequence[bytes], count: int) -> TreeBuilder:
        """A copy grown by ``count`` leaves given as their frontier (how ranges replayed apart are joined)."""
        joined = TreeBuilder(self.size, self._frontier)
        heights = [h for h in range(count.bit_length() - 1, -1, -1) if count >> h & 1]
        if len(heights) != len(frontier):
            raise ProofError(f"a frontier of {count} leaves has {len(heights)} hashes, not {len(frontier)}")
        for node, height in zip(frontier, heights, strict=True):
            joined.append_subtree(node, height)
        return joined

    def root(self) -> bytes:
        """The tree head at the current size."""
        return frontier_root(self._frontier)


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """The root of a tree given its frontier (complete subtree roots, biggest first): fold right to left."""
    if not frontier:
        return EMPTY_ROOT
    acc = frontier[-1]
    for node in reversed(frontier[:-1]):
        acc = sha256(_NODE + node + acc).digest()
    return acc


class MerkleTree:
    """Proofs over a fixed list of leaf hashes, for any tree size up to its length (RFC 9162 §2.1.3.1, §2.1.4.1)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        """Wrap the leaf hashes (not copied; the caller must not change them)."""
        self._leaves = leaf_hashes
        self._cache: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self._leaves)

    def _complete(self, start: int, height: int) -> bytes:
        """Hash of the complete subtree of ``2**height`` leaves from ``start``; big ones are memoised."""
        if height < _CACHE_HEIGHT:
            return root(self._leaves[start : start + (1 << height)])
        key = (start, height)
        cached = self._cache.get(key)
        if cached is None:
            half = 1 << (height - 1)
            cached = node_hash(self._complete(start, height - 1), self._complete(start + half, height - 1))
            self._cache[key] = cached
        return cached

    def range_root(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])``: complete subtrees for the binary digits of the length, folded right to left."""
        if start == end:
            return EMPTY_ROOT
        parts: list[bytes] = []
        at, remaining = start, end - start
        while remaining:
            height = remaining.bit_length() - 1
            parts.append(self._complete(at, height))
            at += 1 << height
            remaining -= 1 << height
        acc = parts[-1]
        for node in reversed(parts[:-1]):
            acc = node_hash(node, acc)
        return acc

    def root(self, size: int | None = None) -> bytes:
        """The tree head at ``size`` leaves (default: all)."""
        return self.range_root(0, self._check_size(size))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return len(self._leaves)
        if not 0 <= size <= len(self._leaves):
            raise ProofError(f"tree size {size} is outside 0..{len(self._leaves)}")
        return size

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[size])``: the audit path of leaf ``index`` in the tree of ``size`` leaves, leaf up."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
        top_down: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                top_down.append(self.range_root(start + k, end))
                end = start + k
            else:
                top_down.append(self.range_root(start, start + k))
                start, m = start + k, m - k
        return top_down[::-1]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """``PROOF(old_size, D[new_size])`` (RFC 6962 §2.1.2): empty for equal sizes."""
        n = self._check_size(new_size)
        if not 0 < old_size <= n:
            raise ProofError(f"no consistency proof from size {old_size} to size {n} (need 0 < old <= new)")
        top_down: list[bytes] = []
        start, end, m, complete = 0, n, old_size, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                top_down.append(self.range_root(start + k, end))
                end = start + k
            else:
                top_down.append(self.range_root(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            top_down.append(self.range_root(start, end))
        return top_down[::-1]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hashes(*hashes: bytes) -> None:
    for value in hashes:
        if len(value) != HASH_SIZE:
            raise ProofError(f"a hash has {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` at ``index`` in a tree of ``size`` (RFC 9162 §2.1.3.2).

    Raises:
        ProofError: the index is outside the tree, a hash is not 32 bytes, or the proof has the wrong length.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    _check_hashes(leaf, *proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Check that ``leaf`` is entry ``index`` of the tree of ``size`` leaves whose head is ``expected_root``.

    Raises:
        ProofError: the proof is malformed or leads to a different root.
    """
    if root_from_inclusion_proof(index, size, leaf, proof) != expected_root:
        raise ProofError(f"the inclusion proof of leaf {index} does not lead to the root of tree size {size}")


def verify_consistency(  # noqa: C901 - RFC 9162 §2.1.4.2 step by step reads best as one function
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree of ``new_size`` with head ``new_root`` extends the one of ``old_size`` (RFC 9162 §2.1.4.2).

    Raises:
        ProofError: sizes out of order, an empty old tree (nothing to prove), a malformed proof, or roots that do not
            match.
    """
    _check_hashes(*proof)  # roots are only compared: one of the wrong length simply never matches
    if new_size < old_size:
        raise ProofError(f"new size {new_size} is smaller than old size {old_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise ProofError("equal sizes need an empty consistency proof")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a complete old tree is its own first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root:
        raise ProofError(f"the consistency proof does not lead to the root of tree size {old_size}")
    if sr != new_root:
        raise ProofError(f"the consistency proof does not lead to the root of tree size {new_size}")
