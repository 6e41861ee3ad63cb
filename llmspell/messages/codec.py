"""The one codec: message objects to msgpack bytes and back, validated.

Envelope (a msgpack array)::

    [tag: str, version: int, fields: array]

``tag`` names the message class (registered with ``@message("tag")``),
``version`` is the schema version of that class, ``fields`` holds the field
values in declaration order, the trailing ones equal to their defaults left
off. A field whose type is another message class (or a list of them) is
carried as that message's own field array. Actor addresses are carried as
msgpack extension type 1 (a pickled Thespian ``ActorAddress``, unpickled only
into Thespian address classes).

``decode`` never raises anything but ``MessageError``: bad bytes, a wrong tag,
an unknown version, a missing or mistyped field, too many fields each give one
``MessageError`` that names what was wrong and where (``outcomes.items[3].status:
expected str, got int``): positions are named by the class's field names.

Every task crosses the codec four times, so the per-class encoder and decoder
are generated once as straight-line Python from the field annotations (about
1-2 us per task spec each way, against 5-10 us for a generic walk).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union

import msgpack

from .._exceptions import MessageError

__all__ = [
    "Address",
    "Message",
    "check_data",
    "decode",
    "decode_as",
    "decode_many",
    "encode",
    "encode_item",
    "encode_with_items",
    "message",
    "registry",
]

_ADDRESS_EXT = 1


class Message:
    """Base of every wire message: a slotted dataclass registered with
    ``@message(tag)``."""

    __slots__ = ()
    TAG: typing.ClassVar[str] = ""
    VERSION: typing.ClassVar[int] = 1


class Address:
    """Field annotation marker: a Thespian ``ActorAddress``."""


registry: dict[str, type[Message]] = {}
_decoders: dict[type[Message], Callable[[Any], Message]] = {}
# a message class -> its fields as the array that travels (``_build``)
_encoders: dict[type[Message], Callable[[Any], list[Any]]] = {}

M = TypeVar("M", bound=type[Message])
_M = TypeVar("_M", bound=Message)


def message(tag: str, version: int = 1) -> Callable[[M], M]:
    """Register a slotted dataclass as a wire message under ``tag``."""

    def register(cls: M) -> M:
        if tag in registry:
            raise ValueError(f"message tag {tag!r} registered twice")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        cls.TAG = tag
        cls.VERSION = version
        registry[tag] = cls
        return cls

    return register


# -- errors with paths --------------------------------------------------------


def _kind(value: Any) -> str:
    return type(value).__name__


def _at(where: str, exc: MessageError) -> MessageError:
    """``exc`` with ``where`` put in front of its location."""
    inner = exc.where
    if not inner:
        path = where
    elif inner.startswith("["):
        path = where + inner
    else:
        path = f"{where}.{inner}"
    return MessageError(exc.message, where=path)


def _bad(name: str, expected: str, value: Any) -> MessageError:
    return MessageError(f"expected {expected}, got {_kind(value)}", where=name)


# -- checkers used by generated code (each raises MessageError with a relative path) --


def _to_float(v: Any, name: str) -> float:
    if type(v) is int:
        return float(v)
    raise _bad(name, "float", v)


def _check_map(v: Any, name: str) -> dict[str, Any]:
    if type(v) is not dict:
        raise _bad(name, "a map", v)
    for k in v:
        if type(k) is not str:
            raise MessageError(f"map key {k!r} is not a string", where=name)
    return v


def _check_address(v: Any, name: str) -> Any:
    from thespian.actors import ActorAddress

    if not isinstance(v, ActorAddress):
        raise _bad(name, "an actor address", v)
    return v


def _list_of(v: Any, name: str, item: Callable[[Any], Any]) -> list[Any]:
    if type(v) is not list:
        raise _bad(name, "a list", v)
    out = []
    for i, x in enumerate(v):
        try:
            out.append(item(x))
        except MessageError as exc:
            raise _at(f"{name}[{i}]", exc) from None
    return out


def _map_of(v: Any, name: str, item: Callable[[Any], Any]) -> dict[str, Any]:
    _check_map(v, name)
    out = {}
    for k, x in v.items():
        try:
            out[k] = item(x)
        except MessageError as exc:
            raise _at(f"{name}.{k}", exc) from None
    return out


def _nested(v: Any, name: str, dec: Callable[[Any], Any]) -> Any:
    try:
        return dec(v)
    except MessageError as exc:
        raise _at(name, exc) from None


def _item_checker(tp: Any) -> Callable[[Any], Any]:
    """A one-argument checker for list items and map values (rarely hot)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda v: v
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _item_checker(options[0]) if len(options) == 1 else (lambda v: v)
        return lambda v: None if v is None else inner(v)
    if isinstance(tp, type) and issubclass(tp, Message):
        cache: list[Callable[[Any], Message]] = []

        def nested(v: Any) -> Any:
            if not cache:
                cache.append(_decoder(tp))
            return cache[0](v)

        return nested
    if tp is Address:
        return lambda v: _check_address(v, "")
    if origin is dict:
        return lambda v: _check_map(v, "")
    if origin is list:
        inner_l = _item_checker((typing.get_args(tp) or (Any,))[0])
        return lambda v: _list_of(v, "", inner_l)
    if tp is float:
        return lambda v: v if type(v) is float else _to_float(v, "")
    if tp in (str, int, bool, bytes):
        name = tp.__name__

        def check(v: Any) -> Any:
            if type(v) is not tp:
                raise MessageError(f"expected {name}, got {_kind(v)}")
            return v

        return check
    raise TypeError(f"unsupported message field type {tp!r}")


# -- code generation ----------------------------------------------------------


def _namespace() -> dict[str, Any]:
    from . import types as msg_types

    ns = dict(vars(msg_types))
    ns["Address"] = Address
    ns["Any"] = Any
    return ns


def _field_code(name: str, tp: Any, env: dict[str, Any], k: int, x: str = "x") -> list[str]:
    """Lines that check (and maybe convert) the local variable ``x`` for field ``name``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return []
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) != 1:
            return []
        inner = _field_code(name, options[0], env, k, x)
        if not inner:
            return []
        return [f"if {x} is not None:", *("    " + line for line in inner)]
    if tp in (str, int, bool, bytes):
        env[f"T{k}"] = tp
        return [f"if type({x}) is not T{k}: raise _bad({name!r}, {tp.__name__!r}, {x})"]
    if tp is float:
        return [f"if type({x}) is not float: {x} = _to_float({x}, {name!r})"]
    if tp is Address:
        return [f"{x} = _check_address({x}, {name!r})"]
    if origin is dict:
        val_tp = (typing.get_args(tp) or (str, Any))[1]
        if val_tp is Any:
            return [f"_check_map({x}, {name!r})"]
        env[f"I{k}"] = _item_checker(val_tp)
        return [f"{x} = _map_of({x}, {name!r}, I{k})"]
    if origin is list:
        item_tp = (typing.get_args(tp) or (Any,))[0]
        if item_tp is Any:
            return [f"if type({x}) is not list: raise _bad({name!r}, 'a list', {x})"]
        env[f"I{k}"] = _item_checker(item_tp)
        if item_tp in (str, int, bool, bytes):  # (deps): no conversion, a loop of checks
            env[f"T{k}"] = item_tp
            return [
                f"if type({x}) is not list: raise _bad({name!r}, 'a list', {x})",
                f"for i in {x}:",
                f"    if type(i) is not T{k}: _list_of({x}, {name!r}, I{k})",  # (raises)
            ]
        if isinstance(item_tp, type) and issubclass(item_tp, Message):
            # hot path (batches of tasks and outcomes): one comprehension; the
            # slow path runs only to name the bad item's index
            env[f"LD{k}"] = _decoder(item_tp)
            return [
                f"if type({x}) is not list: raise _bad({name!r}, 'a list', {x})",
                "try:",
                f"    {x} = [LD{k}(i) for i in {x}]",
                "except MessageError:",
                f"    {x} = _list_of({x}, {name!r}, I{k})",
            ]
        return [f"{x} = _list_of({x}, {name!r}, I{k})"]
    if isinstance(tp, type) and issubclass(tp, Message):
        env[f"C{k}"] = tp
        env[f"D{k}"] = _lazy_decoder(tp)
        return [f"if type({x}) is not C{k}: {x} = _nested({x}, {name!r}, D{k})"]
    raise TypeError(f"unsupported message field type {tp!r}")


def _lazy_decoder(tp: type[Message]) -> Callable[[Any], Message]:
    """``tp``'s decoder, looked up on first use (classes may nest themselves)."""
    cache: list[Callable[[Any], Message]] = []

    def dec(v: Any) -> Message:
        if not cache:
            cache.append(_decoder(tp))
        return cache[0](v)

    return dec


def _build(cls: type[Message]) -> None:
    """Generate ``cls``'s field encoder and decoder.

    Fields travel as an array in declaration order; the trailing fields equal
    to their defaults are left off (``is``-identical defaults: None, bools,
    small ints, the very default string), so a trivial task spec is a short
    array of its id, kind and target.
    """
    hints = typing.get_type_hints(cls, localns=_namespace())
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    required = sum(
        1
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    env: dict[str, Any] = {
        "cls": cls,
        "MessageError": MessageError,
        "_bad": _bad,
        "_to_float": _to_float,
        "_check_map": _check_map,
        "_check_address": _check_address,
        "_list_of": _list_of,
        "_map_of": _map_of,
        "_nested": _nested,
        "_kind": _kind,
        "_enc": _encode_value,
        "NAMES": names,
    }
    n = len(fields)
    if any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be a positional __init__ argument")
    dec = [
        "def decode_fields(data):",
        "    if type(data) is not list:",
        "        raise MessageError(f'expected an array of fields, got {_kind(data)}')",
        "    n = len(data)",
        f"    if n < {required}:",
        "        raise MessageError('missing field', where=NAMES[n])",
        f"    if n > {n}:",
        f"        raise MessageError(f'too many fields: {{n}} (this message has {n})')",
    ]
    enc = ["def encode_fields(m):"]
    # The fields present are checked in place (``data`` is the decoder's own,
    # fresh from msgpack: a converted value is written back) and passed on as
    # they are: ``cls(*data)`` fills in the defaults of those left off. The
    # checks of the optional fields nest, each under "if n > k", so a short
    # array (the usual trivial spec) skips the rest with one compare.
    pad = "    "
    for k, f in enumerate(fields):
        name, tp = f.name, hints[f.name]
        v = f"v{k}"
        check = _field_code(name, tp, env, k, v)
        if check and any(line.lstrip().startswith(f"{v} = ") or f": {v} = " in line
                         for line in check):  # fmt: skip
            check.append(f"data[{k}] = {v}")
        if f.default is not dataclasses.MISSING:
            env[f"DEF{k}"] = f.default
            check = [f"if {v} is not DEF{k}:", *("    " + line for line in check)] if check else []
        if not check:
            continue  # (any value: nothing to look at)
        if k < required:
            dec.append(f"    {v} = data[{k}]")
            dec.extend("    " + line for line in check)
        elif len(pad) > 200:  # too deep for the parser: a flat guard
            dec.append(f"    if n > {k}:")
            dec.append(f"        {v} = data[{k}]")
            dec.extend("        " + line for line in check)
        else:
            dec.append(f"{pad}if n > {k}:")
            pad += "    "
            dec.append(f"{pad}{v} = data[{k}]")
            dec.extend(pad + line for line in check)
    for k, f in enumerate(fields):
        name, tp = f.name, hints[f.name]
        is_message = _message_like(tp)
        item_cls = _list_item_message(tp)
        if item_cls is not None:
            env[f"EL{k}"] = _list_encoder(item_cls)
        expr = f"EL{k}(x)" if item_cls is not None else ("_enc(x)" if is_message else "x")
        if expr == "x":
            enc.append(f"    x{k} = m.{name}")
        else:
            enc.append(f"    x = m.{name}")
            if f.default is not dataclasses.MISSING:
                enc.append(f"    x{k} = None if x is None else {expr}")
            else:
                enc.append(f"    x{k} = {expr}")
    dec.append("    return cls(*data)")
    # how many fields to send: stop after the last one that is not its default
    enc.append(f"    n = {n}")
    depth = 1
    for k in range(n - 1, required - 1, -1):
        f = fields[k]
        pad = "    " * depth
        if f.default is not dataclasses.MISSING:
            env[f"DEF{k}"] = f.default
            enc.append(f"{pad}if x{k} is DEF{k}:")
        elif f.default_factory is not dataclasses.MISSING:
            enc.append(f"{pad}if not x{k}:")
        else:
            break
        enc.append(f"{pad}    n = {k}")
        depth += 1
    xs = ", ".join(f"x{k}" for k in range(n))
    enc.append(f"    return [{xs}][:n]" if n else "    return []")
    exec("\n".join(dec), env)
    exec("\n".join(enc), env)
    _decoders[cls] = env["decode_fields"]
    _encoders[cls] = env["encode_fields"]


def _message_like(tp: Any) -> bool:
    """Does a value of this type need message encoding (nested messages)?"""
    if isinstance(tp, type) and issubclass(tp, Message):
        return True
    return any(_message_like(a) for a in typing.get_args(tp))


def _list_encoder(item_cls: type[Message]) -> Callable[[list[Any]], list[Any]]:
    """A ``list[item_cls]`` field's encoder: a list of field arrays."""
    cache: list[Callable[[Any], list[Any]]] = []

    def encode_list(xs: list[Any]) -> list[Any]:
        if not cache:
            cache.append(_encoder(item_cls))
        enc = cache[0]
        return [enc(x) for x in xs]

    return encode_list


def _list_item_message(tp: Any) -> type[Message] | None:
    """The item class of ``list[SomeMessage]``, else None."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(item, type) and issubclass(item, Message):
            return item
    return None


def _encode_value(v: Any) -> Any:
    """A field's value as it travels: a message as its field array, inside
    lists and dicts too; anything else as it is."""
    if isinstance(v, Message):
        return _encoder(type(v))(v)
    if type(v) is list:
        return [_encode_value(x) for x in v]
    if type(v) is dict:
        return {k: _encode_value(x) for k, x in v.items()}
    return v


def _decoder(cls: type[Message]) -> Callable[[Any], Message]:
    dec = _decoders.get(cls)
    if dec is None:
        _build(cls)
        dec = _decoders[cls]
    return dec


def _encoder(cls: type[Message]) -> Callable[[Any], list[Any]]:
    """``cls``'s field encoder: a message -> its field array, in declaration
    order, the trailing fields at their defaults left off (built once)."""
    enc = _encoders.get(cls)
    if enc is None:
        _build(cls)
        enc = _encoders[cls]
    return enc


# -- data checks --------------------------------------------------------------


def check_data(value: Any, where: str = "value") -> None:
    """Raise ``MessageError`` naming the path unless ``value`` is msgpack data:
    None, bool, int (64-bit), float, str, bytes (or a bytearray or memoryview,
    which arrive as bytes), list/tuple, dict with str keys, nested at most
    ``MAX_DEPTH`` levels (msgpack packs no deeper)."""
    _check_data(value, where, set())


MAX_DEPTH = 500


_SCALARS = frozenset((type(None), bool, str, bytes, float))


def _flat_map(value: dict[Any, Any]) -> bool:
    """``value`` maps str keys to scalars only (ints of 64 bits)."""
    for k, v in value.items():
        t = type(v)
        if type(k) is not str or (
            t not in _SCALARS and (t is not int or not -(2**63) <= v < 2**64)
        ):
            return False
    return True


def _check_data(value: Any, where: str, seen: set[int]) -> None:
    if type(value) is dict and _flat_map(value):  # fast path: the usual args
        return
    if value is None or isinstance(value, (bool, str, bytes, bytearray, memoryview, float)):
        return  # (a bytearray or memoryview travels as bytes)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise MessageError("integer does not fit in 64 bits", where=where)
        return
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            raise MessageError("contains a reference cycle", where=where)
        if len(seen) >= MAX_DEPTH:
            short = where if len(where) <= 60 else f"{where[:30]}...{where[-20:]}"
            raise MessageError(f"nested more than {MAX_DEPTH} levels deep", where=short)
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise MessageError(
                        f"map key {k!r} is a {_kind(k)}; keys must be strings", where=where
                    )
                _check_data(v, f"{where}.{k}", seen)
        else:
            for i, v in enumerate(value):
                _check_data(v, f"{where}[{i}]", seen)
        seen.discard(id(value))
        return
    raise MessageError(
        f"a {_kind(value)} is not msgpack data "
        "(use None, bool, int, float, str, bytes, list or dict with str keys)",
        where=where,
    )


# -- encoding -----------------------------------------------------------------


def _default(obj: Any) -> Any:
    from thespian.actors import ActorAddress

    if isinstance(obj, ActorAddress):
        return msgpack.ExtType(_ADDRESS_EXT, pickle.dumps(obj, protocol=4))
    if isinstance(obj, Message):
        return _encoder(type(obj))(obj)
    raise TypeError(f"cannot encode a {_kind(obj)}")


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's packer (``msgpack.packb`` makes a new one per call, which
    costs more than packing a task spec)."""
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(default=_default, use_bin_type=True)
        return _local.packer


def _lenient_packer() -> msgpack.Packer:
    """A packer that takes a str holding a lone surrogate (JavaScript strings may,
    and so may Python's) and carries it unchanged between llmspell's own actors
    (decoding uses "surrogatepass" too). Used only when the strict one refused:
    it packs a third slower."""
    try:
        return _local.lenient
    except AttributeError:
        _local.lenient = msgpack.Packer(
            default=_default, use_bin_type=True, unicode_errors="surrogatepass"
        )
        return _local.lenient


def _pack(obj: Any) -> bytes:
    try:
        return _packer().pack(obj)  # type: ignore[no-any-return]
    except UnicodeEncodeError:  # (msgpack resets a packer's buffer when packing fails)
        return _lenient_packer().pack(obj)  # type: ignore[no-any-return]


def encode(msg: Message) -> bytes:
    """Encode a registered message to bytes. Raises ``MessageError`` when a
    field holds something msgpack cannot carry."""
    try:
        fields = _encoder(type(msg))(msg)
        return _pack([msg.TAG, msg.VERSION, fields])
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot encode {type(msg).__name__}: {exc}") from None


def encode_item(item: Message) -> bytes:
    """One message's field array packed on its own, for ``encode_with_items``."""
    try:
        return _pack(_encoder(type(item))(item))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot encode {type(item).__name__}: {exc}") from None


def encode_with_items(cls: type[Message], packed: list[bytes]) -> bytes:
    """The envelope of a ``cls`` whose first field is a list of messages given
    already packed (``encode_item``), every other field at its default. A big
    batch is encoded item by item, so no item object outlives its encoding."""
    n = len(packed)
    if n == 1:  # one task at a time: the envelope is always the same bytes
        head = _ONE_HEAD.get(cls)
        if head is None:
            head = _ONE_HEAD[cls] = _envelope(cls, 1)
        return head + packed[0]
    return b"".join([_envelope(cls, n), *packed])


_ONE_HEAD: dict[type[Message], bytes] = {}


def _envelope(cls: type[Message], n: int) -> bytes:
    """The bytes before the ``n`` packed items of ``encode_with_items``."""
    p = msgpack.Packer(use_bin_type=True)
    return b"".join(
        [
            p.pack_array_header(3),
            p.pack(cls.TAG),
            p.pack(cls.VERSION),
            p.pack_array_header(1),
            p.pack_array_header(n),
        ]
    )


def own_data(value: Any, where: str = "value") -> Any:
    """``value`` checked as msgpack data (``MessageError`` naming the path if
    not) and copied as a trip through the wire would (a scalar is itself)."""
    t = type(value)
    if t is int:
        if -(2**63) <= value < 2**64:
            return value
    elif t in _SCALARS:
        return value
    elif t is dict and _flat_map(value):  # the usual: a usage, a small result
        return dict(value)
    check_data(value, where)
    return copy_data(value)


def copy_data(value: Any) -> Any:
    """A copy of msgpack data, as a trip through the wire would give it."""
    return msgpack.unpackb(
        _pack(value), raw=False, ext_hook=_ext_hook, unicode_errors="surrogatepass"
    )


# -- decoding -----------------------------------------------------------------


_ADDRESS_PARTS = frozenset(
    (
        ("socket", "AddressFamily"),
        ("socket", "SocketKind"),
        ("builtins", "set"),
        ("llmspell._loop", "LoopAddress"),  # an embedded runtime's actors
    )
)


class _AddressUnpickler(pickle.Unpickler):
    """Unpickles Thespian actor addresses and the few plain types inside them;
    refuses every other class (so no code can ride in an address)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module.startswith("thespian.") and "Address" in name) or (
            (module, name) in _ADDRESS_PARTS
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not an actor address class")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ADDRESS_EXT:
        raise MessageError(f"unknown msgpack extension type {code}")
    try:
        return _AddressUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise MessageError(f"bad actor address: {exc}") from None


def decode_as(cls: type[_M], data: bytes) -> _M:
    """Decode and validate one envelope that must hold a ``cls`` (a stored
    message: a journal's task spec). The same checks as ``decode`` with less
    around them; raises only ``MessageError``."""
    try:
        env = msgpack.unpackb(
            data, raw=False, ext_hook=_ext_hook, strict_map_key=True, unicode_errors="surrogatepass"
        )
    except Exception:
        env = None
    if (
        type(env) is not list
        or len(env) != 3
        or env[0] != cls.TAG
        or type(env[1]) is not int
        or env[1] != cls.VERSION
    ):
        msg = decode(data)  # the error it makes, or a valid message of another class
        if type(msg) is not cls:
            raise MessageError(f"expected a {cls.TAG!r} message, got {msg.TAG!r}")
        return msg
    try:
        return _decoder(cls)(env[2])  # type: ignore[return-value]
    except MessageError as exc:
        raise _at(cls.TAG, exc) from None
    except Exception as exc:
        why = f"malformed fields: {type(exc).__name__}: {exc}"
        raise MessageError(why, where=cls.TAG) from None


def decode_many(cls: type[_M], blobs: list[bytes]) -> list[_M]:
    """``decode_as`` of each of ``blobs`` in one loop (a journal's specs on
    resume: 100,000s of them). Raises ``MessageError`` if any does not decode;
    ``decode_as`` of each then says which and why."""
    dec = _decoder(cls)
    tag, version, hook, unpack = cls.TAG, cls.VERSION, _ext_hook, msgpack.unpackb
    out: list[_M] = []
    add = out.append
    try:
        for data in blobs:
            env = unpack(
                data, raw=False, ext_hook=hook, strict_map_key=True, unicode_errors="surrogatepass"
            )
            if (
                type(env) is not list
                or len(env) != 3
                or env[0] != tag
                or type(env[1]) is not int
                or env[1] != version
            ):
                raise MessageError(f"not a {tag!r} envelope")
            add(dec(env[2]))  # type: ignore[arg-type]
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"does not decode: {type(exc).__name__}: {exc}") from None
    return out


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode and validate one envelope. Raises only ``MessageError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes, got {_kind(data)}")
    try:
        env = msgpack.unpackb(
            data,
            raw=False,
            ext_hook=_ext_hook,
            strict_map_key=True,
            unicode_errors="surrogatepass",
        )
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"not a msgpack envelope: {type(exc).__name__}: {exc}") from None
    if type(env) is not list or len(env) != 3:
        raise MessageError("envelope must be a 3-item array [tag, version, fields]")
    tag, version, fields = env
    if type(tag) is not str:
        raise MessageError(f"type tag must be a string, got {_kind(tag)}")
    cls = registry.get(tag)
    if cls is None:
        raise MessageError(f"unknown message type tag {tag!r}")
    if type(version) is not int or version != cls.VERSION:
        raise MessageError(
            f"unknown schema version {version!r} for {tag!r} (this side speaks {cls.VERSION})"
        )
    try:
        return _decoder(cls)(fields)
    except MessageError as exc:
        raise _at(tag, exc) from None
    except Exception as exc:  # e.g. unhashable keys in a set check
        raise MessageError(f"malformed fields: {type(exc).__name__}: {exc}", where=tag) from None
