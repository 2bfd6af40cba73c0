"""The task channel's pure parts: schema checks, result payloads, sealing and the two
task messages. Keys, times and nonces are passed in; nothing here opens a socket."""

from __future__ import annotations

import math
from typing import Any

import pytest

from knarr.errors import (
    LocalProtocolError,
    MalformedMessage,
    MistypedMessage,
    OversizedMessage,
    RemoteProtocolError,
    ReplayedMessage,
    TaskError,
    TaskFailed,
    TaskRefused,
    TaskTimedOut,
    TruncatedMessage,
)
from knarr.node import cbor, wire
from knarr.node.identity import Identity
from knarr.node.taskchannel import Sealer
from knarr.node.tasks import (
    BOX_OVERHEAD,
    ERROR_CLASSES,
    FRAME_HEADER,
    MAX_SKILL_NAME,
    SEALED_OVERHEAD,
    Boxes,
    TaskRequest,
    TaskResult,
    check_frame_length,
    error_payload,
    frame,
    is_sealed,
    ok_payload,
    open_frame,
    outcome_of,
    schema_problem,
    seal_frame,
)

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
NOW_MS = 1_700_000_000_000
BOX_NONCE = b"\x07" * 24


# ------------------------------------------------------------------------ schemas


@pytest.mark.parametrize(
    ("schema", "data", "problem"),
    [
        ({"text": "string"}, {"text": "hi"}, None),
        ({"text": "string"}, {"text": "hi", "extra": [1, 2]}, None),
        ({}, {}, None),
        ({"text": "string"}, {}, "missing field 'text' (string)"),
        ({"text": "string", "n": "number"}, {"text": "hi"}, "missing field 'n'"),
        ({"text": "string"}, {"text": 5}, "'text' must be string, got int"),
        ({"text": "string"}, {"text": None}, "'text' must be string, got NoneType"),
        ({"n": "number"}, {"n": 3}, None),
        ({"n": "number"}, {"n": 2.5}, None),
        ({"n": "number"}, {"n": True}, "'n' must be number, got bool"),
        ({"n": "number"}, {"n": "3"}, "'n' must be number, got str"),
        ({"n": "number"}, {"n": math.nan}, "'n' must be number, got float"),
        ({"n": "number"}, {"n": math.inf}, "'n' must be number, got float"),
        ({"i": "integer"}, {"i": -7}, None),
        ({"i": "integer"}, {"i": 1.0}, "'i' must be integer, got float"),
        ({"i": "integer"}, {"i": False}, "'i' must be integer, got bool"),
        ({"b": "boolean"}, {"b": False}, None),
        ({"b": "boolean"}, {"b": 0}, "'b' must be boolean, got int"),
        ({"o": "object"}, {"o": {}}, None),
        ({"o": "object"}, {"o": []}, "'o' must be object, got list"),
        ({"a": "array"}, {"a": []}, None),
        ({"a": "array"}, {"a": {}}, "'a' must be array, got dict"),
        ({"x": "any"}, {"x": None}, None),
        ({"x": "any"}, {}, "missing field 'x'"),
        ({"x": "some-future-type"}, {"x": 1}, None),
        ({"text": "string"}, ["text"], "input must be a JSON object"),
        ({}, None, "input must be a JSON object"),
        ({}, "text", "input must be a JSON object"),
    ],
)
def test_schema_problem(schema: dict[str, str], data: Any, problem: str | None) -> None:
    found = schema_problem(schema, data)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_schema_problem_reports_the_first_declared_field() -> None:
    found = schema_problem({"a": "string", "b": "string"}, {})
    assert found is not None and "'a'" in found


# ------------------------------------------------------------------------ outcomes


def test_outcome_of_an_ok_payload_is_the_output() -> None:
    assert outcome_of(ok_payload({"text": "hi", "n": 1})) == {"text": "hi", "n": 1}
    assert outcome_of({"ok": {}}) == {}


@pytest.mark.parametrize(("code", "cls"), sorted(ERROR_CLASSES.items()))
def test_outcome_of_each_error_code_raises_its_class(code: str, cls: type[TaskError]) -> None:
    with pytest.raises(TaskError) as caught:
        outcome_of(error_payload(code, f"because {code}"))
    assert type(caught.value) is cls
    assert caught.value.code == code
    assert str(caught.value) == f"because {code}"


def test_error_codes_map_to_the_documented_classes() -> None:
    refused = {"not_found", "forbidden", "input_too_large", "invalid_input", "busy",
               "shutting_down", "credit_limit"}
    assert {c for c, k in ERROR_CLASSES.items() if k is TaskRefused} == refused
    assert {c for c, k in ERROR_CLASSES.items() if k is TaskFailed} == {"handler_error",
                                                                       "bad_output"}
    assert {c for c, k in ERROR_CLASSES.items() if k is TaskTimedOut} == {"timeout"}


def test_an_unknown_error_code_is_a_plain_task_error_that_keeps_its_code() -> None:
    with pytest.raises(TaskError) as caught:
        outcome_of({"error": {"code": "from_the_future"}})
    assert type(caught.value) is TaskError
    assert caught.value.code == "from_the_future"
    assert str(caught.value) == "from_the_future"


def test_error_payload_caps_the_message() -> None:
    payload = error_payload("handler_error", "x" * 5000)
    assert len(payload["error"]["message"]) == 1000


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "ok",
        {},
        {"ok": 1},
        {"ok": [1]},
        {"ok": {}, "error": {"code": "timeout"}},
        {"ok": {}, "extra": 1},
        {"error": "timeout"},
        {"error": {"message": "no code"}},
        {"error": {"code": 5}},
    ],
)
def test_outcome_of_garbage_is_a_mistyped_message(payload: Any) -> None:
    with pytest.raises(MistypedMessage):
        outcome_of(payload)


# -------------------------------------------------------------------------- sealing


def test_boxes_round_trip_between_the_two_ends_only() -> None:
    value = {"input": {"text": "attack at dawn", "n": 3}}
    sealed = Boxes(ALICE).seal(BOB.public_key, value, BOX_NONCE)
    assert b"attack at dawn" not in sealed
    assert len(sealed) == len(cbor.encode(value)) + BOX_OVERHEAD
    assert Boxes(BOB).open(ALICE.public_key, sealed, max_size=1024) == value
    with pytest.raises(MalformedMessage, match="does not open"):
        Boxes(MALLORY).open(ALICE.public_key, sealed, max_size=1024)
    with pytest.raises(MalformedMessage, match="does not open"):
        Boxes(BOB).open(MALLORY.public_key, sealed, max_size=1024)


def test_boxes_open_checks_the_size_before_decrypting() -> None:
    value = {"input": {"text": "x" * 100}}
    sealed = Boxes(ALICE).seal(BOB.public_key, value, BOX_NONCE)
    size = len(cbor.encode(value))  # the plaintext
    assert Boxes(BOB).open(ALICE.public_key, sealed, max_size=size) == value
    with pytest.raises(MalformedMessage, match="larger than allowed"):
        Boxes(BOB).open(ALICE.public_key, sealed, max_size=size - 1)
    garbage = bytes(range(256)) * 2
    with pytest.raises(MalformedMessage, match="larger than allowed"):
        Boxes(BOB).open(ALICE.public_key, garbage, max_size=100)
    with pytest.raises(MalformedMessage, match="does not open"):
        Boxes(BOB).open(ALICE.public_key, garbage, max_size=1000)


def test_a_tampered_box_does_not_open() -> None:
    sealed = bytearray(Boxes(ALICE).seal(BOB.public_key, {"input": {}}, BOX_NONCE))
    sealed[-1] ^= 1
    with pytest.raises(MalformedMessage, match="does not open"):
        Boxes(BOB).open(ALICE.public_key, bytes(sealed), max_size=1024)


def test_a_key_with_no_x25519_form_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="no X25519 form"):
        Boxes(ALICE).box(bytes(32))


def test_boxes_are_cached_per_peer_and_the_least_recent_is_evicted() -> None:
    boxes = Boxes(ALICE, capacity=2)
    first = boxes.box(BOB.public_key)
    assert boxes.box(BOB.public_key) is first
    boxes.box(MALLORY.public_key)
    boxes.box(BOB.public_key)  # now the most recent
    boxes.box(ALICE.public_key)  # evicts MALLORY's
    assert boxes.box(BOB.public_key) is first
    assert set(boxes._boxes) == {BOB.public_key, ALICE.public_key}


# -------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "message",
    [
        TaskRequest("echo", b"\x01" * 60),
        TaskRequest("a" * MAX_SKILL_NAME, b"", timeout_ms=30_000),
        TaskRequest("echo", b"\x05", sidecar=65535),
        TaskResult(b"\x02" * wire.NONCE_SIZE, b"\x03" * 60),
        TaskResult(b"\x02" * wire.NONCE_SIZE, b"\x03", receipt=b"\x06" * 200),
    ],
)
def test_task_messages_round_trip_through_a_sealed_frame(message: wire.Message) -> None:
    data = seal_frame(ALICE, Boxes(ALICE), BOB.public_key, message, now_ms=NOW_MS,
                      nonce=b"\x04" * 16, box_nonce=BOX_NONCE, max_size=4096)
    assert is_sealed(data) and len(data) == SEALED_OVERHEAD + wire.HEADER_SIZE + len(
        cbor.encode(message.to_body())
    )
    env = open_frame(Boxes(BOB), data, now_ms=NOW_MS, replay=None, max_size=4096)
    assert env.message == message
    assert env.public_key == ALICE.public_key
    assert env.nonce == b"\x04" * 16


def test_a_task_message_is_not_accepted_in_a_signed_envelope() -> None:
    data = wire.seal(ALICE, TaskRequest("echo", b"\xa0"), now_ms=NOW_MS, nonce=bytes(16),
                     max_size=4096)
    with pytest.raises(MistypedMessage):
        wire.open_envelope(data, now_ms=NOW_MS, replay=None, max_size=4096)


def test_a_signed_envelope_is_not_accepted_as_a_sealed_frame() -> None:
    data = wire.seal(ALICE, wire.FindNode(target=ALICE.node_id), now_ms=NOW_MS,
                     nonce=bytes(16), max_size=4096)
    with pytest.raises(MalformedMessage, match="bad magic"):
        open_frame(Boxes(BOB), data, now_ms=NOW_MS, replay=None, max_size=4096)


@pytest.mark.parametrize("where", range(0, 200, 7))
def test_a_sealed_frame_with_any_byte_changed_is_refused(where: int) -> None:
    data = bytearray(seal_frame(ALICE, Boxes(ALICE), BOB.public_key, TaskRequest("echo", b"\xa0"),
                                now_ms=NOW_MS, nonce=bytes(16), box_nonce=BOX_NONCE,
                                max_size=4096))
    at = where % len(data)
    data[at] ^= 0x01
    with pytest.raises(RemoteProtocolError):
        open_frame(Boxes(BOB), bytes(data), now_ms=NOW_MS, replay=None, max_size=4096)


def test_a_sealed_frame_is_size_checked_before_it_is_opened() -> None:
    data = seal_frame(ALICE, Boxes(ALICE), BOB.public_key, TaskRequest("echo", bytes(100)),
                      now_ms=NOW_MS, nonce=bytes(16), box_nonce=BOX_NONCE, max_size=4096)
    with pytest.raises(OversizedMessage):
        open_frame(Boxes(BOB), data, now_ms=NOW_MS, replay=None, max_size=len(data) - 1)
    with pytest.raises(TruncatedMessage):
        open_frame(Boxes(BOB), data[:80], now_ms=NOW_MS, replay=None, max_size=4096)


def test_a_request_without_a_timeout_or_sidecar_leaves_them_off_the_wire() -> None:
    assert TaskRequest("echo", b"").to_body() == {"skill": "echo", "input": b""}
    assert TaskRequest("echo", b"", 5).to_body()["timeout"] == 5
    assert TaskRequest("echo", b"", sidecar=8081).to_body()["side"] == 8081


@pytest.mark.parametrize(
    ("cls", "body"),
    [
        (TaskRequest, {"skill": "echo", "input": b"", "extra": 1}),
        (TaskRequest, {"skill": "echo", "box": b""}),
        (TaskRequest, {"skill": "x" * (MAX_SKILL_NAME + 1), "input": b""}),
        (TaskRequest, {"skill": 7, "input": b""}),
        (TaskRequest, {"skill": "echo"}),
        (TaskRequest, {"skill": "echo", "input": "text"}),
        (TaskRequest, {"skill": "echo", "input": b"", "timeout": -1}),
        (TaskRequest, {"skill": "echo", "input": b"", "timeout": 1.5}),
        (TaskRequest, {"skill": "echo", "input": b"", "timeout": True}),
        (TaskRequest, {"skill": "", "input": b""}),
        (TaskRequest, {"input": b""}),
        (TaskRequest, {"skill": "echo", "input": b"", "side": 65536}),
        (TaskRequest, {"skill": "echo", "input": b"", "side": -1}),
        (TaskResult, {"re": b"\x00" * 15, "out": b""}),
        (TaskResult, {"re": b"\x00" * 16}),
        (TaskResult, {"re": b"\x00" * 16, "out": b"", "ok": True}),
        (TaskResult, {"re": b"\x00" * 16, "out": b"", "receipt": "text"}),
        (TaskResult, {"re": b"\x00" * 16, "box": b""}),
    ],
)
def test_task_message_bodies_with_wrong_fields_are_mistyped(
    cls: type[wire.Message], body: dict[str, Any]
) -> None:
    with pytest.raises(MistypedMessage):
        cls.from_body(body)


def test_a_task_request_too_large_for_its_limit_is_not_sealed() -> None:
    with pytest.raises(LocalProtocolError, match="TASK_REQUEST"):
        seal_frame(ALICE, Boxes(ALICE), BOB.public_key, TaskRequest("echo", bytes(2000)),
                   now_ms=NOW_MS, nonce=bytes(16), box_nonce=BOX_NONCE, max_size=1000)


def test_frames_are_length_prefixed_and_checked_against_the_limit() -> None:
    assert frame(b"abc") == FRAME_HEADER.pack(3) + b"abc" == b"\x00\x00\x00\x03abc"
    check_frame_length(100, 100)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 100"):
        check_frame_length(101, 100)


def test_sealer_frames_a_sealed_task_and_refuses_its_replay() -> None:
    counter = iter(range(1, 100))
    sealer = Sealer(ALICE, Boxes(ALICE), wire.ReplayGuard(), clock=lambda: NOW_MS / 1000,
                    entropy=lambda n: bytes([next(counter)]) * n)
    receiver = Sealer(BOB, Boxes(BOB), wire.ReplayGuard(), clock=lambda: NOW_MS / 1000)
    request = TaskRequest("echo", b"\xa0")
    nonce, data = sealer.seal_task(BOB.public_key, request, 4096)
    assert nonce == b"\x01" * 16
    (length,) = FRAME_HEADER.unpack(data[:4])
    assert length == len(data) - 4
    env = receiver.open_any(data[4:], 4096)
    assert env.message == request and env.nonce == nonce and env.timestamp_ms == NOW_MS
    with pytest.raises(ReplayedMessage):
        receiver.open_any(data[4:], 4096)


def test_sealer_opens_signed_envelopes_too() -> None:
    sealer = Sealer(ALICE, Boxes(ALICE), wire.ReplayGuard(), clock=lambda: NOW_MS / 1000)
    receiver = Sealer(BOB, Boxes(BOB), wire.ReplayGuard(), clock=lambda: NOW_MS / 1000)
    nonce, data = sealer.seal(wire.Ping(), 4096)
    env = receiver.open_any(data[4:], 4096)
    assert isinstance(env.message, wire.Ping) and env.nonce == nonce
