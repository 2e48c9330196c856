"""Emulate the pickle machine's stack and memo, without importing or calling anything.

The emulator follows the unpickler opcode by opcode so that every way of naming a callable —
``GLOBAL``, ``STACK_GLOBAL`` with operands pushed, memoised and fetched back, ``INST``, ``OBJ``,
``NEWOBJ(_EX)``, ``EXT1/2/4`` — resolves to the same :class:`Global`, and every way of calling it
(``REDUCE``, ``INST``, ``OBJ``, ``NEWOBJ``, ``BUILD`` via ``__setstate__``) is seen with its arguments.
Decoy strings pushed and popped around a ``STACK_GLOBAL`` make no difference: only what is on the
emulated stack counts, exactly as in the real machine.

Values are symbolic: literals stay Python values, containers keep a bounded number of items, and
anything produced by a call is a :class:`Call` node. Nothing is ever imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mlwarden.artifacts.pickle_ops import Blob, Op, PickleFormatError, literal_preview, read_op
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.policy import Limits

#: Items kept per container (the rest are counted): enough for argument previews, bounded for memory.
KEEP_ITEMS = 64


@dataclass(eq=False, slots=True)
class Global:
    """A global imported by GLOBAL / STACK_GLOBAL / INST."""

    module: str
    name: str
    pos: int

    @property
    def full(self) -> str:
        """``module.name``."""
        return f"{self.module}.{self.name}"


@dataclass(eq=False, slots=True)
class Ext:
    """A callable fetched from the copyreg extension registry (EXT1/2/4)."""

    code: int
    pos: int


@dataclass(eq=False, slots=True)
class Call:
    """The result of calling ``func`` with ``args`` (REDUCE, INST, OBJ, NEWOBJ, NEWOBJ_EX)."""

    func: Any
    args: Any
    pos: int
    kwargs: Any = None
    state: Any = None  # set by BUILD
    via: str = "REDUCE"  # the opcode that made the call: REDUCE, INST, OBJ (they call ``func``) or NEWOBJ(_EX)


@dataclass(eq=False, slots=True)
class Opaque:
    """A value the emulator cannot know (persistent ids, out-of-band buffers)."""

    what: str


@dataclass(eq=False, slots=True)
class Container:
    """A list, dict or set built by the pickle, with at most :data:`KEEP_ITEMS` items kept."""

    kind: str  # "list" | "dict" | "set" | "frozenset"
    items: list[Any] = field(default_factory=list)
    count: int = 0

    def add(self, item: Any) -> None:
        """Append one item (a value, or a (key, value) pair for dicts)."""
        self.count += 1
        if len(self.items) < KEEP_ITEMS:
            self.items.append(item)


class _Mark:
    __slots__ = ()


MARK = _Mark()


def render(value: Any, limit: int, depth: int = 0) -> str:
    """Render a symbolic value as a short Python-like expression for evidence text."""
    if depth > 6:
        return "…"
    if isinstance(value, Global):
        text = value.full
    elif isinstance(value, Ext):
        text = f"<copyreg extension {value.code}>"
    elif isinstance(value, Call):
        func = render(value.func, limit, depth + 1)
        args = value.args
        if isinstance(args, tuple):
            inner = ", ".join(render(a, limit, depth + 1) for a in args)
        else:
            inner = f"*{render(args, limit, depth + 1)}"
        if value.kwargs is not None:
            inner += f", **{render(value.kwargs, limit, depth + 1)}"
        text = f"{func}({inner})"
    elif isinstance(value, Container):
        if value.kind == "dict":
            body = ", ".join(f"{render(k, limit, depth + 1)}: {render(v, limit, depth + 1)}" for k, v in value.items)
            text = "{" + body + (", …" if value.count > len(value.items) else "") + "}"
        else:
            body = ", ".join(render(v, limit, depth + 1) for v in value.items)
            text = "[" + body + (", …" if value.count > len(value.items) else "") + "]"
    elif isinstance(value, tuple):
        text = "(" + ", ".join(render(v, limit, depth + 1) for v in value) + ("," if len(value) == 1 else "") + ")"
    elif isinstance(value, Opaque):
        text = f"<{value.what}>"
    else:
        text = literal_preview(value, limit)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Hooks:
    """What the emulator reports to its caller (the analyser). Default: nothing."""

    def on_global(self, g: Global) -> None:
        """A global was imported."""

    def on_ext(self, e: Ext) -> None:
        """A callable was fetched from the extension registry."""

    def on_unresolved_global(self, pos: int, module: Any, name: Any) -> None:
        """STACK_GLOBAL with operands that are not literal strings."""

    def on_call(self, call: Call) -> None:
        """A callable was called (REDUCE / INST / OBJ / NEWOBJ / NEWOBJ_EX)."""

    def on_build(self, target: Any, state: Any, pos: int, stream: BinaryIO) -> None:
        """BUILD applied ``state`` to ``target``; the stream is positioned after the opcode."""

    def on_differ(self, pos: int, message: str) -> None:
        """The C unpickler and pickle.py read the opcode at ``pos`` differently (the C reading is followed)."""


@dataclass
class PickleResult:
    """Outcome of emulating one pickle (up to STOP or an error)."""

    start: int
    end: int
    value: Any = None
    protocol: int = 0
    opcodes: int = 0
    error: PickleFormatError | None = None
    empty: bool = False


class Emulator:
    """Runs one pickle's opcodes on a symbolic stack. One instance per pickle."""

    def __init__(self, stream: BinaryIO, base: int, limits: Limits, hooks: Hooks) -> None:
        self.stream = stream
        self.base = base  # offset of the stream's position 0 within the artifact (for reporting)
        self.limits = limits
        self.hooks = hooks
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.protocol = 0
        self.frame_end: int | None = None  # stream offset where the current FRAME ends

    # -- helpers ---------------------------------------------------------------------------------
    def _pop(self, pos: int) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise PickleFormatError(pos, "unpickling stack underflow")
        return self.stack.pop()

    def _pop_mark(self, pos: int) -> list[Any]:
        if not self.marks:
            raise PickleFormatError(pos, "could not find MARK")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _top(self, pos: int) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise PickleFormatError(pos, "unpickling stack underflow")
        return self.stack[-1]

    def _memo_put(self, key: int, value: Any) -> None:
        if key not in self.memo and len(self.memo) >= self.limits.max_pickle_memo:
            raise LimitExceeded("max_pickle_memo", f"more than {self.limits.max_pickle_memo} memo entries")
        self.memo[key] = value

    def _call(self, func: Any, args: Any, pos: int, kwargs: Any = None, via: str = "REDUCE") -> Call:
        call = Call(func, args, pos, kwargs, via=via)
        self.hooks.on_call(call)
        return call

    def _global(self, module: str, name: str, pos: int) -> Global:
        g = Global(module, name, pos)
        self.hooks.on_global(g)
        return g

    # -- the machine -----------------------------------------------------------------------------
    def run(self, start: int, opcode_budget: list[int]) -> PickleResult:
        """Emulate from the stream's current position until STOP; errors end the pickle."""
        result = PickleResult(start=start, end=start)
        stream = self.stream
        try:
            while True:
                pos = stream.tell()
                op = read_op(stream, pos + self.base)
                if op is None:
                    if result.opcodes == 0:
                        result.empty = True  # clean end of data before a new pickle
                        return result
                    raise PickleFormatError(pos + self.base, "pickle ended without STOP")
                result.opcodes += 1
                self._framing(op, pos, stream.tell())
                if op.differs:
                    self.hooks.on_differ(op.pos, op.differs)
                opcode_budget[0] -= 1
                if opcode_budget[0] < 0:
                    raise LimitExceeded("max_pickle_opcodes", f"more than {self.limits.max_pickle_opcodes} opcodes")
                if op.name == "STOP":
                    result.value = self._pop(op.pos)
                    result.end = stream.tell() + self.base
                    break
                self._step(op)
        except PickleFormatError as exc:
            result.error = exc
            result.end = exc.offset
        result.protocol = self.protocol
        return result

    def _framing(self, op: Op, start: int, end: int) -> None:
        """Track FRAMEs as pickle.py enforces them; the C unpickler reads on regardless.

        ``_pickle`` treats a frame as a read-ahead hint (from a file it even drops the rest of the frame when an
        argument runs past it), ``pickle.py`` raises: an opcode straddling its frame's end, or a FRAME opened
        before the last one ended, is read differently by the two — never written by a pickler.
        """
        if self.frame_end is not None and start >= self.frame_end:
            self.frame_end = None
        if self.frame_end is not None and end > self.frame_end:
            what = "a new FRAME starts" if op.name == "FRAME" else f"{op.name} runs {end - self.frame_end} bytes"
            self.hooks.on_differ(
                op.pos, f"{what} past the end of the current frame (byte {self.frame_end + self.base})"
            )
            self.frame_end = None
        if op.name == "FRAME":
            if self.frame_end is not None:
                self.hooks.on_differ(op.pos, "a FRAME starts before the current frame ended")
            self.frame_end = end + op.arg if op.arg else None

    def _step(self, op: Op) -> None:  # noqa: C901 - one branch per opcode family reads best here
        name, arg, pos = op.name, op.arg, op.pos
        push = self.stack.append
        if name in (
            "INT",
            "BININT",
            "BININT1",
            "BININT2",
            "LONG",
            "LONG1",
            "LONG4",
            "FLOAT",
            "BINFLOAT",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
            "BINBYTES",
            "SHORT_BINBYTES",
            "BINBYTES8",
            "UNICODE",
            "SHORT_BINUNICODE",
            "BINUNICODE",
            "BINUNICODE8",
        ):
            push(arg)
        elif name == "BYTEARRAY8":
            push(arg if isinstance(arg, Blob) else bytearray(arg))
        elif name == "NONE":
            push(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            push(name == "NEWTRUE")
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            if name == "NEXT_BUFFER":
                push(Opaque("out-of-band buffer"))
        elif name == "EMPTY_LIST":
            push(Container("list"))
        elif name == "EMPTY_DICT":
            push(Container("dict"))
        elif name == "EMPTY_SET":
            push(Container("set"))
        elif name == "EMPTY_TUPLE":
            push(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self._pop(pos) for _ in range(n)][::-1]
            push(tuple(items))
        elif name == "TUPLE":
            push(tuple(self._pop_mark(pos)[:KEEP_ITEMS]))
        elif name == "LIST":
            c = Container("list")
            for v in self._pop_mark(pos):
                c.add(v)
            push(c)
        elif name == "FROZENSET":
            c = Container("frozenset")
            for v in self._pop_mark(pos):
                c.add(v)
            push(c)
        elif name == "DICT":
            items = self._pop_mark(pos)
            if len(items) % 2:
                raise PickleFormatError(pos, "odd number of items for DICT")
            c = Container("dict")
            for i in range(0, len(items), 2):
                c.add((items[i], items[i + 1]))
            push(c)
        elif name == "APPEND":
            value = self._pop(pos)
            self._add_to(self._top(pos), [value], pos)
        elif name in ("APPENDS", "ADDITEMS"):
            items = self._pop_mark(pos)
            self._add_to(self._top(pos), items, pos)
        elif name == "SETITEM":
            value = self._pop(pos)
            key = self._pop(pos)
            self._add_to(self._top(pos), [(key, value)], pos)
        elif name == "SETITEMS":
            items = self._pop_mark(pos)
            if len(items) % 2:
                raise PickleFormatError(pos, "odd number of items for SETITEMS")
            self._add_to(self._top(pos), [(items[i], items[i + 1]) for i in range(0, len(items), 2)], pos)
        elif name == "POP":
            if self.stack and not (self.marks and len(self.stack) == self.marks[-1]):
                self.stack.pop()
            else:
                self._pop_mark(pos)  # POP of a MARK discards the mark, as the C unpickler does
        elif name == "DUP":
            push(self._top(pos))
        elif name == "MARK":
            if len(self.marks) >= self.limits.max_pickle_depth:
                raise LimitExceeded("max_pickle_depth", f"more than {self.limits.max_pickle_depth} nested MARKs")
            self.marks.append(len(self.stack))
        elif name == "POP_MARK":
            self._pop_mark(pos)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise PickleFormatError(pos, f"memo value {arg} not found")
            push(self.memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if arg < 0:
                raise PickleFormatError(pos, "negative PUT argument")
            self._memo_put(arg, self._top(pos))
        elif name == "MEMOIZE":
            self._memo_put(len(self.memo), self._top(pos))
        elif name in ("EXT1", "EXT2", "EXT4"):
            e = Ext(arg, pos)
            self.hooks.on_ext(e)
            push(e)
        elif name == "GLOBAL":
            module, gname = arg
            push(self._global(module, gname, pos))
        elif name == "STACK_GLOBAL":
            gname = self._pop(pos)
            module = self._pop(pos)
            if isinstance(module, str) and isinstance(gname, str):
                push(self._global(module, gname, pos))
            elif isinstance(module, str | Call | Opaque) and isinstance(gname, str | Call | Opaque):
                self.hooks.on_unresolved_global(pos, module, gname)
                push(Opaque("computed global"))
            else:
                raise PickleFormatError(pos, "STACK_GLOBAL requires str")
        elif name == "REDUCE":
            args = self._pop(pos)
            func = self._pop(pos)
            push(self._call(func, args, pos))
        elif name == "BUILD":
            state = self._pop(pos)
            target = self._top(pos)
            if isinstance(target, Call) and target.state is None:
                target.state = state
            self.hooks.on_build(target, state, pos, self.stream)
        elif name == "INST":
            module, gname = arg
            args = tuple(self._pop_mark(pos)[:KEEP_ITEMS])
            push(self._call(self._global(module, gname, pos), args, pos, via="INST"))
        elif name == "OBJ":
            items = self._pop_mark(pos)
            if not items:
                raise PickleFormatError(pos, "OBJ without a class")
            push(self._call(items[0], tuple(items[1:KEEP_ITEMS]), pos, via="OBJ"))
        elif name == "NEWOBJ":
            args = self._pop(pos)
            cls = self._pop(pos)
            push(self._call(cls, args, pos, via="NEWOBJ"))
        elif name == "NEWOBJ_EX":
            kwargs = self._pop(pos)
            args = self._pop(pos)
            cls = self._pop(pos)
            push(self._call(cls, args, pos, kwargs, via="NEWOBJ"))
        elif name == "PERSID":
            push(Opaque(f"persistent id {arg!r}"))
        elif name == "BINPERSID":
            pid = self._pop(pos)
            push(Opaque(f"persistent id {render(pid, 80)}"))
        elif name == "PROTO":
            if not 0 <= arg <= 5:
                raise PickleFormatError(pos, f"unsupported pickle protocol: {arg}")
            self.protocol = arg
        elif name == "FRAME":
            pass
        else:  # pragma: no cover - every opcode of pickletools is handled above
            raise PickleFormatError(pos, f"opcode {name} not emulated")

    def _add_to(self, target: Any, items: list[Any], pos: int) -> None:
        if isinstance(target, Container):
            for item in items:
                target.add(item)
        elif isinstance(target, Call):
            # list.extend / obj.append / obj[key] = value on an object a callable created: the class was judged
            # when it was imported; nothing more to know statically.
            pass
        elif isinstance(target, Opaque | Global | Ext):
            pass
        else:
            raise PickleFormatError(pos, f"cannot add items to {type(target).__name__}")
