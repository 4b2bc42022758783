"""The restricted pickle machine: opcodes run here, and globals resolve only through the allow-list."""

from __future__ import annotations

import codecs
import gc
import pickle
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from reformer_tools.allowlist import (
    ALLOWED_GLOBALS,
    CLASSES,
    REDUCERS,
    BFloat16Array,
    CorruptPickle,
    Global,
    LargeText,
    PayloadReleased,
    Pending,
    RefusedPickle,
    ReleasedPayload,
    SkippedPayload,
    require,
    type_name,
)
from reformer_tools.dtypes import WEIGHT_DTYPES, logical_name
from reformer_tools.errors import UnreadableCheckpointError
from reformer_tools.untrusted import printable

#: Opcodes one pickle may run. Every opcode can leave an object behind (a MARK
#: or EMPTY_DICT costs one byte of input and ~100 bytes of memory); Trax
#: checkpoints run a few dozen opcodes per array. Read at each load (tests lower it).
MAX_OPCODES = 5_000_000
#: Byte strings at least this long are read into numpy buffers arrays can view; shorter ones stay ``bytes``.
LARGE: Final = 1 << 16
#: Text at least this long is never decoded into ``str`` (see LargeText): a key or a name is far shorter.
LARGE_TEXT: Final = 1 << 20
#: Memory all shorter strings of one pickle may take once decoded: a character of
#: UTF-8 input can take four bytes as ``str``, so the input size alone does not bound it.
MAX_TEXT_BYTES = 256 << 20
#: Items (counted with repeats) hashed as dict keys and set members in one pickle: a key
#: may be a tuple holding one tuple twice, 99 levels deep, and hashing does not memoize.
MAX_KEY_ITEMS = 10_000_000
_MAX_KEY_DEPTH: Final = 100  # hashing a deeply nested tuple overflows the C stack
_MAX_LONG_BYTES: Final = 64  # a 512-bit integer is plenty for any Trax metadata
_MAX_LINE: Final = 1 << 16
_MAX_CONTAINER_ITEMS: Final = 1 << 28
_TEXT_CHUNK: Final = 4 << 20
_SET_COST: Final = 4
_SIMPLE_KEYS: Final = frozenset({str, bytes, int, float, bool, type(None)})
#: Items of the tuples an array is rebuilt from (its state, frombuffer's arguments): the memo's hold on
#: an array's data through them is dropped with the array.
_STATE_ITEMS: Final = 6

_U1: Final = struct.Struct("<B").unpack
_U2: Final = struct.Struct("<H").unpack
_I4: Final = struct.Struct("<i").unpack
_U4: Final = struct.Struct("<I").unpack
_U8: Final = struct.Struct("<Q").unpack
_F8: Final = struct.Struct(">d").unpack


class ByteSource(Protocol):
    """What the machine reads from: exact reads that fail loudly, never short, every length bounded."""

    @property
    def keeps_payloads(self) -> bool: ...

    def read_exact(self, n: int) -> bytes: ...

    def read_payload(self, n: int) -> npt.NDArray[np.uint8] | SkippedPayload: ...

    def read_chunks(self, n: int, size: int) -> Iterator[bytes]: ...

    def readline(self, limit: int) -> bytes: ...


# ------------------------------------------------------------------ garbage collection


class _PausedCollector:
    """The cyclic garbage collector, paused while a pickle loads.

    A load allocates up to millions of containers and frees none of them: every
    collection would scan them all again for nothing (5 million EMPTY_DICTs took
    20 s with it, 2 s without). Nested and concurrent loads share one pause: the
    collector is restored, as it was before the first, when the last one ends,
    whichever order they end in.
    """

    _lock = threading.Lock()
    _pauses = 0
    _was_enabled = False

    def __enter__(self) -> None:
        cls = type(self)
        with cls._lock:
            if cls._pauses == 0:
                cls._was_enabled = gc.isenabled()
                gc.disable()
            cls._pauses += 1

    def __exit__(self, *exc: object) -> None:
        cls = type(self)
        with cls._lock:
            cls._pauses -= 1
            if cls._pauses == 0 and cls._was_enabled:
                gc.enable()


# ------------------------------------------------------------------ the machine


class Machine:
    """One pickle load: ``load()`` returns the object the pickle builds from allowed parts.

    Python's ``pickle`` executes whatever callables a file names. This machine
    never imports or calls anything a pickle names: ``GLOBAL``/``STACK_GLOBAL``
    resolve an exact (module, name) pair of
    :data:`reformer_tools.allowlist.ALLOWED_GLOBALS` to an inert marker, and
    ``REDUCE``, ``NEWOBJ`` and ``BUILD`` reach only that module's rebuilders.
    Everything else is refused before any of it runs. Every resource a pickle can
    ask for (opcodes, text, key sizes) is bounded before it is spent. Listing
    globals without loading is :mod:`reformer_tools.global_scan`.
    """

    def __init__(
        self, source: ByteSource, *, on_array: Callable[[npt.NDArray[Any]], npt.NDArray[Any] | None] | None = None
    ) -> None:
        self._source = source
        # Called with every array that can be a weight (floating point, or uint16 bfloat16 bits)
        # as soon as it is built, in file order. What it returns (if not None) takes the array's
        # place in the object being built, so the caller can take the data away as it arrives.
        self._on_array = on_array
        self._stack: list[Any] = []
        self._marks: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        self._pending_memo: dict[int, list[int]] = {}
        # id(large payload) -> its memo indices: the memo must let go of an array's data taken away.
        self._payload_memo: dict[int, list[int]] = {}
        self._text_budget = MAX_TEXT_BYTES
        self._key_budget = MAX_KEY_ITEMS
        # id(tuple) -> (the tuple, items counted with repeats, nesting): each key tuple is measured once.
        self._key_sizes: dict[int, tuple[tuple[Any, ...], int, int]] = {}
        self.opcodes = 0
        self._dispatch = self._build_dispatch()

    # ---- public

    def load(self) -> Any:
        """Run the pickle to its STOP opcode and return the object it made."""
        read = self._source.read_exact
        dispatch = self._dispatch
        limit = MAX_OPCODES
        self.opcodes = 0
        try:
            with _PausedCollector():
                while True:
                    code = read(1)[0]
                    self.opcodes += 1
                    if self.opcodes > limit:
                        raise UnreadableCheckpointError(
                            f"the pickle runs more than {limit:,} opcodes (a limit against memory exhaustion; "
                            "Trax checkpoints need far fewer)"
                        )
                    handler = dispatch[code]
                    if handler is None:
                        raise CorruptPickle(f"unknown pickle opcode 0x{code:02x}")
                    if handler():
                        result = self._pop()
                        if isinstance(result, Pending):
                            raise CorruptPickle(f"{result.what} was never given its state")
                        return result
        finally:
            # The dispatch table's bound methods make the machine a reference cycle;
            # drop what it holds now, so arrays are freed as soon as callers release them.
            self._memo.clear()
            self._stack.clear()
            self._marks.clear()
            self._pending_memo.clear()
            self._payload_memo.clear()
            self._key_sizes.clear()

    # ---- dispatch: keyed on pickle's own opcode constants, families folded into one handler each

    def _build_dispatch(self) -> list[Callable[[], bool | None] | None]:
        p = pickle
        one = partial(self._read_int, _U1, 1)
        table: dict[bytes, Callable[[], bool | None]] = {
            p.MARK: self._op_mark,
            p.STOP: lambda: True,
            p.POP: self._op_pop,
            p.POP_MARK: self._op_pop_mark,
            p.DUP: self._op_dup,
            p.PROTO: self._op_proto,
            p.FRAME: self._skip_frame,  # a read-ahead hint; every read is checked anyway
            # constants
            p.NONE: partial(self._push, None),
            p.NEWTRUE: partial(self._push, True),
            p.NEWFALSE: partial(self._push, False),
            p.EMPTY_TUPLE: partial(self._push, ()),
            p.EMPTY_LIST: partial(self._push_new, list),
            p.EMPTY_DICT: partial(self._push_new, dict),
            p.EMPTY_SET: self._op_empty_set,
            # numbers
            p.INT: self._op_int,
            p.LONG: self._op_long,
            p.BININT: partial(self._push_int, _I4, 4),
            p.BININT1: partial(self._push_int, _U1, 1),
            p.BININT2: partial(self._push_int, _U2, 2),
            p.LONG1: partial(self._op_long_n, one),
            p.LONG4: partial(self._op_long_n, partial(self._read_int, _I4, 4)),
            p.FLOAT: self._op_float,
            p.BINFLOAT: self._op_binfloat,
            # text and bytes: (length reader, encoding)
            p.STRING: self._op_string,
            p.UNICODE: self._op_unicode,
            p.BINSTRING: partial(self._op_text, partial(self._read_int, _I4, 4), "latin-1"),
            p.SHORT_BINSTRING: partial(self._op_text, one, "latin-1"),
            p.BINUNICODE: partial(self._op_text, partial(self._read_int, _U4, 4), "utf-8"),
            p.SHORT_BINUNICODE: partial(self._op_text, one, "utf-8"),
            p.BINUNICODE8: partial(self._op_text, partial(self._read_int, _U8, 8), "utf-8"),
            p.BINBYTES: partial(self._op_bytes, partial(self._read_int, _U4, 4), bytes),
            p.SHORT_BINBYTES: partial(self._op_bytes, one, bytes),
            p.BINBYTES8: partial(self._op_bytes, partial(self._read_int, _U8, 8), bytes),
            p.BYTEARRAY8: partial(self._op_bytes, partial(self._read_int, _U8, 8), bytearray),
            # containers
            p.LIST: self._op_list,
            p.APPEND: self._op_append,
            p.APPENDS: self._op_appends,
            p.TUPLE: self._op_tuple,
            p.TUPLE1: partial(self._op_tuple_n, 1),
            p.TUPLE2: partial(self._op_tuple_n, 2),
            p.TUPLE3: partial(self._op_tuple_n, 3),
            p.DICT: self._op_dict,
            p.SETITEM: self._op_setitem,
            p.SETITEMS: self._op_setitems,
            p.ADDITEMS: self._op_additems,
            p.FROZENSET: self._op_frozenset,
            # memo: (index reader)
            p.GET: partial(self._op_get, self._read_decimal),
            p.BINGET: partial(self._op_get, one),
            p.LONG_BINGET: partial(self._op_get, partial(self._read_int, _U4, 4)),
            p.PUT: partial(self._op_put, self._read_decimal),
            p.BINPUT: partial(self._op_put, one),
            p.LONG_BINPUT: partial(self._op_put, partial(self._read_int, _U4, 4)),
            p.MEMOIZE: self._op_memoize,
            # globals and objects: the allow-list is enforced here
            p.GLOBAL: self._op_global,
            p.STACK_GLOBAL: self._op_stack_global,
            p.REDUCE: self._op_reduce,
            p.NEWOBJ: self._op_newobj,
            p.NEWOBJ_EX: self._op_newobj_ex,
            p.BUILD: self._op_build,
            # Opcodes that name and call in one step, or need outside help: never.
            p.INST: partial(self._refuse, "INST"),
            p.OBJ: partial(self._refuse, "OBJ"),
            p.PERSID: partial(self._refuse, "PERSID"),
            p.BINPERSID: partial(self._refuse, "BINPERSID"),
            p.EXT1: partial(self._refuse, "EXT1"),
            p.EXT2: partial(self._refuse, "EXT2"),
            p.EXT4: partial(self._refuse, "EXT4"),
            p.NEXT_BUFFER: partial(self._refuse, "NEXT_BUFFER"),
            p.READONLY_BUFFER: partial(self._refuse, "READONLY_BUFFER"),
        }
        dispatch: list[Callable[[], bool | None] | None] = [None] * 256
        for opcode, handler in table.items():
            dispatch[opcode[0]] = handler
        return dispatch

    # ---- reading arguments

    def _read_int(self, unpack: Callable[[bytes], tuple[Any, ...]], size: int) -> int:
        value: int = unpack(self._source.read_exact(size))[0]
        return value

    def _read_line(self) -> bytes:
        line = self._source.readline(_MAX_LINE)
        require(line.endswith(b"\n"), "pickle text line is unterminated or too long")
        return line[:-1]

    def _read_decimal(self) -> int:
        return _parse_int(self._read_line(), "memo index")

    # ---- the stack

    def _push(self, value: Any) -> None:
        self._stack.append(value)

    def _push_new(self, factory: Callable[[], Any]) -> None:
        self._stack.append(factory())

    def _op_empty_set(self) -> None:
        # An empty set takes 216 bytes, three times a dict: it counts as four opcodes, so that
        # the opcode budget bounds memory the same whatever opcode a pickle repeats.
        self.opcodes += _SET_COST - 1
        self._stack.append(set())

    def _pop(self) -> Any:
        if not self._stack:
            raise CorruptPickle("pickle stack underflow")
        return self._stack.pop()

    def _top(self) -> Any:
        if not self._stack:
            raise CorruptPickle("pickle stack underflow")
        return self._stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise CorruptPickle("pickle mark missing")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _op_mark(self) -> None:
        self._marks.append(self._stack)
        self._stack = []

    def _op_pop(self) -> None:
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    def _op_pop_mark(self) -> None:
        self._pop_mark()

    def _op_dup(self) -> None:
        self._push(self._top())

    def _skip_frame(self) -> None:
        self._source.read_exact(8)

    def _op_proto(self) -> None:
        version = self._source.read_exact(1)[0]
        require(version <= 5, f"unsupported pickle protocol {version}")

    def _refuse(self, name: str) -> None:
        raise RefusedPickle(f"pickle opcode {name} is refused")

    # ---- numbers

    def _push_int(self, unpack: Callable[[bytes], tuple[Any, ...]], size: int) -> None:
        self._stack.append(unpack(self._source.read_exact(size))[0])

    def _op_int(self) -> None:
        line = self._read_line()
        if line in (b"00", b"01"):  # protocol 0 booleans
            self._push(line == b"01")
            return
        self._push(_parse_int(line, "INT"))

    def _op_long(self) -> None:
        self._push(_parse_int(self._read_line().rstrip(b"L"), "LONG"))

    def _op_long_n(self, length: Callable[[], int]) -> None:
        n = length()
        require(0 <= n <= _MAX_LONG_BYTES, "LONG is too long")
        self._push(int.from_bytes(self._source.read_exact(n), "little", signed=True))

    def _op_float(self) -> None:
        try:
            self._push(float(self._read_line()))
        except ValueError:
            raise CorruptPickle("malformed FLOAT") from None

    def _op_binfloat(self) -> None:
        self._push(_F8(self._source.read_exact(8))[0])

    # ---- text and bytes

    def _op_string(self) -> None:
        try:
            self._push_small_text(string_line(self._read_line()))
        except ValueError:
            raise CorruptPickle("malformed STRING") from None

    def _op_unicode(self) -> None:
        try:
            self._push_small_text(unicode_line(self._read_line()))
        except UnicodeDecodeError:
            raise CorruptPickle("malformed UNICODE") from None

    def _op_text(self, length: Callable[[], int], encoding: str) -> None:
        n = length()
        require(n >= 0, "negative string length")
        if n >= LARGE_TEXT:
            self._push(self._large_text(n, encoding))
            return
        raw = self._source.read_exact(n)
        try:
            self._push_small_text(raw.decode(encoding, "surrogatepass"))
        except UnicodeDecodeError:
            raise CorruptPickle("string is not valid UTF-8") from None

    def _push_small_text(self, text: str) -> None:
        self._text_budget -= sys.getsizeof(text)
        if self._text_budget < 0:
            raise UnreadableCheckpointError(
                f"the pickle's strings take more than {MAX_TEXT_BYTES >> 20} MiB (a limit against memory exhaustion)"
            )
        self._push(text)

    def _large_text(self, n: int, encoding: str) -> LargeText:
        """Read ``n`` bytes of text in steps, keeping it only as latin-1 bytes (array data) or a count."""
        if encoding == "latin-1":  # every byte is one latin-1 character
            return LargeText(n, self._source.read_payload(n))
        chunks = self._source.read_chunks(n, _TEXT_CHUNK)  # checks n against what may remain
        out = np.empty(n, dtype=np.uint8) if self._source.keeps_payloads else None  # untouched pages cost nothing
        written = chars = 0
        latin1 = True
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        try:
            for chunk in chunks:
                text = decoder.decode(chunk)
                chars += len(text)
                if not latin1:
                    continue
                try:
                    data = text.encode("latin-1")
                except UnicodeEncodeError:
                    latin1 = False
                    continue
                if out is not None:
                    out[written : written + len(data)] = np.frombuffer(data, dtype=np.uint8)
                written += len(data)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorruptPickle("string is not valid UTF-8") from None
        if not latin1:
            return LargeText(chars, None)
        return LargeText(chars, out[:written] if out is not None else SkippedPayload(written))

    def _op_bytes(self, length: Callable[[], int], kind: type[bytes] | type[bytearray]) -> None:
        n = length()
        require(n >= 0, "negative length")
        if n >= LARGE:
            self._push(self._source.read_payload(n))
        else:
            data = self._source.read_exact(n)
            self._push(bytearray(data) if kind is bytearray else data)

    # ---- containers

    def _op_append(self) -> None:
        item = self._pop()
        self._extend_list([item])

    def _op_appends(self) -> None:
        self._extend_list(self._pop_mark())

    def _extend_list(self, items: list[Any]) -> None:
        target = self._top()
        if type(target) is not list:
            raise CorruptPickle(f"APPEND to {type_name(target)}")
        require(len(target) + len(items) <= _MAX_CONTAINER_ITEMS, "list is too long")
        _check_values(items)
        target.extend(items)

    def _op_list(self) -> None:
        items = self._pop_mark()
        _check_values(items)
        self._push(items)

    def _op_tuple(self) -> None:
        items = self._pop_mark()
        _check_values(items)
        self._push(tuple(items))

    def _op_tuple_n(self, n: int) -> None:
        require(len(self._stack) >= n, "pickle stack underflow")
        items = self._stack[-n:]
        _check_values(items)
        del self._stack[-n:]
        self._push(tuple(items))

    def _op_dict(self) -> None:
        self._push(self._fill_dict({}, self._pop_mark()))

    def _op_setitem(self) -> None:
        value = self._pop()
        key = self._pop()
        self._fill_dict(self._top(), [key, value])

    def _op_setitems(self) -> None:
        items = self._pop_mark()
        self._fill_dict(self._top(), items)

    def _fill_dict(self, target: Any, items: list[Any]) -> dict[Any, Any]:
        if type(target) is not dict:
            raise CorruptPickle(f"SETITEM on {type_name(target)}")
        require(len(items) % 2 == 0, "odd number of dict items")
        _check_values(items)
        require(len(target) + len(items) // 2 <= _MAX_CONTAINER_ITEMS, "dict is too large")
        check_key = self._check_key
        for i in range(0, len(items), 2):
            check_key(items[i])
            target[items[i]] = items[i + 1]
        return target

    def _op_additems(self) -> None:
        items = self._pop_mark()
        target = self._top()
        if type(target) is not set:
            raise CorruptPickle(f"ADDITEMS on {type_name(target)}")
        require(len(target) + len(items) <= _MAX_CONTAINER_ITEMS, "set is too large")
        for item in items:
            self._check_key(item)
        target.update(items)

    def _op_frozenset(self) -> None:
        items = self._pop_mark()
        for item in items:
            self._check_key(item)
        self._push(frozenset(items))

    def _check_key(self, key: Any) -> None:
        """Only plain values may be hashed: anything else could run code or fail in ways not controlled here.

        Tuples are measured once each (their size counted with repeats and their
        nesting), and every hash is charged against the pickle's key budget
        before it happens: hashing does not memoize, so a tuple sharing itself
        99 levels deep would otherwise hash for longer than the universe lasts.
        """
        if type(key) in _SIMPLE_KEYS:
            self._key_budget -= 1
        elif type(key) is tuple:
            self._key_budget -= self._measure_key(key)
        else:
            raise CorruptPickle(f"unhashable {type_name(key)} used as a key")
        if self._key_budget < 0:
            raise UnreadableCheckpointError(
                f"the pickle's dict keys and set members hold more than {MAX_KEY_ITEMS:,} items"
            )

    def _measure_key(self, key: tuple[Any, ...]) -> int:
        sizes = self._key_sizes
        todo: list[tuple[tuple[Any, ...], bool]] = [(key, False)]
        while todo:
            item, children_done = todo.pop()
            if id(item) in sizes:
                continue
            if not children_done:
                todo.append((item, True))
                for child in item:
                    if type(child) is tuple:
                        if id(child) not in sizes:
                            todo.append((child, False))
                    elif type(child) not in _SIMPLE_KEYS:
                        raise CorruptPickle(f"unhashable {type_name(child)} used as a key")
                continue
            size = depth = 1
            for child in item:
                if type(child) is tuple:
                    _child, child_size, child_depth = sizes[id(child)]
                    size += child_size
                    depth = max(depth, child_depth + 1)
                else:
                    size += 1
            require(depth <= _MAX_KEY_DEPTH, f"a key nested deeper than {_MAX_KEY_DEPTH} levels")
            sizes[id(item)] = (item, min(size, 1 << 62), depth)
        return sizes[id(key)][1]

    # ---- memo

    def _op_get(self, index: Callable[[], int]) -> None:
        position = index()
        if position not in self._memo:
            raise CorruptPickle(f"memo entry {position} is missing")
        value = self._memo[position]
        if isinstance(value, ReleasedPayload):
            raise PayloadReleased(f"the pickle uses the data of an array again (memo entry {position})")
        self._push(value)

    def _op_put(self, index: Callable[[], int]) -> None:
        self._memo_put(index())

    def _op_memoize(self) -> None:
        self._memo_put(len(self._memo))

    def _memo_put(self, index: int) -> None:
        require(index >= 0, "negative memo index")
        value = self._top()
        self._memo[index] = value
        if isinstance(value, Pending):
            self._pending_memo.setdefault(id(value), []).append(index)
        elif self._on_array is not None and (payload := _payload_in(value)) is not None:
            self._payload_memo.setdefault(id(payload), []).append(index)

    # ---- globals and object construction

    def _op_global(self) -> None:
        try:
            module = self._read_line().decode("utf-8")
            name = self._read_line().decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptPickle("GLOBAL name is not UTF-8") from None
        self._push(_resolve_global(module, name))

    def _op_stack_global(self) -> None:
        name = self._pop()
        module = self._pop()
        if type(module) is not str or type(name) is not str:
            raise CorruptPickle("STACK_GLOBAL operands are not strings")
        self._push(_resolve_global(module, name))

    def _op_reduce(self) -> None:
        args = self._pop()
        func = self._pop()
        if not isinstance(func, Global):
            raise RefusedPickle(f"REDUCE on {type_name(func)}, which is not an allowed global")
        reducer = REDUCERS.get((func.module, func.name))
        if reducer is None:
            raise RefusedPickle(f"REDUCE on {type_name(func)}, which may only be referenced, not called")
        if type(args) is not tuple:
            raise CorruptPickle(f"REDUCE arguments for {type_name(func)} are not a tuple")
        _check_values(args)
        self._push(self._built(reducer(args)))

    def _built(self, value: Any) -> Any:
        # Only arrays that can be weights are handed on: whoever converts them as they arrive
        # must never see a dtype it cannot write (a complex64 array among the weights is refused
        # when the load ends, and the early output with it).
        if self._on_array is not None:
            if isinstance(value, np.ndarray) and logical_name(value.dtype) in WEIGHT_DTYPES:
                stand_in = self._on_array(value)
                if stand_in is not None:
                    self._release(value.base)
                    return stand_in
            elif isinstance(value, BFloat16Array):
                stand_in = self._on_array(value.bits)
                if stand_in is not None:
                    self._release(value.bits.base)
                    return BFloat16Array(stand_in)
        return value

    def _release(self, payload: object) -> None:
        """Drop the memo's hold on the data of an array taken away (pickle memoizes every bytes object)."""
        if not isinstance(payload, np.ndarray):
            return
        for index in self._payload_memo.pop(id(payload), ()):
            if _payload_in(self._memo.get(index)) is payload:
                self._memo[index] = ReleasedPayload(payload.nbytes)

    def _op_newobj(self) -> None:
        args = self._pop()
        cls = self._pop()
        self._new_object(cls, args, {})

    def _op_newobj_ex(self) -> None:
        kwargs = self._pop()
        args = self._pop()
        cls = self._pop()
        self._new_object(cls, args, kwargs)

    def _new_object(self, cls: Any, args: Any, kwargs: Any) -> None:
        if not isinstance(cls, Global) or (cls.module, cls.name) not in CLASSES:
            raise RefusedPickle(f"NEWOBJ of {type_name(cls)}, which is not an allowed class")
        no_args = type(args) is tuple and not args  # type checks first: args may be arrays
        no_kwargs = kwargs is None or (type(kwargs) is dict and not kwargs)
        if not (no_args and no_kwargs):
            raise CorruptPickle(f"NEWOBJ of {type_name(cls)}: unexpected arguments")
        self._push(CLASSES[(cls.module, cls.name)]())

    def _op_build(self) -> None:
        state = self._pop()
        target = self._top()
        if not isinstance(target, Pending):
            raise RefusedPickle(f"BUILD on {type_name(target)} is refused")
        _check_values(state if type(state) is tuple else (state,))
        result = self._built(target.finish(state))
        self._stack[-1] = result
        for index in self._pending_memo.pop(id(target), ()):
            self._memo[index] = result


def _payload_in(value: Any) -> npt.NDArray[np.uint8] | None:
    """The large payload ``value`` is or holds as an array's state or arguments (short tuples), if any."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value
    if type(value) is tuple and len(value) <= _STATE_ITEMS:
        return next((item for item in value if isinstance(item, np.ndarray) and item.dtype == np.uint8), None)
    return None


def _resolve_global(module: str, name: str) -> Global:
    if (module, name) not in ALLOWED_GLOBALS:
        raise RefusedPickle(f"refused global {printable(module)}.{printable(name)} (not on the allow-list)")
    return Global(module, name)


def string_line(line: bytes) -> str:
    """A protocol 0 STRING operand as pickle decodes it: a quoted, backslash-escaped latin-1 line.

    Raises ValueError (UnicodeDecodeError included) for one pickle would refuse.
    """
    if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
        raise ValueError("malformed STRING")
    return str(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))


def unicode_line(line: bytes) -> str:
    """A protocol 0 UNICODE operand as pickle decodes it (raises UnicodeDecodeError)."""
    return line.decode("raw-unicode-escape")


def _parse_int(text: bytes, what: str) -> int:
    require(len(text) <= 2 * _MAX_LONG_BYTES + 2, f"{what} is too long")
    try:
        return int(text)
    except ValueError:
        raise CorruptPickle(f"malformed {what}") from None


def _check_values(items: list[Any] | tuple[Any, ...]) -> None:
    for item in items:
        if isinstance(item, Pending):
            raise CorruptPickle(f"{item.what} used before its state was set")
