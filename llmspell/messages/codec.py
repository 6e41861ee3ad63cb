"""The one codec: message objects to msgpack bytes and back, validated.

Envelope (a msgpack array)::

    [tag: str, version: int, fields: map]

``tag`` names the message class (registered with ``@message("tag")``),
``version`` is the schema version of that class, ``fields`` maps field names
to msgpack data. A field whose type is another message class (or a list of
them) is carried as that message's own field map. Actor addresses are carried
as msgpack extension type 1 (a pickled Thespian ``ActorAddress``, unpickled
only into Thespian address classes).

``decode`` never raises anything but ``MessageError``: bad bytes, a wrong tag,
an unknown version, a missing, unknown or mistyped field each give one
``MessageError`` that names what was wrong and where.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
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
    "encode",
    "message",
    "registry",
]

_ADDRESS_EXT = 1


class Message:
    """Base of every wire message. Subclasses are frozen slotted dataclasses
    registered with ``@message(tag)``."""

    __slots__ = ()
    TAG: typing.ClassVar[str] = ""
    VERSION: typing.ClassVar[int] = 1


class Address:
    """Field annotation marker: a Thespian ``ActorAddress``."""


registry: dict[str, type[Message]] = {}
_Checker = Callable[[Any, str], Any]
_decoders: dict[str, Callable[[dict[str, Any], str], Message]] = {}

M = TypeVar("M", bound=type[Message])


def message(tag: str, version: int = 1) -> Callable[[M], M]:
    """Register a frozen, slotted dataclass as a wire message under ``tag``."""

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


def _finalize(cls: type[Message]) -> None:
    """Build the encoder and decoder of ``cls`` (lazily, once all classes exist)."""
    hints = typing.get_type_hints(cls, localns=_namespace())
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    checks: dict[str, _Checker] = {}
    required: list[str] = []
    static_defaults: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    encode_spec: list[tuple[str, Any]] = []
    for f in fields:
        checks[f.name] = _checker_for(hints[f.name])
        if f.default is not dataclasses.MISSING:
            static_defaults[f.name] = f.default
            encode_spec.append((f.name, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            factories.append((f.name, f.default_factory))
            encode_spec.append((f.name, f.default_factory()))
        else:
            required.append(f.name)
            encode_spec.append((f.name, _REQUIRED))
    _encode_specs[cls] = tuple(encode_spec)

    def decode_fields(data: dict[str, Any], where: str) -> Message:
        if type(data) is not dict:
            raise MessageError(f"expected a map of fields, got {_kind(data)}", where=where)
        values = dict(static_defaults)
        for name, v in data.items():
            check = checks.get(name)
            if check is None:
                raise MessageError(f"unknown field {name!r}", where=where)
            values[name] = check(v, f"{where}.{name}")
        for name in required:
            if name not in data:
                raise MessageError("missing field", where=f"{where}.{name}")
        for name, factory in factories:
            if name not in data:
                values[name] = factory()
        return cls(**values)

    _decoders[cls.TAG] = decode_fields


_REQUIRED = object()
_encode_specs: dict[type[Message], tuple[tuple[str, Any], ...]] = {}


def _namespace() -> dict[str, Any]:
    from . import types as msg_types

    ns = dict(vars(msg_types))
    ns["Address"] = Address
    ns["Any"] = Any
    return ns


def _kind(value: Any) -> str:
    return type(value).__name__


def _checker_for(tp: Any) -> _Checker:
    origin = typing.get_origin(tp)
    if tp is Any:
        return _check_any
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(options) < len(typing.get_args(tp))
        inner = _checker_for(options[0]) if len(options) == 1 else _check_any

        def check_optional(v: Any, where: str) -> Any:
            if v is None:
                if optional:
                    return None
                raise MessageError("must not be nil", where=where)
            return inner(v, where)

        return check_optional
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        item = _checker_for(item_tp)

        def check_list(v: Any, where: str) -> Any:
            if not isinstance(v, list):
                raise MessageError(f"expected a list, got {_kind(v)}", where=where)
            return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        return check_list
    if origin is dict:
        _, val_tp = typing.get_args(tp) or (str, Any)
        val = _checker_for(val_tp)

        def check_dict(v: Any, where: str) -> Any:
            if not isinstance(v, dict):
                raise MessageError(f"expected a map, got {_kind(v)}", where=where)
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise MessageError(f"map key {k!r} is not a string", where=where)
                out[k] = val(x, f"{where}.{k}")
            return out

        return check_dict
    if tp is Address:
        return _check_address
    if isinstance(tp, type) and issubclass(tp, Message):
        tag = tp.TAG

        def check_nested(v: Any, where: str) -> Any:
            if isinstance(v, tp):
                return v
            if tag not in _decoders:
                _finalize(tp)
            return _decoders[tag](v, where)

        return check_nested
    if tp is float:
        return _check_float
    if tp is bool:
        return _simple(bool)
    if tp is int:
        return _check_int
    if tp in (str, bytes):
        return _simple(tp)
    raise TypeError(f"unsupported message field type {tp!r}")


def _simple(tp: type) -> _Checker:
    name = tp.__name__

    def check(v: Any, where: str) -> Any:
        if type(v) is not tp:
            raise MessageError(f"expected {name}, got {_kind(v)}", where=where)
        return v

    return check


def _check_int(v: Any, where: str) -> Any:
    if type(v) is not int:
        raise MessageError(f"expected int, got {_kind(v)}", where=where)
    return v


def _check_float(v: Any, where: str) -> Any:
    if type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    raise MessageError(f"expected float, got {_kind(v)}", where=where)


def _check_any(v: Any, where: str) -> Any:
    return v


def _check_address(v: Any, where: str) -> Any:
    from thespian.actors import ActorAddress

    if not isinstance(v, ActorAddress):
        raise MessageError(f"expected an actor address, got {_kind(v)}", where=where)
    return v


def check_data(value: Any, where: str = "value") -> None:
    """Raise ``MessageError`` naming the path unless ``value`` is msgpack data:
    None, bool, int (64-bit), float, str, bytes, list/tuple, dict with str keys."""
    _check_data(value, where, set())


def _check_data(value: Any, where: str, seen: set[int]) -> None:
    if value is None or isinstance(value, (bool, str, bytes, float)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise MessageError("integer does not fit in 64 bits", where=where)
        return
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            raise MessageError("contains a reference cycle", where=where)
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


# -- encoding --------------------------------------------------------------


def _to_wire(msg: Message) -> dict[str, Any]:
    """The field map of ``msg``; fields equal to their default are left out."""
    spec = _encode_specs.get(type(msg))
    if spec is None:
        _finalize(type(msg))
        spec = _encode_specs[type(msg)]
    out = {}
    for name, default in spec:
        v = getattr(msg, name)
        if default is _REQUIRED or v != default:
            out[name] = _wire_value(v)
    return out


def _wire_value(v: Any) -> Any:
    if isinstance(v, Message):
        return _to_wire(v)
    if type(v) is list and v and isinstance(v[0], Message):
        return [_to_wire(x) if isinstance(x, Message) else x for x in v]
    return v


def _default(obj: Any) -> Any:
    from thespian.actors import ActorAddress

    if isinstance(obj, ActorAddress):
        return msgpack.ExtType(_ADDRESS_EXT, pickle.dumps(obj, protocol=4))
    if isinstance(obj, Message):
        return _to_wire(obj)
    raise TypeError(f"cannot encode a {_kind(obj)}")


def encode(msg: Message) -> bytes:
    """Encode a registered message to bytes. Raises ``MessageError`` when a
    field holds something msgpack cannot carry."""
    try:
        return msgpack.packb(  # type: ignore[no-any-return]
            [msg.TAG, msg.VERSION, _to_wire(msg)], default=_default, use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot encode {type(msg).__name__}: {exc}") from None


# -- decoding --------------------------------------------------------------


class _AddressUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("thespian.") and "Address" in name:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not an actor address class")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ADDRESS_EXT:
        raise MessageError(f"unknown msgpack extension type {code}")
    try:
        return _AddressUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise MessageError(f"bad actor address: {exc}") from None


def decode(data: bytes) -> Message:
    """Decode and validate one envelope. Raises only ``MessageError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"expected bytes, got {_kind(data)}")
    try:
        env = msgpack.unpackb(
            data, raw=False, ext_hook=_ext_hook, strict_map_key=True, use_list=True
        )
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"not a msgpack envelope: {type(exc).__name__}: {exc}") from None
    if not isinstance(env, list) or len(env) != 3:
        raise MessageError("envelope must be a 3-item array [tag, version, fields]")
    tag, version, fields = env
    if not isinstance(tag, str):
        raise MessageError(f"type tag must be a string, got {_kind(tag)}")
    cls = registry.get(tag)
    if cls is None:
        raise MessageError(f"unknown message type tag {tag!r}")
    if type(version) is not int or version != cls.VERSION:
        raise MessageError(
            f"unknown schema version {version!r} for {tag!r} (this side speaks {cls.VERSION})"
        )
    decoder = _decoders.get(tag)
    if decoder is None:
        _finalize(cls)
        decoder = _decoders[tag]
    return decoder(fields, tag)

