"""Stored responses read back: input items with ids, conversations, references, the list pages."""
from __future__ import annotations

import pytest

from app.core.errors import InvalidRequest
from app.wire.responses import items
from app.wire.responses.output import Ids

RID = "0123456789abcdef01234567"


def test_input_items_get_types_and_ids():
    stored = items.input_items({"input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "id": "fc_client", "call_id": "c", "name": "f", "arguments": "{}", "parsed_arguments": {}},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
    ]}, RID)
    assert stored[0] == {"id": f"msg_{RID}8000", "role": "user", "content": "hi", "type": "message"}
    assert stored[1]["id"] == "fc_client" and "parsed_arguments" not in stored[1]
    assert stored[2]["id"] == f"fco_{RID}8002"
    assert items.input_items({"input": "hello"}, RID)[0]["content"] == "hello"
    # Input and output ids never collide, and both name their response.
    assert Ids(RID).item("message", 0) != stored[0]["id"]
    for item_id in (stored[0]["id"], stored[2]["id"], Ids(RID).item("function_call", 3), Ids(RID).call(1)):
        assert items.response_of(item_id) == f"resp_{RID}"
    assert items.response_of("fc_client") is None and items.response_of("msg_x" + "0" * 40) is None


def test_references_and_conversations():
    inputs = items.input_items({"input": "q"}, RID)
    output = [{"id": f"msg_{RID}0000", "type": "message", "role": "assistant", "content": []}]
    assert items.find(f"msg_{RID}0000", inputs, output) is output[0]
    assert items.find(inputs[0]["id"], inputs, output) is inputs[0]
    assert items.find("msg_nope", inputs, output) is None
    resolved = items.input_items({"input": [{"type": "item_reference", "id": "x"}]}, RID, resolve=lambda _: output[0])
    assert resolved == output
    assert items.conversation([(inputs, output), ([{"id": "b"}], [{"id": "c"}])]) == [*inputs, *output, {"id": "b"}, {"id": "c"}]


def test_pages():
    stored = [{"id": f"i{n}"} for n in range(25)]
    first = items.page(stored)
    assert first["object"] == "list" and len(first["data"]) == 20 and first["has_more"] is True
    assert first["first_id"] == "i24" and first["last_id"] == "i5"
    rest = items.page(stored, after="i5")
    assert [i["id"] for i in rest["data"]] == ["i4", "i3", "i2", "i1", "i0"] and rest["has_more"] is False
    asc = items.page(stored, limit="3", order="asc")
    assert [i["id"] for i in asc["data"]] == ["i0", "i1", "i2"] and asc["has_more"] is True
    empty = items.page([])
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_a_page_lists_string_content_as_a_text_part():
    stored = [{"id": "m0", "type": "message", "role": "user", "content": "hi"},
              {"id": "m1", "type": "message", "role": "assistant", "content": "hello"},
              {"id": "m2", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "as sent"}]},
              {"id": "f3", "type": "function_call_output", "call_id": "c", "output": "42"}]
    listed = items.page(stored, order="asc")["data"]
    assert [i["content"] for i in listed[:3]] == [[{"type": "input_text", "text": "hi"}],
                                                  [{"type": "output_text", "text": "hello"}],
                                                  [{"type": "input_text", "text": "as sent"}]]
    assert listed[3] == stored[3] and stored[0]["content"] == "hi"


@pytest.mark.parametrize("kwargs, param", [({"limit": "0"}, "limit"), ({"limit": "abc"}, "limit"), ({"limit": "101"}, "limit"),
                                           ({"order": "up"}, "order"), ({"after": "nope"}, "after")])
def test_bad_page_parameters(kwargs, param):
    with pytest.raises(InvalidRequest) as caught:
        items.page([{"id": "a"}], **kwargs)
    assert caught.value.param == param


def test_deleted():
    assert items.deleted("resp_1") == {"id": "resp_1", "object": "response.deleted", "deleted": True}
