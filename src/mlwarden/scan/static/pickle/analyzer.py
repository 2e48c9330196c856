"""Turn what the emulator sees into findings: judge globals, inspect calls, follow embedded payloads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from math import prod
from typing import TYPE_CHECKING, Any, BinaryIO

from mlwarden.artifacts.artifact import HEAD_SIZE, SliceReader, skip
from mlwarden.artifacts.pickle_ops import Blob, PickleFormatError, ReaderLimit, ReadersDiffer, looks_like_pickle
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Confidence, Finding, Rule
from mlwarden.scan.static.pickle import allowlist, joblib_legacy, rules
from mlwarden.scan.static.pickle.emulator import Call, Container, Emulator, Ext, Global, Hooks, Opaque, render
from mlwarden.scan.static.pickle.rules import Verdict

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

_JOBLIB_WRAPPERS = {"joblib.numpy_pickle.NumpyArrayWrapper", "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper"}
_UFUNC = {"numpy.core._ufunc_reconstruct", "numpy._core._ufunc_reconstruct", "numpy.core.umath._ufunc_reconstruct"}
_PARTIAL = {"functools.partial", "_functools.partial"}
# Allowed callables whose arguments are sizes: a huge one is a memory/CPU exhaustion, however harmless the callable.
_ALLOCATORS = frozenset(
    {
        "builtins.bytearray",
        "builtins.bytes",
        "builtins.range",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "torch.Tensor",
        *(f"torch.{n}" for n in allowlist._TORCH_STORAGES),
        *(f"torch.storage.{n}" for n in allowlist._TORCH_STORAGES),
    }
)
_DTYPE = re.compile(r"^[<>=|]?([a-zA-Z])(\d*)$")
_MAX_PREVIEWS = 3
_TRAILING_WINDOW = 1 << 20
_MAX_CANDIDATES = 256
_HIDDEN = re.compile(rb"\x80[\x02-\x05]|c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


@dataclass
class _Hit:
    """All occurrences of one judged global in one pickle stream."""

    rule: Rule
    name: str
    first_pos: int
    matched: str = ""
    count: int = 0
    calls: list[str] = field(default_factory=list)


class PickleAnalyzer(Hooks):
    """Analyses every pickle in one stream of one artifact and reports through the scan context."""

    def __init__(self, artifact: Artifact, ctx: ScanContext) -> None:
        self.artifact = artifact
        self.ctx = ctx
        self.allow = frozenset(ctx.policy.pickle.allow)
        self.deny = frozenset(ctx.policy.pickle.deny)
        self.preview = ctx.limits.max_pickle_arg_preview
        self.hits: dict[tuple[str, str], _Hit] = {}  # (rule id, global) -> occurrences
        self.by_name: dict[str, _Hit] = {}  # global (or extension) -> its hit, to attach call previews
        self.verdicts: dict[int, Verdict] = {}  # id(Global) -> verdict
        self.extra: list[Finding] = []
        self.budget = [ctx.limits.max_pickle_opcodes]
        self.called: set[str] = set()  # globals this stream calls (REDUCE, INST/OBJ with arguments)
        self.opaque_calls = False  # a call of something that is not a plain global (a partial, a computed value)

    # -- hooks -------------------------------------------------------------------------------------
    def on_global(self, g: Global) -> None:
        """Normalise and judge an imported global; anything not allowed becomes a hit."""
        g.module, g.name = rules.normalise(g.module, g.name)
        j = rules.judge(g.module, g.name, self.allow, self.deny)
        self.verdicts[id(g)] = j.verdict
        if j.rule is not None:
            self._hit(j.rule, g.full, g.pos, g.full, j.matched)

    def on_ext(self, e: Ext) -> None:
        """EXT1/2/4 callables cannot be resolved without the loader's copyreg registry."""
        self._hit(rules.UNRESOLVED, f"<copyreg extension {e.code}>", e.pos, f"<copyreg extension {e.code}>")

    def on_unresolved_global(self, pos: int, module: Any, name: Any) -> None:
        """STACK_GLOBAL operands computed at load time."""
        what = f"STACK_GLOBAL({render(module, 80)}, {render(name, 80)})"
        self._hit(rules.UNRESOLVED, what, pos, what)

    def on_call(self, call: Call) -> None:
        """Attach call previews, check conditional helpers and follow embedded payloads."""
        func = call.func
        calls_it = call.via == "REDUCE" or (call.via in ("INST", "OBJ") and bool(call.args))
        if isinstance(func, Global) and calls_it:
            self.called.add(func.full)
        elif not isinstance(func, Global) and calls_it:
            self.opaque_calls = True
        if isinstance(func, Global):
            verdict = self.verdicts.get(id(func))
            if func.full in self.by_name:
                self._preview(self.by_name[func.full], call)
            if verdict is Verdict.CONDITIONAL:
                self._conditional(func, call)
            elif verdict is Verdict.ALLOWED:
                if func.full in _ALLOCATORS:
                    self._allocation(func, call)
                elif calls_it:
                    self._capable_call(func, call)  # INST/OBJ without arguments only run __new__, like NEWOBJ
                return
        elif isinstance(func, Ext):
            hit = self.by_name.get(f"<copyreg extension {func.code}>")
            if hit is not None:
                self._preview(hit, call)
        self._embedded(call)

    def on_build(self, target: Any, state: Any, pos: int, stream: BinaryIO) -> None:
        """BUILD on an imported object is an attack; on a joblib wrapper it means raw array bytes follow."""
        if isinstance(target, Global):
            self.extra.append(
                rules.MUTATES_GLOBAL.finding(
                    self.artifact.location(pos),
                    f"BUILD on {target.full} with state {render(state, self.preview)}",
                    details={"global": target.full},
                )
            )
        elif isinstance(target, Call) and isinstance(target.func, Global) and target.func.full in _JOBLIB_WRAPPERS:
            self._joblib_array(state, pos, stream)
        elif joblib_legacy.wrapper_class(target) is not None:  # joblib < 0.10: the file it names is loaded
            joblib_legacy.check(self, target, state, pos)

    def on_differ(self, pos: int, message: str) -> None:
        """A parse differential between CPython's unpicklers is a finding of its own."""
        self.extra.append(rules.READERS_DIFFER.finding(self.artifact.location(pos), message))

    # -- helpers -----------------------------------------------------------------------------------
    def _hit(self, rule: Rule, name: str, pos: int, shown: str, matched: str | None = None) -> None:
        key = (rule.id, name)
        hit = self.hits.get(key)
        if hit is None:
            hit = self.hits[key] = _Hit(rule, name, pos, matched=matched or name)
            hit.calls.append(f"imports {shown}")
            self.by_name.setdefault(name, hit)
        hit.count += 1

    def _preview(self, hit: _Hit, call: Call) -> None:
        text = render(call, self.preview)
        if hit.calls and hit.calls[0].startswith("imports "):
            hit.calls[0] = text
        elif len(hit.calls) < _MAX_PREVIEWS and text not in hit.calls:
            hit.calls.append(text)

    def _capable_call(self, func: Global, call: Call) -> None:
        """A call of a class that is only data when rebuilt without its ``__init__``."""
        from mlwarden.scan.static.pickle.resolved import table

        entry = table().entries.get(func.full)
        if isinstance(entry, list) and entry[0] == allowlist.RECONSTRUCT_ONLY:
            self.extra.append(
                rules.CALLS_CAPABLE_CLASS.finding(
                    self.artifact.location(call.pos),
                    f"{render(call, self.preview)}: its __init__ reaches {entry[1]}",
                    details={"global": func.full},
                )
            )

    def _allocation(self, func: Global, call: Call) -> None:
        """Flag a size argument (an int, or a shape tuple's product) above ``max_pickle_alloc``."""
        limit = self.ctx.limits.max_pickle_alloc
        args = call.args if isinstance(call.args, tuple) else ()
        for arg in args:
            if isinstance(arg, bool):
                continue
            if isinstance(arg, int):
                size = abs(arg)
            elif isinstance(arg, tuple) and arg and all(isinstance(d, int) and not isinstance(d, bool) for d in arg):
                size = prod(abs(d) for d in arg)
            else:
                continue
            if size > limit:
                self.extra.append(
                    rules.EXHAUSTION.finding(
                        self.artifact.location(call.pos),
                        f"{render(call, self.preview)}: size {size} > max_pickle_alloc {limit}",
                        details={"global": func.full, "size": size},
                    )
                )
                return

    def _conditional(self, func: Global, call: Call) -> None:
        args = call.args if isinstance(call.args, tuple) else ()
        if func.full in _PARTIAL:
            target = args[0] if args else None
            if isinstance(target, Global):
                return  # the wrapped callable was judged on import
            self._opaque(call, "functools.partial of a callable that is not a plain global")
        elif func.full in _UFUNC:
            if len(args) == 2 and all(isinstance(a, str) for a in args):
                module, name = args
                synthetic = Global(module, name, call.pos)
                if module not in allowlist.NUMPY_UFUNC_MODULES:
                    shown = render(call, self.preview)
                    self._hit(rules.CATEGORY_RULES[rules.Category.INDIRECTION], shown, call.pos, shown)
                self.on_global(synthetic)
            else:
                self._opaque(call, "ufunc reconstruction with computed names")
        elif func.full == "torch.storage._load_from_bytes":
            if not (args and isinstance(args[0], bytes | Blob)):
                self._opaque(call, "storage bytes are not literal")
        # embedded payloads of conditional helpers are followed by _embedded()

    def _opaque(self, call: Call, why: str) -> None:
        self.extra.append(
            rules.OPAQUE_CALL.finding(self.artifact.location(call.pos), f"{why}: {render(call, self.preview)}")
        )

    def _embedded(self, call: Call) -> None:
        """Follow bytes arguments that are themselves pickles or archives (pickle.loads(b'...') and kin)."""
        args = call.args if isinstance(call.args, tuple) else ()
        for arg in args:
            if isinstance(arg, bytes | bytearray) and len(arg) >= 2:
                data = bytes(arg)
                if data[:1] == b"\x80" or data[:2] == b"PK" or looks_like_pickle(data[:HEAD_SIZE]):
                    child = self.artifact.child(
                        f"<embedded @ byte {call.pos}>", len(data), partial(_bytes_io, data), data[:HEAD_SIZE]
                    )
                    self.ctx.descend(child)
            elif isinstance(arg, Blob) and not arg.is_text:
                start, length = arg.offset, arg.length

                def opener(s: int = start, n: int = length, outer: Artifact = self.artifact) -> BinaryIO:
                    return SliceReader(outer.open, s, n)  # type: ignore[return-value]

                with opener() as fh:
                    head = fh.read(HEAD_SIZE)
                child = self.artifact.child(f"<embedded @ byte {call.pos}>", length, opener, head)
                self.ctx.descend(child)

    def _joblib_array(self, state: Any, pos: int, stream: BinaryIO) -> None:
        """Skip (or analyse, for object arrays) the array bytes joblib writes after a NumpyArrayWrapper."""
        fields: dict[str, Any] = {}
        if isinstance(state, Container) and state.kind == "dict":
            fields = {k: v for k, v in state.items if isinstance(k, str)}
        shape, dtype = fields.get("shape"), fields.get("dtype")
        descr = dtype.args[0] if isinstance(dtype, Call) and isinstance(dtype.args, tuple) and dtype.args else None
        m = _DTYPE.match(descr) if isinstance(descr, str) else None
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape) or m is None:
            raise PickleFormatError(pos, "joblib array wrapper with a shape/dtype the scanner cannot size")
        kind, size = m.group(1), int(m.group(2) or 0)
        if kind == "O":
            self.run_stream(stream, nested=True)  # object arrays are a nested pickle in the same stream
            return
        if fields.get("numpy_array_alignment_bytes") is not None:  # one length byte, then padding
            pad = stream.read(1)
            if len(pad) != 1 or skip(stream, pad[0]) != pad[0]:
                raise PickleFormatError(pos, "truncated joblib array padding")
        itemsize = size * 4 if kind == "U" else size
        nbytes = prod(shape) * itemsize
        if skip(stream, nbytes) != nbytes:
            raise PickleFormatError(pos, f"truncated joblib array data ({nbytes} bytes announced)")

    # -- driving -----------------------------------------------------------------------------------
    def run_stream(self, stream: BinaryIO, nested: bool = False, legacy_torch: bool = False) -> None:
        """Emulate consecutive pickles from the stream's position until the data stops being pickles."""
        index = 0
        limit = self.ctx.limits.max_pickles_per_stream
        while True:
            self.ctx.check_time()
            start = stream.tell()
            result = Emulator(stream, 0, self.ctx.limits, self).run(start, self.budget)
            if result.empty:
                return
            index += 1
            if index > limit:
                raise LimitExceeded("max_pickles_per_stream", f"more than {limit} pickles in one stream")
            if isinstance(result.error, ReadersDiffer | ReaderLimit):
                rule = rules.READERS_DIFFER if isinstance(result.error, ReadersDiffer) else rules.READER_LIMIT
                self.extra.append(rule.finding(self.artifact.location(result.error.offset), result.error.message))
                return
            if result.error is not None:
                if result.opcodes <= 1 and index > 1 and not legacy_torch:
                    self.extra.append(
                        rules.TRAILING.finding(
                            self.artifact.location(start), f"{self._size_from(start)} bytes after the last STOP"
                        )
                    )
                    self._hidden_pickles(stream, start)
                else:
                    self.extra.append(
                        rules.MALFORMED.finding(self.artifact.location(result.error.offset), result.error.message)
                    )
                return
            if nested:
                return
            if index == 1 and result.value == TORCH_LEGACY_MAGIC:
                legacy_torch = True
            if legacy_torch and index >= 5:
                return  # magic, protocol, sys_info, the data pickle, storage keys; raw storages follow

    def _hidden_pickles(self, stream: BinaryIO, start: int) -> None:
        r"""Look for pickles smuggled into the trailing data (a custom loader may seek to them).

        Candidates are protocol headers (``\x80\x02``..``\x80\x05``) and protocol-0 GLOBAL lines in the
        first :data:`_TRAILING_WINDOW` bytes; each is emulated, and only ones that reach STOP count.
        """
        stream.seek(start)
        window = stream.read(_TRAILING_WINDOW)
        offsets = sorted({m.start() for m in _HIDDEN.finditer(window)})[:_MAX_CANDIDATES]
        for rel in offsets:
            self.ctx.check_time()
            stream.seek(start + rel)
            probe = PickleAnalyzer(self.artifact, self.ctx)
            probe.budget = self.budget
            result = Emulator(stream, 0, self.ctx.limits, probe).run(start + rel, self.budget)
            if result.error is None and probe.hits:
                for hit in probe.hits.values():
                    hit.calls.append("in data after the last pickle: runs only if a loader seeks to it")
                    self.hits.setdefault((hit.rule.id, f"{hit.name}@{hit.first_pos}"), hit)

    def _size_from(self, start: int) -> str:
        size = self.artifact.size
        return str(size - start) if size is not None else "some"

    def findings(self) -> list[Finding]:
        """The findings collected so far (one per judged global, plus structural findings)."""
        out: list[Finding] = []
        for hit in sorted(self.hits.values(), key=lambda h: h.first_pos):
            if hit.rule is rules.UNKNOWN_GLOBAL and not self.opaque_calls and hit.name not in self.called:
                module, _, name = hit.name.rpartition(".")
                if rules.saver_code(module, name):
                    hit.rule = rules.CUSTOM_CLASS  # the saver's own class, only rebuilt (never called) here
            evidence = "; ".join(hit.calls)
            if hit.count > 1:
                evidence += f" (referenced {hit.count} times)"
            confidence = Confidence.HIGH if not hit.calls[0].startswith("imports ") else hit.rule.confidence
            out.append(
                hit.rule.finding(
                    self.artifact.location(hit.first_pos),
                    evidence,
                    confidence=confidence,
                    details={"global": hit.name, "matched": hit.matched, "occurrences": hit.count},
                )
            )
        return out + self.extra


TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _bytes_io(data: bytes) -> BinaryIO:
    import io

    return io.BytesIO(data)


__all__ = ["Opaque", "PickleAnalyzer", "TORCH_LEGACY_MAGIC"]
