"""The wire codec: every message round-trips; bad bytes give one MessageError."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from thespian.actors import ActorAddress

from llmspell import MessageError
from llmspell.messages import decode, encode, registry
from llmspell.messages import types as t
from llmspell.messages.codec import Address, Message

# msgpack data: what may cross engines
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def strategy_for(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, __import__("types").UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | strategy_for(options[0], depth)
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(strategy_for(item, depth + 1), max_size=3)
    if origin is dict:
        _, val = typing.get_args(tp)
        return st.dictionaries(st.text(max_size=8), strategy_for(val, depth + 1), max_size=3)
    if tp is Address:
        return st.builds(ActorAddress, st.text(min_size=1, max_size=10))
    if isinstance(tp, type) and issubclass(tp, Message):
        if depth > 2:
            return st.nothing()
        return message_strategy(tp, depth + 1)
    return {
        str: st.text(max_size=20),
        int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        float: st.floats(allow_nan=False),
        bool: st.booleans(),
        bytes: st.binary(max_size=20),
    }[tp]


def message_strategy(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls, localns={**vars(t), "Address": Address, "Any": Any})
    fields = {f.name: strategy_for(hints[f.name], depth) for f in dataclasses.fields(cls)}
    if cls is t.TaskSpec and depth > 1:
        fields["compensate"] = st.none()
    return st.builds(cls, **fields)


def same(a: Any, b: Any) -> bool:
    """Equality that treats actor addresses by their string form."""
    if isinstance(a, ActorAddress):
        return str(a) == str(b)
    if isinstance(a, Message):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return (bool(a == b) and type(a) is type(b)) or (type(a), type(b)) == (int, float)


@pytest.mark.parametrize("tag", sorted(registry))
def test_every_message_type_round_trips(tag: str) -> None:
    cls = registry[tag]

    @given(message_strategy(cls))
    def check(msg: Message) -> None:
        back = decode(encode(msg))
        assert same(msg, back), (msg, back)

    check()


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_message_error(raw: bytes) -> None:
    try:
        decode(raw)
    except MessageError:
        pass


envelope_parts = st.lists(data, max_size=4) | data


@given(
    st.sampled_from(sorted(registry)),
    st.lists(data, max_size=20) | st.dictionaries(st.text(max_size=10), data, max_size=6),
)
def test_arbitrary_fields_raise_only_message_error(tag: str, fields: Any) -> None:
    try:
        decode(msgpack.packb([tag, 1, fields], use_bin_type=True))
    except MessageError:
        pass


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a msgpack envelope"),
        (b"\xc1", "not a msgpack envelope"),
        (msgpack.packb([1, 2]), "envelope must be a 3-item array"),
        (msgpack.packb(["nope", 1, []]), "unknown message type tag 'nope'"),
        (msgpack.packb([7, 1, []]), "type tag must be a string"),
        (msgpack.packb(["outcome", 9, []]), "unknown schema version 9 for 'outcome'"),
        (msgpack.packb(["outcome", 1, {"task_id": "a"}]), "outcome: expected an array of fields"),
        (msgpack.packb(["outcome", 1, ["a"]]), "outcome.status: missing field"),
        (msgpack.packb(["outcome", 1, [3, "x"]]), "outcome.task_id: expected str, got int"),
        (
            msgpack.packb(["outcome", 1, ["a", "x", None, None, None, 0, "extra"]]),
            "outcome: too many fields: 7 (this message has 6)",
        ),
        (
            msgpack.packb(["outcomes", 1, [[["a", "s"], []]]]),
            "outcomes.items[1].task_id: missing field",
        ),
        (
            msgpack.packb(
                ["submit", 1, [[["a", "lua", None, None, None, None, None, None, 1, None, "x"]]]]
            ),
            "submit.tasks[0].deps: expected a list",
        ),
        (
            msgpack.packb(
                ["submit", 1, [[["a", "x", *[None] * 6, 1, None, None, 0, *[None] * 4, [1, "js"]]]]]
            ),
            "submit.tasks[0].compensate.id: expected str",
        ),
        (
            msgpack.packb(["progress", 1, ["a", None, "x"]]),
            "progress.total_steps: expected float",
        ),
        (
            msgpack.packb(["introduce", 1, ["r", {"s": 1}]]),
            "introduce.addresses.s: expected an actor address",
        ),
        (
            msgpack.packb(["introduce", 1, ["r", {"s": msgpack.ExtType(1, b"junk")}]]),
            "bad actor address",
        ),
        (msgpack.packb(["outcome", 1, msgpack.ExtType(5, b"")]), "extension type 5"),
    ],
)
def test_bad_envelopes_name_what_was_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(raw)
    assert message in str(info.value)


def test_pickled_code_cannot_ride_in_an_address() -> None:
    import os
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    raw = msgpack.packb(["introduce", 1, ["r", {"s": msgpack.ExtType(1, pickle.dumps(Evil()))}]])
    with pytest.raises(MessageError, match="not an actor address class"):
        decode(raw)


def test_trailing_defaults_are_left_off_the_wire() -> None:
    small = msgpack.unpackb(encode(t.TaskSpec(id="a", kind="python", target="m:f")))
    assert small == ["task", 1, ["a", "python", None, "m:f"]]
    high = msgpack.unpackb(encode(t.TaskSpec(id="a", kind="lua", code="x", priority=3)))
    assert high[2] == ["a", "lua", "x", None, None, None, None, None, 3]


def test_int_fields_accept_no_float_and_float_fields_accept_int() -> None:
    msg = decode(msgpack.packb(["progress", 1, ["a", None, 3]]))
    assert isinstance(msg, t.ProgressReport) and msg.total_steps == 3.0
    with pytest.raises(MessageError, match="expected int"):
        decode(msgpack.packb(["task", 1, ["a", "x", None, None, None, None, None, None, 1.5]]))


def test_unencodable_field_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="cannot encode TaskOutcome"):
        encode(t.TaskOutcome("a", "succeeded", value=object()))


def test_every_message_type_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "messages.md").read_text()
    for tag, cls in registry.items():
        assert f"| `{tag}` | `{cls.__name__}` |" in doc, f"{tag} missing from docs/messages.md"


def test_a_batch_encoded_item_by_item_is_the_same_message() -> None:
    from llmspell.messages.codec import encode_item, encode_with_items

    specs = [
        t.TaskSpec(id="a", kind="python", target="m:f", args={"x": 1}),
        t.TaskSpec(id="b", kind="lua", code="return 1", priority=3, deps=["a"]),
    ]
    joined = encode_with_items(t.SubmitTasks, [encode_item(s) for s in specs])
    assert joined == encode(t.SubmitTasks(specs))
    assert decode(joined) == t.SubmitTasks(specs)
    assert decode(encode_with_items(t.SubmitTasks, [])) == t.SubmitTasks([])


def test_fields_left_off_take_their_defaults_a_fresh_one_from_a_factory() -> None:
    a = decode(msgpack.packb(["introduce", 1, ["r", {}]]))
    b = decode(msgpack.packb(["introduce", 1, ["r", {}]]))
    assert isinstance(a, t.Introduce) and isinstance(b, t.Introduce)
    assert a == t.Introduce("r", {}) and a.config == {} and a.config is not b.config
    spec = decode(msgpack.packb(["task", 1, ["a", "lua", "return 1"]]))
    assert spec == t.TaskSpec(id="a", kind="lua", code="return 1")


def test_a_bad_field_after_good_ones_is_named_and_every_present_field_is_checked() -> None:
    base = ["a", "lua", None, None, None, None, None, None, 1, 2, ["d"], 0]
    spec = decode(msgpack.packb(["task", 1, base]))
    assert isinstance(spec, t.TaskSpec) and spec.timeout == 2.0 and spec.deps == ["d"]
    for k, bad, where in [
        (10, ["d", 3], "task.deps[1]"),
        (10, "d", "task.deps"),
        (11, "0", "task.retries"),
        (9, "2", "task.timeout"),
    ]:
        fields = list(base)
        fields[k] = bad
        with pytest.raises(MessageError) as info:
            decode(msgpack.packb(["task", 1, fields]))
        assert info.value.where == where, (k, bad)


def test_decode_many_gives_what_decode_does_or_one_message_error() -> None:
    from llmspell.messages.codec import decode_as, decode_many

    specs = [t.TaskSpec(id=str(i), kind="lua", code="return 1", deps=["x"]) for i in range(3)]
    blobs = [encode(s) for s in specs]
    assert decode_many(t.TaskSpec, blobs) == specs == [decode_as(t.TaskSpec, b) for b in blobs]
    for bad in (b"\xc1", encode(t.Introduce("r", {})), msgpack.packb(["task", 1, ["a"]]), "text"):
        with pytest.raises(MessageError):
            decode_many(t.TaskSpec, [*blobs, bad])  # type: ignore[list-item]
        with pytest.raises(MessageError):
            decode_as(t.TaskSpec, bad)  # type: ignore[arg-type]


def test_a_task_error_travels_as_a_dict_holding_only_what_is_set() -> None:
    from llmspell import ScriptError, TaskFailed
    from llmspell._exceptions import error_from_outcome

    bare = t.TaskError("it broke").wire()
    assert bare == {"message": "it broke"}
    full = t.TaskError("boom", kind="script", engine="lua", traceback="", data={"x": 1}).wire()
    outcome = decode(encode(t.TaskOutcome("t1", "failed", error=full)))
    assert isinstance(outcome, t.TaskOutcome) and outcome.error == full
    exc = error_from_outcome("t1", "failed", outcome.error)
    assert isinstance(exc, ScriptError) and exc.engine == "lua" and exc.data == {"x": 1}
    plain = error_from_outcome("t1", "failed", bare)
    assert type(plain) is TaskFailed and plain.engine == "runtime"
