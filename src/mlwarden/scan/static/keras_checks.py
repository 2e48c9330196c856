"""The Keras config walk: what each object in a model config would make ``load_model`` do.

:class:`ConfigAnalyser` walks the parsed JSON iteratively (bounded depth and node count), judges every
``{"module", "class_name", "config"}`` object against the tables in
:mod:`mlwarden.scan.static.keras_rules`, and groups the hits by rule and key. Lambda bytecode is
base64-decoded but never unmarshalled: :func:`marshal_strings` lists identifier-like strings by a
bounded byte scan of the marshal stream.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Rule
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.keras_rules import (
    CUSTOM_OBJECT,
    DANGEROUS_BUILTINS,
    DANGEROUS_MODULES,
    EXTERNAL_MODEL,
    FOREIGN_IMPORT,
    KERAS_PACKAGES,
    KERAS_PREFIXES,
    LAMBDA_BYTECODE,
    LAMBDA_FUNCTION,
    LOOKUPS,
    NAME_TRAVERSAL,
    NON_MODELING,
    NON_MODELING_API,
    NON_MODELING_MODULES,
    SUSPICIOUS_NAMES,
    TFOP_DANGER,
    TFOP_DANGER_PATTERN,
    TORCH_PICKLE,
    VOCAB_FILE,
)

MAX_CONFIG_DEPTH = 200
MAX_CONFIG_NODES = 2_000_000
_PREVIEW = 200
_MAX_CODE_B64 = 1024 * 1024


@dataclass
class _Hits:
    """Findings grouped by (rule, key) so a model with 500 custom layers gives one finding, not 500."""

    groups: dict[tuple[str, str], tuple[Rule, str, list[str], dict[str, Any]]] = field(default_factory=dict)

    def add(self, which: Rule, key: str, path: str, evidence: str, /, **details: Any) -> None:
        entry = self.groups.get((which.id, key))
        if entry is None:
            self.groups[(which.id, key)] = (which, evidence, [path], details)
        else:
            entry[2].append(path)


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "…"


def marshal_strings(raw: bytes, limit: int = 40) -> list[str]:
    """Identifier-like strings in a marshal stream, found by scanning type codes — never unmarshalling."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n and len(out) < limit:
        code = raw[i] & 0x7F
        text: bytes | None = None
        if code in (0x7A, 0x5A) and i + 1 < n:  # 'z' / 'Z': short ASCII, 1-byte length
            size, start = raw[i + 1], i + 2
        elif code in (0x61, 0x41, 0x75, 0x74) and i + 4 < n:  # 'a' 'A' 'u' 't': 4-byte length
            size, start = int.from_bytes(raw[i + 1 : i + 5], "little"), i + 5
        else:
            i += 1
            continue
        if 0 < size <= 512 and start + size <= n:
            text = raw[start : start + size]
            if all(0x20 <= b < 0x7F for b in text):
                word = text.decode("ascii")
                if word not in out:
                    out.append(word)
                i = start + size
                continue
        i += 1
    return out


def _code_evidence(code: Any) -> tuple[str, list[str]]:
    if not isinstance(code, str):
        return "no code string", []
    try:
        raw = base64.b64decode(code[:_MAX_CODE_B64])
    except (binascii.Error, ValueError):
        return f"undecodable code {code[:60]!r}", []
    names = marshal_strings(raw)
    bad = sorted(set(names) & SUSPICIOUS_NAMES)
    text = f"{len(raw)} bytes of bytecode; strings: {', '.join(names[:20]) or '-'}"
    if bad:
        text += f"; suspicious: {', '.join(bad)}"
    return text, names


def _keras_module(module: str) -> bool:
    return module.split(".", 1)[0] in KERAS_PACKAGES or module.startswith(KERAS_PREFIXES)


def _bad_name(name: str) -> bool:
    return name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]+", name)


class ConfigAnalyser:
    """One walk over a parsed Keras config; hits are grouped in ``hits``, embedded pickles kept in ``embedded``."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.hits = _Hits()
        self.done: set[int] = set()
        self.embedded: list[tuple[str, bytes]] = []

    def walk(self, root: Any) -> None:
        """Visit every value of ``root`` iteratively, judging each object that has a ``class_name``."""
        stack: list[tuple[Any, str, int]] = [(root, "$", 0)]
        seen = 0
        while stack:
            node, path, depth = stack.pop()
            seen += 1
            if seen % 10_000 == 0:
                self.ctx.check_time()
            if seen > MAX_CONFIG_NODES:
                raise LimitExceeded("keras_config_nodes", f"more than {MAX_CONFIG_NODES} values in config")
            if depth > MAX_CONFIG_DEPTH:
                raise LimitExceeded("keras_config_depth", f"config nested deeper than {MAX_CONFIG_DEPTH}")
            if isinstance(node, dict):
                if isinstance(node.get("class_name"), str):
                    self.obj(node, path)
                children: Iterator[tuple[str, Any]] = ((f"{path}.{k}", v) for k, v in node.items())
            elif isinstance(node, list):
                children = ((f"{path}[{i}]", v) for i, v in enumerate(node))
            else:
                continue
            stack.extend((v, p, depth + 1) for p, v in reversed(list(children)))

    def obj(self, o: dict[str, Any], path: str) -> None:
        """Judge one serialised Keras object (layer, function, initializer...) found at ``path``."""
        cls: str = o["class_name"]
        cfg = o.get("config")
        cfg_d = cfg if isinstance(cfg, dict) else {}
        label = cfg_d.get("name") or o.get("name") or cls
        if cls == "__lambda__" and id(o) not in self.done:
            code = cfg_d.get("code")
            if code is None and isinstance(cfg_d.get("value"), list) and cfg_d["value"]:
                code = cfg_d["value"][0]
            self._lambda(path, str(label), code)
        elif cls == "Lambda":
            self._lambda_layer(cfg_d, path, str(label))
        elif cls == "TFOpLambda":
            fn = cfg_d.get("function")
            if isinstance(fn, str) and TFOP_DANGER_PATTERN.search(fn):
                self.hits.add(TFOP_DANGER, fn, path, f"TFOpLambda {label!r} calls tf.{fn}", function=fn)
        elif cls == "TorchModuleWrapper" and isinstance(cfg_d.get("module"), str):
            self.hits.add(
                TORCH_PICKLE,
                path,
                path,
                f"TorchModuleWrapper {label!r} embeds {len(cfg_d['module'])} base64 characters of pickled module",
            )
            self._embed(path, cfg_d["module"])
        elif cls == "TFSMLayer":
            target = cfg_d.get("filepath")
            self.hits.add(
                EXTERNAL_MODEL, str(target), path, f"TFSMLayer {label!r} loads {_clip(target)}", filepath=_clip(target)
            )
        elif cls in LOOKUPS and isinstance(cfg_d.get("vocabulary"), str):
            vocab = cfg_d["vocabulary"]
            remote = "://" in vocab
            self.hits.add(
                VOCAB_FILE,
                vocab,
                path,
                f"{cls} {label!r} reads vocabulary from {_clip(vocab)}",
                vocabulary=_clip(vocab),
                **({"remote": True} if remote else {}),
            )
        for name in (cfg_d.get("name"), o.get("name")):
            if isinstance(name, str) and _bad_name(name):
                self.hits.add(NAME_TRAVERSAL, name, path, f"{cls} named {_clip(name)}", name=_clip(name))
        if "module" in o:
            self._module(o, cls, cfg, path)

    def _lambda(self, path: str, label: str, code: Any) -> None:
        text, names = _code_evidence(code)
        self.hits.add(LAMBDA_BYTECODE, path, path, f"Lambda {label!r}: {text}", names=names[:40])

    def _lambda_layer(self, cfg: dict[str, Any], path: str, label: str) -> None:
        for slot in ("function", "output_shape", "mask"):
            value = cfg.get(slot)
            kind = cfg.get(f"{slot}_type")
            if isinstance(value, dict) and value.get("class_name") == "__lambda__":
                self.done.add(id(value))
                inner_raw = value.get("config")
                inner: dict[str, Any] = inner_raw if isinstance(inner_raw, dict) else {}
                code = inner.get("code")
                if code is None and isinstance(inner.get("value"), list) and inner["value"]:
                    code = inner["value"][0]
                self._lambda(f"{path}.config.{slot}", label, code)
            elif kind == "lambda" and isinstance(value, list | str):  # Keras 2: [code, defaults, closure]
                self._lambda(f"{path}.config.{slot}", label, value[0] if isinstance(value, list) else value)
            elif slot == "function" and value is not None:
                if isinstance(value, dict):
                    target = f"{value.get('module')}.{value.get('config') or value.get('class_name')}"
                else:  # Keras 2: function name looked up in the globals of config["module"]
                    module = str(cfg.get("module") or "?")
                    target = f"{module}.{value}"
                    if module.split(".", 1)[0] in DANGEROUS_MODULES:
                        self.hits.add(
                            FOREIGN_IMPORT,
                            target,
                            path,
                            f"Lambda {label!r} imports {_clip(target)}",
                            target=_clip(target),
                        )
                self.hits.add(
                    LAMBDA_FUNCTION, target, path, f"Lambda {label!r} calls {_clip(target)}", function=_clip(target)
                )

    def _module(self, o: dict[str, Any], cls: str, cfg: Any, path: str) -> None:
        module = o.get("module")
        registered = o.get("registered_name")
        if cls == "function" and isinstance(cfg, str):
            name = cfg
        elif cls == "__typespec__":
            name = str(o.get("spec_name"))
        elif cls.startswith("__"):
            return
        else:
            name = cls
        if module is None:
            key = str(registered or name)
            self.hits.add(
                CUSTOM_OBJECT,
                key,
                path,
                f"custom {'function' if cls == 'function' else 'object'} {_clip(key)}",
                object=_clip(key),
            )
            return
        module = str(module)
        qualified = f"{module}.{name}"
        if _keras_module(module) or (cls == "__typespec__" and module.startswith("tensorflow.")):
            parts = set(module.split("."))
            if name in NON_MODELING or parts & NON_MODELING_MODULES:
                self.hits.add(
                    NON_MODELING_API, qualified, path, f"references {_clip(qualified)}", target=_clip(qualified)
                )
            return
        top = module.split(".", 1)[0]
        if top in DANGEROUS_MODULES:
            if module == "builtins" and cls == "function" and name not in DANGEROUS_BUILTINS:
                self.hits.add(CUSTOM_OBJECT, name, path, f"custom function {_clip(name)}", object=_clip(name))
            else:
                self.hits.add(FOREIGN_IMPORT, qualified, path, f"imports {_clip(qualified)}", target=_clip(qualified))
        elif isinstance(registered, str) and registered and registered != "function":
            self.hits.add(
                CUSTOM_OBJECT,
                registered,
                path,
                f"custom object {_clip(registered)} from module {_clip(module)}",
                object=_clip(registered),
                module=_clip(module),
            )
        else:
            self.hits.add(FOREIGN_IMPORT, qualified, path, f"imports {_clip(qualified)}", target=_clip(qualified))

    def _embed(self, path: str, text: str) -> None:
        if len(text) > self.ctx.limits.max_header_size * 4 // 3:
            raise LimitExceeded("max_header_size", f"embedded module at {path} is {len(text)} characters")
        try:
            self.embedded.append((path, base64.b64decode(text)))
        except (binascii.Error, ValueError):
            return
