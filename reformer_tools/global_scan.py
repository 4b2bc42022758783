"""Every global the pickles in a checkpoint's files name, found without building anything; and what was not scanned."""

from __future__ import annotations

import os
import pickle
import pickletools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from reformer_tools import safe_pickle
from reformer_tools.allowlist import describe_global, is_allowed
from reformer_tools.byte_source import ByteSource, open_file, with_file
from reformer_tools.checkpoint import MAX_SHARDS
from reformer_tools.errors import ReformerToolsError, UnreadableCheckpointError
from reformer_tools.npy_records import MAX_HEADER, NPY_MAGIC, parse_header, side_file_candidates

#: Distinct (module, name, opcode) references listed per file; `--globals --json` prints them all.
MAX_REFERENCES: Final = 10_000
#: Pickles and unscanned stretches recorded per file (random bytes would otherwise make one every few KB).
MAX_SPANS: Final = 1000
_MAX_NAME: Final = 1024  # characters of a module or name kept; real ones are far shorter
_MAX_LINE: Final = 1 << 16
_MAX_INDEX_TEXT: Final = 256  # characters of a protocol 0 memo index read; the machine refuses longer ones
_WINDOW: Final = 1 << 20
# Where a pickle or a .npy record may begin, after bytes that are neither: PROTO 2-5, the .npy magic,
# or a protocol 0 GLOBAL or INST (a pickle with no PROTO may open with one, as "cos\nsystem\n" does).
_RESYNC: Final = re.compile(rb"\x80[\x02-\x05]|\x93NUMPY|[ci][A-Za-z_][\w.]{0,200}\n[A-Za-z_][\w.]{0,200}\n")


@dataclass(frozen=True, slots=True)
class GlobalReference:
    """One global a pickle names (or a way it reaches one this scan cannot name), first occurrence."""

    module: str
    name: str
    opcode: str  # GLOBAL, STACK_GLOBAL, INST, EXT1/2/4, PERSID, BINPERSID, OBJ, NEXT_BUFFER, READONLY_BUFFER
    opcode_index: int  # opcodes before this one in its pickle
    offset: int = 0  # byte offset of the opcode in the (decompressed) file
    pickle: int = 0  # which pickle of the file, from 0
    count: int = 1  # how many times the pickle names it
    resolved: bool = True  # False: the opcode reaches a global this scan cannot name (see ``name``)

    @property
    def allowed(self) -> bool:
        # INST names a global and calls it in one opcode; loading refuses INST whatever it names.
        return self.resolved and self.opcode in ("GLOBAL", "STACK_GLOBAL") and is_allowed(self.module, self.name)

    @property
    def refusal(self) -> str:
        """Why loading refuses this reference, as the end of "the file references ..."."""
        if not self.resolved:
            return f"{self.label}, which loading refuses"
        if self.opcode == "INST" and is_allowed(self.module, self.name):
            return f"{self.label} through INST, which loading refuses (it calls what it names)"
        return f"{self.label}, which is not on the allow-list"

    @property
    def label(self) -> str:
        """``module.name``, or what the opcode reaches when it names no global."""
        return f"{self.module}.{self.name}" if self.resolved else self.name


@dataclass(frozen=True, slots=True)
class PickleFound:
    """A pickle in the file: its bytes [start, end), opcodes, and why it ended early, if it did."""

    start: int
    end: int
    opcodes: int
    problem: str | None = None  # None: it ran to its STOP opcode


@dataclass(frozen=True, slots=True)
class UnscannedBytes:
    """Bytes [start, end) no pickle was read from, and why; ``end`` None: to the end of the file."""

    start: int
    end: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class FileGlobals:
    """What one file's pickles reference; byte offsets count decompressed bytes when ``compressed``."""

    file: Path
    references: list[GlobalReference]
    pickles: list[PickleFound] = field(default_factory=list)
    unscanned: list[UnscannedBytes] = field(default_factory=list)
    compressed: bool = False

    @property
    def complete(self) -> bool:
        """Whether every byte of the file was read as a pickle or .npy record."""
        return not self.unscanned

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "compressed": self.compressed,
            "complete": self.complete,
            "pickles": [
                {"start": p.start, "end": p.end, "opcodes": p.opcodes, "problem": p.problem} for p in self.pickles
            ],
            "unscanned": [{"start": u.start, "end": u.end, "reason": u.reason} for u in self.unscanned],
            "globals": [
                {
                    "label": ref.label,
                    "module": ref.module,
                    "name": ref.name,
                    "opcode": ref.opcode,
                    "opcode_index": ref.opcode_index,
                    "offset": ref.offset,
                    "pickle": ref.pickle,
                    "count": ref.count,
                    "resolved": ref.resolved,
                    "allowed": ref.allowed,
                    "reason": describe_global(ref.module, ref.name) if ref.allowed else None,
                }
                for ref in self.references
            ],
        }


def globals_document(path: Path, results: list[FileGlobals]) -> dict[str, Any]:
    """``inspect --globals --json``: every file's pickles, references and unscanned bytes."""
    refused = sum(not ref.allowed for result in results for ref in result.references)
    return {
        "ok": refused == 0 and all(result.complete for result in results),
        "file": str(path),
        "complete": all(result.complete for result in results),
        "refused": refused,
        "files": [result.to_json() for result in results],
        # every reference of every file, flat, as before files were listed
        "globals": [dict(entry, file=str(result.file)) for result in results for entry in result.to_json()["globals"]],
    }


def scan_globals(path: str | os.PathLike[str], *, max_decompressed: int | None = None) -> list[FileGlobals]:
    """The globals of a checkpoint's pickles: the main file, its shard files and its .npy side files.

    Nothing is built and no reference is judged until listed: every pickle in a
    file is read to its STOP, then the next one (a file may hold several), and
    stretches that are no pickle are skipped to where one may start again and
    reported as not scanned. An object array in a .npy record is a pickle too.
    """
    path = Path(path)
    results = [_scan_file(path, max_decompressed)]
    for shard in range(MAX_SHARDS):
        candidate = path.with_name(f"{path.name}.shard{shard}")
        if not candidate.exists():
            break
        results.append(_scan_file(candidate, max_decompressed))
    results.extend(_scan_file(side, max_decompressed) for side in side_file_candidates(path) if side.is_file())
    return results


def _scan_file(path: Path, max_decompressed: int | None) -> FileGlobals:
    try:
        opened = open_file(path, max_decompressed, keep_payloads=False)
    except ReformerToolsError as error:
        raise with_file(error, path) from None
    try:
        scan = _Scan(opened.source)
        scan.run()
    finally:
        opened.close()
    references = [
        GlobalReference(module, name, opcode, index, offset, pickle_, scan.counts[key], resolved)
        for key, (module, name, opcode, index, offset, pickle_, resolved) in scan.first.items()
    ]
    return FileGlobals(path, references, scan.pickles, scan.unscanned, opened.compressed)


# ------------------------------------------------------------------ reading through a file


class _Ended(Exception):
    """The data ended (or could not be read further) in the middle of something."""


class _Window:
    """The file's bytes through a sliding window: exact reads, skips that keep nothing, and searches."""

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.failure: str | None = None  # why the data could not be read to its end

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def more(self, need: int) -> bool:
        """Whether ``need`` bytes are available at ``pos`` (reading on as needed)."""
        while len(self.buf) - self.pos < need:
            if self.failure is not None:
                return False
            try:
                chunk = self._source.read_some(max(need, _WINDOW))
            except UnreadableCheckpointError as error:  # corrupt gzip, the decompressed-size limit
                self.failure = str(error)
                return False
            if not chunk:
                self.failure = ""
                return False
            self.base += self.pos
            self.buf = self.buf[self.pos :] + chunk
            self.pos = 0
        return True

    def at_end(self) -> bool:
        return not self.more(1)

    def take(self, n: int) -> bytes:
        if not self.more(n):
            raise _Ended
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        while n:
            if not self.more(1):
                raise _Ended
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step

    def line(self) -> bytes | None:
        """The bytes up to a newline (consumed with it), or None if there is none within the line limit."""
        while True:
            end = self.buf.find(b"\n", self.pos, self.pos + _MAX_LINE + 1)
            if end >= 0:
                data = self.buf[self.pos : end]
                self.pos = end + 1
                return data
            available = len(self.buf) - self.pos
            if available > _MAX_LINE or not self.more(available + 1):
                return None

    def startswith(self, prefix: bytes) -> bool:
        return self.more(len(prefix)) and self.buf.startswith(prefix, self.pos)

    def resync(self) -> None:
        """Move to the next place a pickle or .npy record may start (past the current byte), or to the end."""
        self.pos += 1
        while True:
            found = _RESYNC.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.start()
                return
            keep = min(len(self.buf) - self.pos, 512)  # a candidate may straddle the window's edge
            self.pos = len(self.buf) - keep
            if not self.more(keep + 1):
                self.pos = len(self.buf)
                return


# ------------------------------------------------------------------ the opcode walk

_UNKNOWN: Final = object()  # any value this scan does not track: only short strings are kept

# What follows an opcode in the stream: nothing, a fixed-size integer, a length and that many
# bytes, a text line, or two text lines (GLOBAL, INST).
_NOARG, _FIXED, _LEN, _LINE, _LINES = range(5)
# What an opcode does to the stack, as far as this scan follows it.
(
    _PUSH,  # push a value not tracked
    _TEXT,  # push a string (kept if it could be a global's name)
    _LINE_TEXT,  # push a protocol 0 STRING or UNICODE line's string
    _MARK,
    _TO_MARK_PUSH,  # pop to the mark, push a value (LIST, TUPLE, DICT, FROZENSET, OBJ)
    _TO_MARK,  # pop to the mark (APPENDS, SETITEMS, ADDITEMS, POP_MARK)
    _POP_PUSH,  # pop n, push m
    _POP,
    _DUP,
    _GET,
    _PUT,
    _MEMOIZE,
    _GLOBAL,
    _INST,
    _STACK_GLOBAL,
    _EXT,
    _PERSID,
    _BINPERSID,
    _STOP,
    _NOTHING,  # PROTO, FRAME
    _REFUSED,  # OBJ, NEXT_BUFFER, READONLY_BUFFER: loading refuses the opcode itself, whatever it reaches
) = range(21)

# Keyed on pickle's own opcode constants: (argument, width, effect, pops, pushes).
_OPCODES: Final[dict[bytes, tuple[int, int, int, int, int]]] = {
    pickle.MARK: (_NOARG, 0, _MARK, 0, 0),
    pickle.STOP: (_NOARG, 0, _STOP, 0, 0),
    pickle.POP: (_NOARG, 0, _POP, 0, 0),
    pickle.POP_MARK: (_NOARG, 0, _TO_MARK, 0, 0),
    pickle.DUP: (_NOARG, 0, _DUP, 0, 0),
    pickle.PROTO: (_FIXED, 1, _NOTHING, 0, 0),
    pickle.FRAME: (_FIXED, 8, _NOTHING, 0, 0),
    **{op: (_NOARG, 0, _PUSH, 0, 0) for op in (pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE)},
    **{op: (_NOARG, 0, _PUSH, 0, 0) for op in (pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT)},
    pickle.EMPTY_SET: (_NOARG, 0, _PUSH, 0, 0),
    pickle.BININT: (_FIXED, 4, _PUSH, 0, 0),
    pickle.BININT1: (_FIXED, 1, _PUSH, 0, 0),
    pickle.BININT2: (_FIXED, 2, _PUSH, 0, 0),
    pickle.BINFLOAT: (_FIXED, 8, _PUSH, 0, 0),
    pickle.LONG1: (_LEN, 1, _PUSH, 0, 0),
    pickle.LONG4: (_LEN, -4, _PUSH, 0, 0),  # a negative width: the length is a signed integer
    **{op: (_LINE, 0, _PUSH, 0, 0) for op in (pickle.INT, pickle.LONG, pickle.FLOAT)},
    pickle.SHORT_BINBYTES: (_LEN, 1, _PUSH, 0, 0),
    pickle.BINBYTES: (_LEN, 4, _PUSH, 0, 0),
    pickle.BINBYTES8: (_LEN, 8, _PUSH, 0, 0),
    pickle.BYTEARRAY8: (_LEN, 8, _PUSH, 0, 0),
    pickle.SHORT_BINSTRING: (_LEN, 1, _TEXT, 0, 0),
    pickle.BINSTRING: (_LEN, -4, _TEXT, 0, 0),
    pickle.SHORT_BINUNICODE: (_LEN, 1, _TEXT, 0, 0),
    pickle.BINUNICODE: (_LEN, 4, _TEXT, 0, 0),
    pickle.BINUNICODE8: (_LEN, 8, _TEXT, 0, 0),
    pickle.STRING: (_LINE, 0, _LINE_TEXT, 0, 0),
    pickle.UNICODE: (_LINE, 0, _LINE_TEXT, 0, 0),
    **{op: (_NOARG, 0, _TO_MARK_PUSH, 0, 0) for op in (pickle.LIST, pickle.TUPLE, pickle.DICT, pickle.FROZENSET)},
    **{op: (_NOARG, 0, _REFUSED, 0, 0) for op in (pickle.OBJ, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)},
    **{op: (_NOARG, 0, _TO_MARK, 0, 0) for op in (pickle.APPENDS, pickle.SETITEMS, pickle.ADDITEMS)},
    pickle.TUPLE1: (_NOARG, 0, _POP_PUSH, 1, 1),
    pickle.TUPLE2: (_NOARG, 0, _POP_PUSH, 2, 1),
    pickle.TUPLE3: (_NOARG, 0, _POP_PUSH, 3, 1),
    pickle.APPEND: (_NOARG, 0, _POP_PUSH, 1, 0),
    pickle.SETITEM: (_NOARG, 0, _POP_PUSH, 2, 0),
    pickle.REDUCE: (_NOARG, 0, _POP_PUSH, 2, 1),
    pickle.BUILD: (_NOARG, 0, _POP_PUSH, 1, 0),
    pickle.NEWOBJ: (_NOARG, 0, _POP_PUSH, 2, 1),
    pickle.NEWOBJ_EX: (_NOARG, 0, _POP_PUSH, 3, 1),
    pickle.GET: (_LINE, 0, _GET, 0, 0),
    pickle.BINGET: (_FIXED, 1, _GET, 0, 0),
    pickle.LONG_BINGET: (_FIXED, 4, _GET, 0, 0),
    pickle.PUT: (_LINE, 0, _PUT, 0, 0),
    pickle.BINPUT: (_FIXED, 1, _PUT, 0, 0),
    pickle.LONG_BINPUT: (_FIXED, 4, _PUT, 0, 0),
    pickle.MEMOIZE: (_NOARG, 0, _MEMOIZE, 0, 0),
    pickle.GLOBAL: (_LINES, 0, _GLOBAL, 0, 0),
    pickle.INST: (_LINES, 0, _INST, 0, 0),
    pickle.STACK_GLOBAL: (_NOARG, 0, _STACK_GLOBAL, 0, 0),
    pickle.EXT1: (_FIXED, 1, _EXT, 0, 0),
    pickle.EXT2: (_FIXED, 2, _EXT, 0, 0),
    pickle.EXT4: (_FIXED, -4, _EXT, 0, 0),
    pickle.PERSID: (_LINE, 0, _PERSID, 0, 0),
    pickle.BINPERSID: (_NOARG, 0, _BINPERSID, 0, 0),
}
_TEXT_ENCODING: Final = {
    pickle.SHORT_BINSTRING[0]: "latin-1",
    pickle.BINSTRING[0]: "latin-1",
    pickle.SHORT_BINUNICODE[0]: "utf-8",
    pickle.BINUNICODE[0]: "utf-8",
    pickle.BINUNICODE8[0]: "utf-8",
}
_REFUSED_BECAUSE: Final = {
    "OBJ": ": it calls the class below the mark",
    "NEXT_BUFFER": ": an out-of-band buffer",
    "READONLY_BUFFER": "",
}
_NAMES: Final = {ord(op.code): op.name for op in pickletools.opcodes}
_TABLE: Final[list[tuple[int, int, int, int, int] | None]] = [None] * 256
for _opcode, _entry in _OPCODES.items():
    _TABLE[_opcode[0]] = _entry


class _Scan:
    """One file: its pickles and .npy records in order, references recorded, nothing built."""

    def __init__(self, source: ByteSource) -> None:
        self.window = _Window(source)
        self.budget = safe_pickle.MAX_OPCODES  # for the whole file
        self.first: dict[tuple[str, str, str], tuple[str, str, str, int, int, int, bool]] = {}
        self.counts: dict[tuple[str, str, str], int] = {}
        self.pickles: list[PickleFound] = []
        self.unscanned: list[UnscannedBytes] = []
        self._stop: str | None = None  # why the rest of the file is not scanned

    def run(self) -> None:
        window = self.window
        while self._stop is None and not window.at_end():
            if len(self.pickles) + len(self.unscanned) >= MAX_SPANS:
                self._stop = f"more than {MAX_SPANS:,} pickles and stretches that are none; the rest was not read"
                break
            problem = self._npy_record() if window.startswith(NPY_MAGIC) else self._pickle(window.offset)
            if problem is not None and self._stop is None:
                at = window.offset
                window.resync()
                self._skipped(at, window.offset, problem)
        if window.failure:
            self._skipped(window.offset, None, window.failure)
        elif self._stop is not None:
            self._skipped(window.offset, None, self._stop)

    def _skipped(self, start: int, end: int | None, reason: str) -> None:
        if end is not None and end <= start:
            return
        last = self.unscanned[-1] if self.unscanned else None
        if last is not None and last.end == start:  # adjacent: one stretch, with every reason
            reasons = last.reason if reason in last.reason else f"{last.reason}; then {reason}"
            self.unscanned[-1] = UnscannedBytes(last.start, end, reasons)
        else:
            self.unscanned.append(UnscannedBytes(start, end, reason))

    # ---- .npy records

    def _npy_record(self) -> str | None:
        """Read one record: skip an array's data, or scan the pickle of an object array."""
        window = self.window
        start = window.offset
        try:
            window.take(len(NPY_MAGIC))
            major = window.take(2)[0]
            if major not in (1, 2, 3):
                return f"unsupported .npy format version {major} at byte {start:,}"
            length = int.from_bytes(window.take(2 if major == 1 else 4), "little")
            if length > MAX_HEADER:
                return f".npy header of {length:,} bytes at byte {start:,} exceeds the {MAX_HEADER:,}-byte limit"
            header = parse_header(window.take(length), objects=True)
            if header.dtype is None:  # an object array: numpy stored it with pickle, which ends at its STOP
                return self._pickle(window.offset)
            window.skip(header.nbytes)
        except _Ended:
            return None  # the data ends here: there is nothing more to read
        except ReformerToolsError as error:  # a malformed or refused header: say so, and read on
            return f"an unusable .npy header at byte {start:,} ({error})"
        return None

    # ---- pickles

    def _pickle(self, start: int) -> str | None:
        """Walk one pickle to its STOP; return why the bytes at the current offset are no pickle, if they are not."""
        window = self.window
        stack: list[object] = []
        marks: list[int] = []
        memo: dict[int, object] = {}
        memo_known = True  # False once a PUT could not be followed: every later GET is then unknown
        count = 0
        problem: str | None = None
        not_pickle = False
        try:
            while True:
                if not window.more(1):
                    problem = "it ends without a STOP opcode"
                    break
                at = window.offset
                code = window.buf[window.pos]
                entry = _TABLE[code]
                if entry is None:
                    problem, not_pickle = f"byte 0x{code:02x} at {at:,} is no pickle opcode", True
                    break
                if self.budget <= 0:
                    self._stop = f"more than {safe_pickle.MAX_OPCODES:,} opcodes in the file; the rest was not read"
                    problem = self._stop
                    break
                self.budget -= 1
                window.pos += 1
                kind, width, effect, pops, pushes = entry
                arg: object = None
                if kind == _FIXED:
                    arg = int.from_bytes(window.take(abs(width)), "little", signed=width < 0)
                elif kind == _LEN:
                    length = int.from_bytes(window.take(abs(width)), "little", signed=width < 0)
                    if length < 0:
                        problem, not_pickle = f"a negative length at {at:,}", True
                        break
                    if effect == _TEXT and length <= 4 * _MAX_NAME:
                        arg = _decode(window.take(length), _TEXT_ENCODING[code])
                    else:
                        window.skip(length)
                elif kind == _LINE:
                    arg = window.line()
                    if arg is None:
                        problem, not_pickle = f"an unterminated text line at {at:,}", True
                        break
                elif kind == _LINES:
                    module, name = window.line(), window.line()
                    if module is None or name is None:
                        problem, not_pickle = f"an unterminated global name at {at:,}", True
                        break
                    arg = (_line_name(module), _line_name(name))
                count += 1
                if effect == _STOP:
                    break
                floor = marks[-1] if marks else 0
                if effect == _PUSH:
                    stack.append(_UNKNOWN)
                elif effect == _GET:
                    position = _memo_index(arg)
                    stack.append(memo.get(position, _UNKNOWN) if memo_known and position is not None else _UNKNOWN)
                elif effect == _POP_PUSH:
                    del stack[max(floor, len(stack) - pops) :]
                    if pushes:
                        stack.append(_UNKNOWN)
                elif effect == _MARK:
                    marks.append(len(stack))
                elif effect in (_TO_MARK_PUSH, _TO_MARK):
                    del stack[floor:]
                    if marks:
                        marks.pop()
                    if effect == _TO_MARK_PUSH:
                        stack.append(_UNKNOWN)
                elif effect == _TEXT:
                    stack.append(arg if isinstance(arg, str) and len(arg) <= _MAX_NAME else _UNKNOWN)
                elif effect == _LINE_TEXT:
                    stack.append(_line_text(code, arg))
                elif effect == _POP:
                    if len(stack) > floor:
                        stack.pop()
                    elif marks:
                        del stack[marks.pop() :]
                elif effect == _DUP:
                    stack.append(stack[-1] if len(stack) > floor else _UNKNOWN)
                elif effect in (_PUT, _MEMOIZE):
                    position = len(memo) if effect == _MEMOIZE else _memo_index(arg)
                    if position is None:
                        # The machine may read this index otherwise (or refuse it): no memo entry is certain now.
                        memo_known = False
                    else:
                        memo[position] = stack[-1] if len(stack) > floor else _UNKNOWN
                elif effect != _NOTHING:
                    self._reference_opcode(code, effect, arg, stack, marks, count - 1, at)
                    if self._stop is not None:
                        problem = self._stop
                        break
        except _Ended:
            problem = "it ends without a STOP opcode"
        if count:
            self.pickles.append(PickleFound(start, window.offset, count, problem))
        return problem if not_pickle else None

    def _reference_opcode(
        self, code: int, effect: int, arg: object, stack: list[object], marks: list[int], index: int, at: int
    ) -> None:
        """GLOBAL, INST, STACK_GLOBAL, EXT, PERSID and refused opcodes: record what each reaches, then its
        stack effect."""
        floor = marks[-1] if marks else 0
        opcode = _NAMES[code]
        pickle_index = len(self.pickles)
        if effect == _REFUSED:
            what = f"{opcode} (an opcode loading refuses{_REFUSED_BECAUSE.get(opcode, '')})"
            self._reference("?", what, opcode, index, at, pickle_index, False)
            if opcode == "OBJ":  # pops the class and its arguments down to the mark
                del stack[floor:]
                if marks:
                    marks.pop()
            if opcode != "READONLY_BUFFER":
                stack.append(_UNKNOWN)
            return
        if effect in (_GLOBAL, _INST):
            assert isinstance(arg, tuple)
            self._reference(arg[0], arg[1], opcode, index, at, pickle_index, True)
            if effect == _INST:
                del stack[floor:]
                if marks:
                    marks.pop()
        elif effect == _STACK_GLOBAL:
            name = stack.pop() if len(stack) > floor else _UNKNOWN
            module = stack.pop() if len(stack) > floor else _UNKNOWN
            if isinstance(module, str) and isinstance(name, str):
                self._reference(module, name, opcode, index, at, pickle_index, True)
            else:
                what = "a module and name the pickle builds as it runs, which this scan cannot name"
                self._reference("?", what, opcode, index, at, pickle_index, False)
        elif effect == _EXT:
            what = f"{opcode} code {arg} (a global from copyreg's extension registry)"
            self._reference("?", what, opcode, index, at, pickle_index, False)
        else:  # PERSID, BINPERSID
            if effect == _BINPERSID and len(stack) > floor:
                stack.pop()
            what = f"{opcode} (an object only a persistent_load hook can make)"
            self._reference("?", what, opcode, index, at, pickle_index, False)
        stack.append(_UNKNOWN)

    def _reference(
        self, module: str, name: str, opcode: str, index: int, at: int, pickle_index: int, resolved: bool
    ) -> None:
        key = (module, name, opcode)
        if key in self.counts:
            self.counts[key] += 1
            return
        if len(self.first) >= MAX_REFERENCES:
            self._stop = f"more than {MAX_REFERENCES:,} different global references; the rest was not read"
            return
        self.first[key] = (module, name, opcode, index, at, pickle_index, resolved)
        self.counts[key] = 1


def _memo_index(arg: object) -> int | None:
    """A PUT or GET index as the pickle machine reads it (``int()`` of the line, up to its length limit)."""
    if isinstance(arg, int):
        return arg
    if isinstance(arg, bytes) and len(arg) <= _MAX_INDEX_TEXT:
        try:
            return int(arg)
        except ValueError:
            return None
    return None


def _decode(raw: bytes, encoding: str) -> object:
    """A string operand as pickle would decode it; one pickle could not decode is tracked as unknown."""
    try:
        return raw.decode(encoding, "surrogatepass")
    except UnicodeDecodeError:
        return _UNKNOWN


def _line_name(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) <= _MAX_NAME else text[:_MAX_NAME] + "..."


def _line_text(code: int, arg: object) -> object:
    """The value of a protocol 0 STRING or UNICODE line, when short enough to be a global's name."""
    if not isinstance(arg, bytes) or len(arg) > 4 * _MAX_NAME:
        return _UNKNOWN
    try:
        text = safe_pickle.string_line(arg) if code == pickle.STRING[0] else safe_pickle.unicode_line(arg)
    except ValueError:
        return _UNKNOWN
    return text if len(text) <= _MAX_NAME else _UNKNOWN
