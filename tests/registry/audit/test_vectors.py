"""The RFC 6962 hashing and proofs against the public transparency-dev/merkle test vectors.

Source: https://github.com/transparency-dev/merkle at commit 417fb0c314750d94e53942e9f92e79b6d35915db (Apache-2.0).
Values transcribed from:
* ``testonly/constants.go``: ``LeafInputs``, ``NodeHashes``, ``RootHashes`` (the 8-leaf reference tree);
* ``rfc6962/rfc6962_test.go``: ``TestRFC6962Hasher`` (empty tree, empty leaf, leaf, node);
* ``cmd/proofgen/main.go``: ``inclusionProofs`` and ``consistencyProofs`` (leaf indexes there are 1-based);
* ``testdata/inclusion/**`` and ``testdata/consistency/**``: the JSON probes replayed by ``proof/verify_test.go``,
  copied verbatim into ``data/transparency_dev_probes.json`` (196 files; too many to inline readably).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mlwarden.registry.audit.errors import ProofError
from mlwarden.registry.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    TreeBuilder,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

SOURCE_COMMIT = "417fb0c314750d94e53942e9f92e79b6d35915db"
PROBES = json.loads((Path(__file__).parent / "data" / "transparency_dev_probes.json").read_text())

# testonly/constants.go LeafInputs()
LEAF_INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                           "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
# testonly/constants.go NodeHashes(): level -> hashes of complete subtrees, left to right
NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
# testonly/constants.go RootHashes(): index = tree size
ROOT_HASHES = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# cmd/proofgen/main.go inclusionProofs: (1-based leaf index, tree size, proof)
INCLUSION_PROOFS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
# cmd/proofgen/main.go consistencyProofs: (size1, size2, proof)
CONSISTENCY_PROOFS = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip

LEAVES = [leaf_hash(data) for data in LEAF_INPUTS]
TREE = MerkleTree(LEAVES)


def _hex(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_the_probe_file_is_the_cited_commit() -> None:
    assert PROBES["commit"] == SOURCE_COMMIT
    assert len(PROBES["inclusion"]) > 50
    assert len(PROBES["consistency"]) > 50


@pytest.mark.parametrize(
    ("got", "want"),
    [
        (EMPTY_ROOT, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (leaf_hash(b""), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        (leaf_hash(b"L123456"), "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"),
        (node_hash(b"N123", b"N456"), "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"),
    ],
    ids=["empty-tree", "empty-leaf", "leaf", "node"],
)
def test_rfc6962_hasher(got: bytes, want: str) -> None:
    assert got.hex() == want


def test_leaf_and_node_hashes_of_the_reference_tree() -> None:
    level = LEAVES
    for expected in NODE_HASHES:
        assert [h.hex() for h in level] == expected
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]


@pytest.mark.parametrize("size", range(len(ROOT_HASHES)))
def test_roots_for_every_size(size: int) -> None:
    want = ROOT_HASHES[size]
    assert root(LEAVES[:size]).hex() == want
    assert TREE.root(size).hex() == want
    builder = TreeBuilder()
    for leaf in LEAVES[:size]:
        builder.append(leaf)
    assert builder.root().hex() == want


@pytest.mark.parametrize(("one_based", "size", "proof"), INCLUSION_PROOFS)
def test_reference_inclusion_proofs(one_based: int, size: int, proof: list[str]) -> None:
    index = one_based - 1
    assert TREE.inclusion_proof(index, size) == _hex(proof)
    verify_inclusion(index, size, LEAVES[index], _hex(proof), bytes.fromhex(ROOT_HASHES[size]))


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY_PROOFS)
def test_reference_consistency_proofs(size1: int, size2: int, proof: list[str]) -> None:
    assert TREE.consistency_proof(size1, size2) == _hex(proof)
    verify_consistency(size1, size2, _hex(proof), bytes.fromhex(ROOT_HASHES[size1]), bytes.fromhex(ROOT_HASHES[size2]))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _probe_id(probe: dict[str, Any]) -> str:
    return str(probe["file"]).removeprefix("testdata/")


@pytest.mark.parametrize("probe", PROBES["inclusion"], ids=_probe_id)
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["leafIdx"],
        probe["treeSize"],
        _b64(probe["leafHash"]),
        [_b64(p) for p in probe["proof"] or []],
        _b64(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("probe", PROBES["consistency"], ids=_probe_id)
def test_consistency_probe(probe: dict[str, Any]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        [_b64(p) for p in probe["proof"] or []],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
