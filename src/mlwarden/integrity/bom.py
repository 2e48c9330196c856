"""The ML-BOM: a CycloneDX 1.6 JSON bill of materials for one model version.

A registry stores one per registered version so that, long after training, anyone can answer "which bytes,
trained on which data, needing which framework and packages?" with a standard document that SBOM tooling
(Dependency-Track, cyclonedx-cli, ...) already reads. It is built with ``cyclonedx-python-lib``, never by hand.

What goes where (decisions a reader of the JSON needs):

* ``metadata.component`` is the model, ``type: machine-learning-model``, ``bom-ref`` ``model:<name>@<version>``.
  Its one SHA-256 hash is :attr:`ModelManifest.digest`: for a single file, the file's own SHA-256; for a
  folder, the SHA-256 of its ``sha256sum``-style listing (reproducible with ``sha256sum``, see
  :mod:`mlwarden.integrity.hashing`) — the same digest the registry and the loader report. A folder model
  also nests one ``type: file`` component per file (name = path relative to the model root) with that
  file's SHA-256, so every byte is pinned individually. Property ``mlwarden:digest-method`` says which rule
  produced the model hash.
* The framework (``torch``, ``onnx``, ...) is a ``type: framework`` component with a ``pkg:pypi`` purl when it
  is a Python distribution; every other package is a ``type: library`` component with purl
  ``pkg:pypi/<normalised name>@<version>`` (its ``bom-ref`` is the purl).
* Each dataset is a ``type: data`` component (``bom-ref`` ``dataset:<name>@sha256:<digest>``) with the
  dataset's overall SHA-256, its licence, and its source (an external ``distribution`` reference when it is
  a URL, always the property ``mlwarden:dataset-source``).
* ``dependencies``: the model depends on its framework, its datasets and on any package nothing else pulls
  in; each package depends on the packages of the set it declares (``Requires-Dist``) when the installed
  distribution has the recorded version; otherwise it is listed without edges rather than guessed.
"""

from __future__ import annotations

import importlib.metadata
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cyclonedx import spdx
from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, License, LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from mlwarden._version import __version__
from mlwarden.core.errors import UsageError
from mlwarden.integrity.hashing import ModelManifest, hash_model
from mlwarden.integrity.keys import PublicKey

#: Framework name (as the loader and dynamic engine name it) -> the Python distributions it needs, main first.
FRAMEWORK_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchscript": ("torch",),
    "keras": ("keras", "h5py"),
    "tensorflow": ("tensorflow",),
    "onnx": ("onnx", "onnxruntime"),
    "safetensors": ("safetensors",),
    "gguf": ("gguf",),
    "xgboost": ("xgboost",),
    "lightgbm": ("lightgbm",),
    "joblib": ("joblib", "scikit-learn"),
    "sklearn": ("scikit-learn", "joblib"),
    "numpy": ("numpy",),
    "pickle": (),  # Python's standard library
}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalise_package(name: str) -> str:
    """PEP 503 normalised distribution name (``Scikit_Learn`` -> ``scikit-learn``), as purls spell it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256_hex(value: str, what: str) -> str:
    text = value.lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(text):
        raise UsageError(f"{what}: expected a SHA-256 digest (64 hex digits), got {value!r}")
    return text


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A dataset as the ML-BOM names it.

    Attributes:
        name: the dataset's name.
        digest: SHA-256 (hex, optionally ``sha256:``-prefixed) over the dataset's files, as its manifest states.
        source: where it came from (a URL or free text), when known.
        license: an SPDX id or expression, or a licence name, when known.
        manifest_digest: SHA-256 (hex) of the manifest file it was read from, so the BOM points at it.
    """

    name: str
    digest: str
    source: str | None = None
    license: str | None = None
    manifest_digest: str | None = None

    @classmethod
    def from_manifest_bundle(cls, path: Path | str, public_key: PublicKey | Path | str | None = None) -> DatasetRef:
        """Read a dataset manifest (signed bundle or unsigned statement) written by ``mlwarden data manifest``.

        Args:
            path: the manifest file.
            public_key: when given, the bundle's signature must verify with it (a key or a PEM file path).

        Raises:
            VerificationError: the file is missing, truncated, not a dataset manifest, or does not verify.
        """
        from mlwarden.integrity.dataset import PREDICATE_TYPE, load_statement, manifest_from_statement

        loaded = load_statement(path, public_key, predicate_type=PREDICATE_TYPE, what="dataset manifest")
        manifest = manifest_from_statement(loaded.statement, f"dataset manifest {path}")
        return cls(
            name=manifest.name,
            digest=manifest.digest,
            source=manifest.source or None,
            license=manifest.license or None,
            manifest_digest=loaded.sha256,
        )


def _license(text: str) -> License:
    """An SPDX id if it is one, else an SPDX expression, else a named licence."""
    spdx_id = spdx.fixup_id(text)
    if spdx_id is not None:
        return DisjunctiveLicense(id=spdx_id)
    if spdx.is_expression(text):
        return LicenseExpression(text)
    return DisjunctiveLicense(name=text)


def _sha256(hex_digest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=hex_digest)


def _pypi_component(name: str, version: str | None, kind: ComponentType) -> Component:
    purl = PackageURL(type="pypi", name=normalise_package(name), version=version or None)
    return Component(name=normalise_package(name), version=version, type=kind, purl=purl, bom_ref=purl.to_string())


def _model_component(name: str, version: str, manifest: ModelManifest, properties: Mapping[str, str]) -> Component:
    ref = f"model:{name}@{version}"
    method = "file-sha256" if manifest.is_file else "sha256sum-listing"
    props = [
        Property(name="mlwarden:digest-method", value=method),
        Property(name="mlwarden:file-count", value=str(len(manifest.files))),
        Property(name="mlwarden:total-size", value=str(manifest.total_size)),
        *(Property(name=k, value=v) for k, v in sorted(properties.items())),
    ]
    files = (
        []
        if manifest.is_file
        else [
            Component(
                name=f.path,
                type=ComponentType.FILE,
                bom_ref=f"{ref}/file/{f.path}",
                hashes=[_sha256(f.digest)],
                properties=[Property(name="mlwarden:size", value=str(f.size))],
            )
            for f in manifest.files
        ]
    )
    return Component(
        name=name,
        version=version,
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref=ref,
        hashes=[_sha256(manifest.digest)],
        properties=props,
        components=files,
    )


def _dataset_component(dataset: DatasetRef) -> Component:
    digest = _sha256_hex(dataset.digest, f"dataset {dataset.name!r}")
    props = []
    references = []
    if dataset.source:
        props.append(Property(name="mlwarden:dataset-source", value=dataset.source))
        parts = urlsplit(dataset.source)
        if parts.scheme and (parts.netloc or parts.scheme == "file"):
            references.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(dataset.source)))
    if dataset.manifest_digest:
        props.append(Property(name="mlwarden:manifest-sha256", value=_sha256_hex(dataset.manifest_digest, "manifest")))
    return Component(
        name=dataset.name,
        type=ComponentType.DATA,
        bom_ref=f"dataset:{dataset.name}@sha256:{digest}",
        hashes=[_sha256(digest)],
        licenses=[_license(dataset.license)] if dataset.license else [],
        external_references=references,
        properties=props,
    )


def _requirement_names(requirements: Iterable[str]) -> set[str]:
    """Normalised names of the unconditional (or true-here) requirements; extras-only ones are skipped."""
    names: set[str] = set()
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is nearly always present; fall back to a plain parse
        for text in requirements:
            if "extra" not in text.partition(";")[2] and (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)):
                names.add(normalise_package(m.group()))
        return names
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(normalise_package(req.name))
    return names


def installed_requirements(name: str, version: str) -> set[str] | None:
    """What the installed distribution ``name`` requires, or None when it is absent or at another version."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    return _requirement_names(dist.requires or ())


def installed_closure(names: Iterable[str]) -> dict[str, str]:
    """The installed versions of ``names`` and of everything they require, transitively (absent ones skipped)."""
    found: dict[str, str] = {}
    pending = [normalise_package(n) for n in names]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        pending.extend(_requirement_names(dist.requires or ()) - found.keys())
    return dict(sorted(found.items()))


def build_bom(
    *,
    name: str,
    version: str,
    manifest: ModelManifest,
    framework: str | None,
    packages: Mapping[str, str],
    datasets: Sequence[DatasetRef] = (),
    properties: Mapping[str, str] = {},
    timestamp: datetime | None = None,
    requirements: Callable[[str, str], set[str] | None] = installed_requirements,
) -> str:
    """The ML-BOM of one model version as CycloneDX 1.6 JSON text (layout in the module docstring).

    Args:
        name: the model's name (registry model name).
        version: the version label.
        manifest: the model's per-file digests (:func:`~mlwarden.integrity.hashing.hash_model`).
        framework: ``torch``, ``onnx``, ... (see :data:`FRAMEWORK_PACKAGES`; other names are taken as a
            Python distribution name), or None when unknown.
        packages: distribution name -> version of the model's runtime environment.
        datasets: the datasets it was trained or evaluated on.
        properties: extra ``name -> value`` properties on the model component (use a ``prefix:`` namespace).
        timestamp: the BOM's ``metadata.timestamp`` (default: now, UTC).
        requirements: ``(name, version) -> required names`` used for the package graph (default: the
            installed distributions' metadata; None for "unknown").

    Raises:
        UsageError: an empty name or version, a model without files, or a dataset digest that is not SHA-256.
    """
    if not name.strip() or not version.strip():
        raise UsageError("an ML-BOM needs a non-empty model name and version")
    if not manifest.files:
        raise UsageError(f"model {name!r} has no files: nothing to describe in an ML-BOM")
    for f in manifest.files:
        _sha256_hex(f.digest, f"file {f.path!r}")
    bom = Bom()
    bom.metadata.timestamp = timestamp or datetime.now(UTC)
    bom.metadata.tools.components.add(_tool("mlwarden", __version__))
    bom.metadata.tools.components.add(_tool("cyclonedx-python-lib", _installed_version("cyclonedx-python-lib")))
    model = _model_component(name, version, manifest, properties)
    bom.metadata.component = model

    versions = {normalise_package(k): v for k, v in packages.items()}
    main_package = _framework_package(framework)
    libraries: dict[str, Component] = {}
    framework_component: Component | None = None
    if framework is not None:
        if main_package is None:  # pickle: the standard library
            framework_component = Component(
                name=framework, type=ComponentType.FRAMEWORK, bom_ref=f"framework:{framework}"
            )
        else:
            framework_component = _pypi_component(main_package, versions.get(main_package), ComponentType.FRAMEWORK)
            libraries[main_package] = framework_component
        framework_component.properties.add(Property(name="mlwarden:framework", value=framework))
        bom.components.add(framework_component)
    for pkg, pkg_version in sorted(versions.items()):
        if pkg not in libraries:
            libraries[pkg] = _pypi_component(pkg, pkg_version, ComponentType.LIBRARY)
            bom.components.add(libraries[pkg])
    data = [_dataset_component(d) for d in datasets]
    refs = [str(c.bom_ref) for c in data]
    if len(set(refs)) != len(refs):
        raise UsageError(f"a dataset is listed twice: {sorted(r for r in refs if refs.count(r) > 1)[0]}")
    for component in data:
        bom.components.add(component)

    pulled_in: set[str] = set()
    for pkg, component in libraries.items():
        needs = requirements(pkg, versions[pkg]) if pkg in versions else None
        edges = sorted((needs or set()) & libraries.keys() - {pkg})
        pulled_in.update(edges)
        bom.register_dependency(component, [libraries[e] for e in edges])
    roots = [libraries[p] for p in sorted(libraries.keys() - pulled_in) if libraries[p] is not framework_component]
    direct = [*([framework_component] if framework_component is not None else []), *data, *roots]
    bom.register_dependency(model, direct)
    for component in data:
        bom.register_dependency(component, [])
    if framework_component is not None and main_package is None:
        bom.register_dependency(framework_component, [])
    return JsonV1Dot6(bom).output_as_string(indent=2)


def _tool(name: str, version: str | None) -> Component:
    return _pypi_component(name, version, ComponentType.APPLICATION if name == "mlwarden" else ComponentType.LIBRARY)


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _framework_package(framework: str | None) -> str | None:
    if framework is None:
        return None
    known = FRAMEWORK_PACKAGES.get(framework)
    if known is not None:
        return known[0] if known else None
    return normalise_package(framework)


_COMPRESSED = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS}


def _file_framework(path: Path) -> str | None:
    """The framework that loads one file, judged from its content with mlwarden's sniffing."""
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.artifacts.sniff import Format, sniff
    from mlwarden.scan.dynamic.engine import choose_framework

    try:
        artifact = Artifact.from_path(path)
    except OSError:
        return None
    fmt = sniff(artifact)
    formats: list[tuple[tuple[str, ...], Format]] = [((str(path),), fmt)]
    if fmt is Format.ZIP:
        try:
            with zipfile.ZipFile(path) as archive:  # reads the central directory only
                formats += [((str(path), member), Format.UNKNOWN) for member in archive.namelist()]
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    elif fmt is Format.JOBLIB_ZF:
        return "joblib"
    elif fmt.value in _COMPRESSED:
        try:  # joblib compresses whole pickles: a pickle inside means joblib
            inner = zlib.decompressobj(_COMPRESSED[fmt.value]).decompress(artifact.head, 64)
        except zlib.error:
            return None
        return "joblib" if inner[:1] == b"\x80" else None
    by_format = {
        Format.SAFETENSORS: "safetensors",
        Format.GGUF: "gguf",
        Format.XGBOOST_JSON: "xgboost",
        Format.XGBOOST_UBJ: "xgboost",
        Format.LIGHTGBM_TEXT: "lightgbm",
        Format.SAVEDMODEL: "tensorflow",
    }
    if fmt in by_format:
        return by_format[fmt]
    framework = choose_framework(path, formats)
    return None if framework == "jinja" else framework


def guess_framework(path: Path | str, manifest: ModelManifest | None = None) -> str | None:
    """The framework of a model file or folder: that of its largest file whose framework is recognised."""
    root = Path(path)
    manifest = manifest or hash_model(root)
    files = [(f.size, root if manifest.is_file else root / f.path) for f in manifest.files]
    for _, file in sorted(files, key=lambda item: -item[0]):
        framework = _file_framework(file)
        if framework is not None:
            return framework
    return None


def bom_for_path(
    model_path: Path | str,
    *,
    name: str,
    version: str,
    framework: str | None = None,
    datasets: Sequence[DatasetRef] = (),
    ignore_paths: Sequence[str] = (),
) -> str:
    """Hash a model and describe it: the ML-BOM with its framework guessed from content when not given.

    The packages are the installed versions of the framework's distributions and everything they require
    (the environment that would load the model here); nothing else from the environment is listed.

    Raises:
        ModelPathError: the model cannot be hashed.
        UsageError: see :func:`build_bom`.
    """
    manifest = hash_model(model_path, ignore_paths=ignore_paths)
    framework = framework or guess_framework(model_path, manifest)
    packages = installed_closure(FRAMEWORK_PACKAGES.get(framework, (framework,)) if framework else ())
    return build_bom(
        name=name, version=version, manifest=manifest, framework=framework, packages=packages, datasets=datasets
    )
