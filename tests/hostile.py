"""Hand-assembled hostile pickles, and the checkpoint layouts to hide them in.

Payloads are written opcode by opcode: nothing a payload names is imported,
called or pickled here, so writing one can never run it (``compile`` builds the
code object ``marshal`` serializes; nothing executes it). Every payload that
names code would, if a real unpickler ran it, create its canary file (``touch``,
or Python that writes the file). Payloads that probe a construct which cannot
run code by itself put that construct first and a canary call after it: the
loader must stop at the construct, so its error names the construct.

Tests never hand these to ``pickle``: ``pickletools`` (a parser) checks that
each is a well-formed stream, and the canary checks that nothing ran.
"""

from __future__ import annotations

import gzip
import marshal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# ------------------------------------------------------------------ opcodes

MARK = b"("
STOP = b"."
POP = b"0"
NONE = b"N"
REDUCE = b"R"
BUILD = b"b"
TUPLE = b"t"
EMPTY_TUPLE = b")"
LIST = b"l"
EMPTY_LIST = b"]"
APPEND = b"a"
APPENDS = b"e"
DICT = b"d"
EMPTY_DICT = b"}"
SETITEM = b"s"
SETITEMS = b"u"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"
TRUE = b"\x88"
FALSE = b"\x89"


def proto(version: int) -> bytes:
    return b"\x80" + bytes([version])


def global_(module: str, name: str) -> bytes:
    """GLOBAL: the protocol 0 text form every protocol still accepts."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    """INST: GLOBAL and a call in one opcode (protocol 0); the arguments follow a MARK."""
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def string(text: str) -> bytes:
    """Protocol 0 STRING ("S'...'"), latin-1 text with Python escapes."""
    return b"S'" + text.encode("latin-1").replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'\n"


def ustr(text: str) -> bytes:
    """BINUNICODE (protocol 1+); surrogates survive, as Python's pickle writes them."""
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def sstr(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    data = text.encode("utf-8")
    return b"\x8c" + bytes([len(data)]) + data


def integer(value: int) -> bytes:
    """Protocol 0 INT: readable by every unpickler."""
    return b"I" + str(value).encode() + b"\n"


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def put(index: int) -> bytes:
    return b"q" + bytes([index])


def get(index: int) -> bytes:
    return b"h" + bytes([index])


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def lst(*items: bytes) -> bytes:
    return MARK + b"".join(items) + LIST


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return MARK + b"".join(k + v for k, v in pairs) + DICT


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + REDUCE


def stack_global(module: str, name: str) -> bytes:
    return sstr(module) + sstr(name) + STACK_GLOBAL


def latin1_bytes(data: bytes) -> bytes:
    """Bytes the way protocol 0-2 pickle them: ``_codecs.encode(text, 'latin1')``."""
    return call(global_("_codecs", "encode"), ustr(data.decode("latin-1")), ustr("latin1"))


def numpy_dtype(code: str) -> bytes:
    """``numpy.dtype(code, False, True)`` with its state: how numpy pickles a dtype."""
    state = tup(integer(3), string("<"), NONE, NONE, NONE, integer(-1), integer(-1), integer(0))
    return call(global_("numpy", "dtype"), string(code), integer(0), integer(1)) + state + BUILD


def numpy_array(shape: tuple[int, ...], code: str, data: bytes) -> bytes:
    """A genuine array, pickled the way numpy does (``_reconstruct`` then BUILD)."""
    state = tup(integer(1), tup(*(integer(d) for d in shape)), numpy_dtype(code), integer(0), latin1_bytes(data))
    return _reconstruct() + state + BUILD


def _reconstruct() -> bytes:
    """``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')``: an empty array awaiting BUILD."""
    reconstruct = global_("numpy.core.multiarray", "_reconstruct")
    return call(reconstruct, global_("numpy", "ndarray"), tup(integer(0)), latin1_bytes(b"b"))


def small_array() -> bytes:
    return numpy_array((2,), "f4", b"\0" * 8)


# ------------------------------------------------------------------ payloads


def shell(canary: Path) -> str:
    return f"touch {canary}"


def python_code(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').close()"


@dataclass(frozen=True)
class Payload:
    """One attack: ``body(canary)`` pushes one object; the loader must refuse it.

    ``refused``: what the loader's error names. ``globals``: every global the
    pickle references (``inspect --globals`` must list each, the memo-hidden
    ones too). ``unnamed``: an opcode that reaches an object through no global
    name (EXT through copyreg's registry, PERSID through a hook): ``--globals``
    lists it as a reference it cannot name, always refused.
    """

    name: str
    body: Callable[[Path], bytes]
    refused: str
    globals: frozenset[str]
    protocol: int = 2
    unnamed: str | None = None
    redefines_memo: bool = False  # pickle allows it; pickletools.dis, stricter, refuses such a pickle


def _system(module: str, canary: Path) -> bytes:
    return call(global_(module, "system"), ustr(shell(canary)))


def _builtin_eval(canary: Path) -> bytes:
    return call(global_("builtins", "eval"), ustr(f"__import__('os').system({shell(canary)!r})"))


def _builtin_exec(canary: Path) -> bytes:
    return call(global_("builtins", "exec"), ustr(python_code(canary)))


def _compile_then_exec(canary: Path) -> bytes:
    code = call(global_("builtins", "compile"), ustr(python_code(canary)), ustr("<checkpoint>"), ustr("exec"))
    return call(global_("builtins", "exec"), code)


def _getattr_chain(canary: Path) -> bytes:
    os_module = call(global_("builtins", "__import__"), ustr("os"))
    system = call(global_("builtins", "getattr"), os_module, ustr("system"))
    return system + tup(ustr(shell(canary))) + REDUCE


def _protocol0_text(canary: Path) -> bytes:
    # Nothing but protocol 0 text opcodes: GLOBAL, MARK, STRING, TUPLE, REDUCE.
    return global_("os", "system") + MARK + string(shell(canary)) + TUPLE + REDUCE


def _memo_hidden_stack_global(canary: Path) -> bytes:
    # The module and name are written once, far from STACK_GLOBAL, as innocent
    # strings in a list; STACK_GLOBAL later fetches them from the memo.
    innocent = EMPTY_LIST + MARK + sstr("os") + MEMOIZE + sstr("system") + MEMOIZE + APPENDS + POP
    return innocent + get(0) + get(1) + STACK_GLOBAL + tup(ustr(shell(canary))) + REDUCE


def _dotted_os_path(canary: Path) -> bytes:
    # Protocol 4 resolves dotted names attribute by attribute: os.path -> posixpath.os.system.
    return stack_global("os.path", "os.system") + tup(ustr(shell(canary))) + REDUCE


def _dotted_numpy_builtins(canary: Path) -> bytes:
    # numpy is partly allowed; the exact-pair rule must still refuse any other name in it.
    builtins_dict = stack_global("numpy", "core.multiarray.__builtins__") + MEMOIZE + POP
    getitem = call(global_("operator", "getitem"), get(0), ustr("exec"))
    return builtins_dict + getitem + tup(ustr(python_code(canary))) + REDUCE


def _numpy_runstring(canary: Path) -> bytes:
    return call(global_("numpy.testing._private.utils", "runstring"), ustr(python_code(canary)), EMPTY_DICT)


def _numpy_load(canary: Path) -> bytes:
    # numpy.load(evil.npy, None, allow_pickle=True): the file would be an object
    # array whose pickle runs the canary. It never gets that far.
    return call(global_("numpy", "load"), ustr(str(canary.with_suffix(".npy"))), NONE, TRUE)


def _npyio_load(canary: Path) -> bytes:
    return call(global_("numpy.lib.npyio", "load"), ustr(str(canary.with_suffix(".npy"))), NONE, TRUE)


def _importlib(canary: Path) -> bytes:
    os_module = call(global_("importlib", "import_module"), ustr("os"))
    return call(global_("builtins", "getattr"), os_module, ustr("system")) + tup(ustr(shell(canary))) + REDUCE


def _marshal_function(canary: Path) -> bytes:
    # compile() builds a code object without running it; marshal.dumps only serializes it.
    code = marshal.dumps(compile(python_code(canary), "<checkpoint>", "exec"))
    code_object = call(global_("marshal", "loads"), binbytes(code))
    function = call(global_("types", "FunctionType"), code_object, EMPTY_DICT)
    return function + EMPTY_TUPLE + REDUCE


def _popen(canary: Path) -> bytes:
    return call(global_("subprocess", "Popen"), lst(ustr("touch"), ustr(str(canary))))


def _inst(canary: Path) -> bytes:
    return MARK + string(shell(canary)) + inst("os", "system")


def _obj(canary: Path) -> bytes:
    return MARK + global_("os", "system") + string(shell(canary)) + b"o"


def _obj_allowed_class(canary: Path) -> bytes:
    # OBJ calls the class it finds below the mark: loading refuses the opcode even for an allowed class.
    return MARK + global_("numpy", "dtype") + string("f4") + b"o"


def _memo_long_index(canary: Path) -> bytes:
    # PUT indexes of more than 20 digits overwrite "numpy" and "dtype" with "os" and "system": the scan once
    # skipped such PUTs and named numpy.dtype, where loading reaches os.system.
    def long_put(index: int) -> bytes:
        return b"p" + b"0" * 25 + str(index).encode() + b"\n"

    strings = sstr("numpy") + b"p1\n" + POP + sstr("dtype") + b"p2\n" + POP
    strings += sstr("os") + long_put(1) + POP + sstr("system") + long_put(2) + POP
    return strings + b"g1\ng2\n" + STACK_GLOBAL + tup(ustr(shell(canary))) + REDUCE


def _ext(canary: Path) -> bytes:
    # copyreg.add_extension('os', 'system', 240) registers a code; EXT1 240 then names os.system.
    register = call(global_("copyreg", "add_extension"), ustr("os"), ustr("system"), integer(240)) + POP
    return register + b"\x82\xf0" + tup(ustr(shell(canary))) + REDUCE


def _ext_only(opcode: bytes) -> Callable[[Path], bytes]:
    def body(canary: Path) -> bytes:
        code = {b"\x82": b"\xf0", b"\x83": b"\xf0\x00", b"\x84": b"\xf0\x00\x00\x00"}[opcode]
        return opcode + code + tup(ustr(shell(canary))) + REDUCE

    return body


def _persid(canary: Path) -> bytes:
    return b"P" + shell(canary).encode() + b"\n"


def _binpersid(canary: Path) -> bytes:
    return ustr(shell(canary)) + b"Q"


def _newobj_setstate(canary: Path) -> bytes:
    # The classic BUILD trick: the first BUILD plants __setstate__ = os.system in
    # the instance dict, the second BUILD calls it with the command.
    obj = global_("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ
    plant = dct((ustr("__setstate__"), global_("os", "system"))) + BUILD
    return obj + plant + ustr(shell(canary)) + BUILD


def _build_on_allowed_history(canary: Path) -> bytes:
    # An allowed class, then the same trick: the state smuggles a callable in.
    obj = global_("trax.history", "History") + EMPTY_TUPLE + NEWOBJ
    plant = dct((ustr("_values"), EMPTY_DICT), (ustr("__setstate__"), stack_global("posix", "system"))) + BUILD
    return obj + plant + ustr(shell(canary)) + BUILD


def _build_state_calls(canary: Path) -> bytes:
    obj = global_("trax.shapes", "ShapeDtype") + EMPTY_TUPLE + NEWOBJ
    return obj + dct((ustr("shape"), _system("os", canary))) + BUILD


def _build_on_dict(canary: Path) -> bytes:
    # BUILD on something that is not waiting for state (a dict) would, in pickle,
    # set attributes on it; only the tool's own rebuilders may receive BUILD.
    plant = dct((ustr("__dict__"), EMPTY_DICT), (ustr("__setstate__"), NONE)) + BUILD
    return EMPTY_DICT + plant + POP + _system("os", canary)


def _build_on_allowed_global(canary: Path) -> bytes:
    plant = global_("builtins", "dict") + dct((ustr("__setstate__"), NONE)) + BUILD + POP
    return plant + _system("os", canary)


def _newobj_ex(canary: Path) -> bytes:
    return global_("subprocess", "Popen") + tup(lst(ustr("touch"), ustr(str(canary)))) + EMPTY_DICT + NEWOBJ_EX


def _reduce_allowed_non_reducer(canary: Path) -> bytes:
    # numpy.ndarray is allowed as an argument of the array rebuilder, never as a call.
    return call(global_("numpy", "ndarray"), tup(integer(1))) + POP + _system("os", canary)


def _object_dtype_array(canary: Path) -> bytes:
    # A real object array: numpy's setstate would unpickle the list, running os.system.
    items = lst(_system("os", canary))
    state = tup(integer(1), tup(integer(1)), numpy_dtype("O8"), integer(0), items)
    return _reconstruct() + state + BUILD


def _object_scalar(canary: Path) -> bytes:
    # numpy.core.multiarray.scalar(dtype('O'), obj): an object scalar holds anything.
    return call(global_("numpy.core.multiarray", "scalar"), numpy_dtype("O8"), _system("os", canary))


def _structured_dtype(canary: Path) -> bytes:
    # A void dtype whose state adds an object field: the array data then holds objects.
    fields = dct((ustr("a"), tup(numpy_dtype("O8"), integer(0))))
    state = tup(integer(3), string("|"), NONE, tup(ustr("a")), fields, integer(8), integer(1), integer(63))
    dtype = call(global_("numpy", "dtype"), string("V8"), integer(0), integer(1)) + state + BUILD
    return dtype + POP + _system("os", canary)


def _codecs_encoding(canary: Path) -> bytes:
    # Only latin-1 may be asked for: any other name sends the text through codec machinery.
    return call(global_("_codecs", "encode"), ustr("x"), ustr("utf-16")) + POP + _system("os", canary)


def _defaultdict_factory(canary: Path) -> bytes:
    return call(global_("collections", "defaultdict"), global_("os", "system"))


def _defaultdict_allowed_nonfactory(canary: Path) -> bytes:
    # numpy.ndarray is an allowed global but not a factory; a defaultdict calls its factory.
    return call(global_("collections", "defaultdict"), global_("numpy", "ndarray")) + POP + _system("os", canary)


def _jax_fun(canary: Path) -> bytes:
    # jax's rebuilder calls fun(*args): fun must be numpy's _reconstruct and nothing else.
    return call(
        global_("jax._src.array", "_reconstruct_array"), global_("os", "system"), tup(ustr(shell(canary))), NONE
    )


def _jax_allowed_wrong_fun(canary: Path) -> bytes:
    fun = global_("numpy.core.multiarray", "scalar")
    reduce = call(global_("jax._src.array", "_reconstruct_array"), fun, tup(numpy_dtype("f4")), NONE)
    return reduce + POP + _system("os", canary)


def _fix_imports_builtin(canary: Path) -> bytes:
    # Python 2 names: pickle maps __builtin__ to builtins for protocols < 3.
    return call(global_("__builtin__", "eval"), ustr(f"__import__('os').system({shell(canary)!r})"))


def _timeit(canary: Path) -> bytes:
    return call(global_("timeit", "timeit"), ustr(python_code(canary)), ustr("pass"), NONE, integer(1))


def _runpy(canary: Path) -> bytes:
    return call(global_("runpy", "_run_code"), ustr(python_code(canary)), EMPTY_DICT)


def _sys_modules(canary: Path) -> bytes:
    # No import at all: reach os through sys.modules with operator.getitem and methodcaller.
    modules = stack_global("sys", "modules")
    os_module = call(global_("operator", "getitem"), modules, ustr("os"))
    caller = call(global_("operator", "methodcaller"), ustr("system"), ustr(shell(canary)))
    return caller + tup(os_module) + REDUCE


def _near_miss(canary: Path) -> bytes:
    # Exact pairs only: near-misses of allowed names are different modules to an importer.
    near_miss = call(global_("numpy.core.multiarray ", "_reconstruct"), global_("numpy", "ndarray"))
    return near_miss + POP + _system("os", canary)


_OS = frozenset({"os.system"})

PAYLOADS: tuple[Payload, ...] = (
    Payload("reduce_os_system", lambda c: _system("os", c), "os.system", _OS),
    Payload("reduce_posix_system", lambda c: _system("posix", c), "posix.system", frozenset({"posix.system"})),
    Payload("reduce_nt_system", lambda c: _system("nt", c), "nt.system", frozenset({"nt.system"})),
    Payload("builtins_eval", _builtin_eval, "builtins.eval", frozenset({"builtins.eval"})),
    Payload("builtins_exec", _builtin_exec, "builtins.exec", frozenset({"builtins.exec"})),
    Payload(
        "compile_then_exec",
        _compile_then_exec,
        "builtins.exec",
        frozenset({"builtins.exec", "builtins.compile"}),
    ),
    Payload(
        "getattr_import_chain",
        _getattr_chain,
        "builtins.getattr",
        frozenset({"builtins.getattr", "builtins.__import__"}),
    ),
    Payload("protocol0_text_global", _protocol0_text, "os.system", _OS, protocol=0),
    Payload("memo_hidden_stack_global", _memo_hidden_stack_global, "os.system", _OS, protocol=4),
    Payload("dotted_os_path", _dotted_os_path, "os.path.os.system", frozenset({"os.path.os.system"}), protocol=4),
    Payload(
        "dotted_numpy_builtins",
        _dotted_numpy_builtins,
        "numpy.core.multiarray.__builtins__",
        frozenset({"numpy.core.multiarray.__builtins__", "operator.getitem"}),
        protocol=4,
    ),
    Payload(
        "numpy_runstring",
        _numpy_runstring,
        "numpy.testing._private.utils.runstring",
        frozenset({"numpy.testing._private.utils.runstring"}),
    ),
    Payload("numpy_load_allow_pickle", _numpy_load, "numpy.load", frozenset({"numpy.load"})),
    Payload("numpy_npyio_load", _npyio_load, "numpy.lib.npyio.load", frozenset({"numpy.lib.npyio.load"})),
    Payload(
        "importlib_import_module",
        _importlib,
        "builtins.getattr",
        frozenset({"importlib.import_module", "builtins.getattr"}),
    ),
    Payload(
        "marshal_function",
        _marshal_function,
        "types.FunctionType",
        frozenset({"marshal.loads", "types.FunctionType"}),
    ),
    Payload("subprocess_popen", _popen, "subprocess.Popen", frozenset({"subprocess.Popen"})),
    Payload("inst_opcode", _inst, "INST", _OS, protocol=0),
    Payload("obj_opcode", _obj, "os.system", _OS, protocol=1),
    Payload("obj_on_an_allowed_class", _obj_allowed_class, "OBJ", frozenset({"numpy.dtype"}), 1, "OBJ"),
    Payload("memo_index_of_26_digits", _memo_long_index, "os.system", _OS, protocol=4, redefines_memo=True),
    Payload(
        "ext_registry",
        _ext,
        "copyreg.add_extension",
        frozenset({"copyreg.add_extension"}),
        unnamed="EXT1",
    ),
    Payload("ext1", _ext_only(b"\x82"), "EXT1", frozenset(), unnamed="EXT1"),
    Payload("ext2", _ext_only(b"\x83"), "EXT2", frozenset(), unnamed="EXT2"),
    Payload("ext4", _ext_only(b"\x84"), "EXT4", frozenset(), unnamed="EXT4"),
    Payload("persid", _persid, "PERSID", frozenset(), unnamed="PERSID"),
    Payload("binpersid", _binpersid, "BINPERSID", frozenset(), unnamed="BINPERSID"),
    Payload(
        "build_setstate_trick",
        _newobj_setstate,
        "argparse.Namespace",
        frozenset({"argparse.Namespace", "os.system"}),
    ),
    Payload(
        "build_on_allowed_class",
        _build_on_allowed_history,
        "posix.system",
        frozenset({"trax.history.History", "posix.system"}),
        protocol=4,
    ),
    Payload(
        "build_state_calls",
        _build_state_calls,
        "os.system",
        frozenset({"trax.shapes.ShapeDtype", "os.system"}),
    ),
    Payload("build_on_dict", _build_on_dict, "BUILD on dict", _OS),
    Payload(
        "build_on_allowed_global",
        _build_on_allowed_global,
        "BUILD on builtins.dict",
        frozenset({"builtins.dict", "os.system"}),
    ),
    Payload("newobj_ex_popen", _newobj_ex, "subprocess.Popen", frozenset({"subprocess.Popen"}), protocol=4),
    Payload(
        "reduce_allowed_non_reducer",
        _reduce_allowed_non_reducer,
        "REDUCE on numpy.ndarray",
        frozenset({"numpy.ndarray", "os.system"}),
    ),
    Payload(
        "object_dtype_array",
        _object_dtype_array,
        "object arrays are refused",
        frozenset(
            {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "_codecs.encode", "os.system"}
        ),
    ),
    Payload(
        "object_scalar",
        _object_scalar,
        "object arrays are refused",
        frozenset({"numpy.core.multiarray.scalar", "numpy.dtype", "os.system"}),
    ),
    Payload(
        "structured_dtype",
        _structured_dtype,
        "structured dtypes are refused",
        frozenset({"numpy.dtype", "os.system"}),
    ),
    Payload(
        "codecs_encode_utf16",
        _codecs_encoding,
        "refuses encoding 'utf-16'",
        frozenset({"_codecs.encode", "os.system"}),
    ),
    Payload(
        "defaultdict_os_system",
        _defaultdict_factory,
        "os.system",
        frozenset({"collections.defaultdict", "os.system"}),
    ),
    Payload(
        "defaultdict_allowed_non_factory",
        _defaultdict_allowed_nonfactory,
        "refuses factory numpy.ndarray",
        frozenset({"collections.defaultdict", "numpy.ndarray", "os.system"}),
    ),
    Payload(
        "jax_rebuilder_os_system",
        _jax_fun,
        "os.system",
        frozenset({"jax._src.array._reconstruct_array", "os.system"}),
    ),
    Payload(
        "jax_rebuilder_wrong_numpy_fun",
        _jax_allowed_wrong_fun,
        "refuses rebuilder numpy.core.multiarray.scalar",
        frozenset({"jax._src.array._reconstruct_array", "numpy.core.multiarray.scalar", "numpy.dtype", "os.system"}),
    ),
    Payload("fix_imports_builtin", _fix_imports_builtin, "__builtin__.eval", frozenset({"__builtin__.eval"})),
    Payload("timeit", _timeit, "timeit.timeit", frozenset({"timeit.timeit"})),
    Payload("runpy", _runpy, "runpy._run_code", frozenset({"runpy._run_code"})),
    Payload(
        "sys_modules_methodcaller",
        _sys_modules,
        "operator.methodcaller",
        frozenset({"operator.methodcaller", "sys.modules", "operator.getitem"}),
        protocol=4,
    ),
    Payload(
        "allowed_name_near_miss",
        _near_miss,
        "numpy.core.multiarray ._reconstruct",
        frozenset({"numpy.core.multiarray ._reconstruct", "numpy.ndarray", "os.system"}),
    ),
)


# ------------------------------------------------------------------ placements


def _header(payload: Payload) -> bytes:
    return proto(payload.protocol) if payload.protocol >= 2 else b""


def plain_pickle(payload: Payload, canary: Path) -> bytes:
    """The payload alone: the whole file is the attack."""
    return _header(payload) + payload.body(canary) + STOP


def checkpoint_pickle(payload: Payload, canary: Path) -> bytes:
    """A valid-looking Trainer checkpoint with the payload as its 'history'.

    Built from protocol 0 opcodes only, so it is as valid in protocol 0 as the
    payload is; the weights before it load fine.
    """
    entries = (
        (string("weights"), tup(small_array(), small_array())),
        (string("step"), integer(100)),
        (string("history"), payload.body(canary)),
        (string("version_timestamp"), string("Jun-18-2020")),
    )
    return _header(payload) + dct(*entries) + STOP


def loop_checkpoint_pickle(flat_weights: int) -> bytes:
    """A training.Loop main file whose weights live in side files (or shards)."""
    entries = (
        (string("flat_weights"), integer(flat_weights)),
        (string("step"), integer(100)),
        (string("version_timestamp"), string("Jan-01-2021")),
    )
    return proto(2) + dct(*entries) + STOP


def shard_pickle(payload: Payload, canary: Path) -> bytes:
    return _header(payload) + lst(small_array(), payload.body(canary)) + STOP


def npy_record(descr: str, shape: tuple[int, ...], data: bytes = b"", *, version: int = 1) -> bytes:
    """One .npy record: magic, version, padded header, then data."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    size_bytes = 2 if version == 1 else 4
    total = 6 + 2 + size_bytes + len(header) + 1
    header += b" " * (-total % 64) + b"\n"
    size = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


def npy_object_record(payload: Payload, canary: Path) -> bytes:
    """An object-dtype record: numpy stores its elements as a pickle after the header."""
    return npy_record("|O", (1,)) + plain_pickle(payload, canary)


@dataclass(frozen=True)
class Placed:
    """A hostile checkpoint on disk: what to pass on the command line, and where the payload is."""

    checkpoint: Path
    hostile_file: Path
    refused: str  # what the loader's error names for this placement


def place(payload: Payload, placement: str, directory: Path, canary: Path) -> Placed:
    """Write ``payload`` into ``directory`` in one of PLACEMENTS."""
    directory.mkdir(parents=True, exist_ok=True)
    if placement == "plain":
        path = directory / "model.pkl"
        path.write_bytes(plain_pickle(payload, canary))
        return Placed(path, path, payload.refused)
    if placement == "gzip":
        path = directory / "model.pkl.gz"
        path.write_bytes(gzip.compress(plain_pickle(payload, canary)))
        return Placed(path, path, payload.refused)
    if placement == "nested":
        path = directory / "model.pkl.gz"
        path.write_bytes(gzip.compress(checkpoint_pickle(payload, canary)))
        return Placed(path, path, payload.refused)
    if placement == "shard":
        path = directory / "model.pkl.gz"
        path.write_bytes(gzip.compress(loop_checkpoint_pickle(1)))
        shard = directory / "model.pkl.gz.shard0"
        shard.write_bytes(gzip.compress(shard_pickle(payload, canary)))
        return Placed(path, shard, payload.refused)
    if placement == "npy":
        path = directory / "model.pkl.gz"
        path.write_bytes(gzip.compress(loop_checkpoint_pickle(1)))
        side = directory / "model.weights.npy.gz"
        good = npy_record("<f4", (2,), b"\0" * 8)
        side.write_bytes(gzip.compress(good + npy_object_record(payload, canary)))
        return Placed(path, side, "holds Python objects")
    raise ValueError(placement)


PLACEMENTS = ("plain", "gzip", "nested", "shard", "npy")
