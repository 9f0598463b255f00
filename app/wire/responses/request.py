"""The Responses API request: one pydantic-core pass over the body, errors naming the field as OpenAI
does (``input[3].content[0].type``), and the rules a schema cannot say.

Item and tool types this gateway cannot serve through Chat Completions (hosted tools and their
items) pass the schema under their own names and are refused by ``translate`` with a message
saying what to do, so a caller learns why rather than that the type is unknown.
"""
from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from ...core.config import RequestLimits
from ...core.errors import InvalidRequest
from ..validation import (
    ANY_OBJECT, BOOLEAN, STRING, array, check_free_form, integer, invalid, literal, number, obj, opt, req,
)

# Hosted tools: run by OpenAI's servers, never by a Chat Completions target.
HOSTED_TOOLS = (
    "file_search", "computer", "computer_use", "computer_use_preview", "web_search", "web_search_preview",
    "web_search_2025_08_26", "web_search_preview_2025_03_11", "mcp", "code_interpreter", "image_generation",
    "local_shell", "shell", "tool_search", "apply_patch", "programmatic_tool_calling",
)
# Items that only those tools (or OpenAI's server-side state) make.
HOSTED_ITEMS = (
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "image_generation_call",
    "code_interpreter_call", "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "mcp_call", "tool_search_call", "tool_search_output", "additional_tools",
    "compaction", "compaction_trigger", "program", "program_output", "configuration_update",
)
INCLUDABLE = (
    "reasoning.encrypted_content", "message.output_text.logprobs", "message.input_image.image_url",
    "computer_call_output.output.image_url", "file_search_call.results", "web_search_call.results",
    "web_search_call.action.sources", "code_interpreter_call.outputs",
)
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_status = opt(literal("in_progress", "completed", "incomplete"))
_caller = opt(ANY_OBJECT)
_name = cs.str_schema(strict=True, pattern=NAME_PATTERN)
_id = cs.str_schema(strict=True, min_length=1, max_length=256)


def _tagged(choices: dict[str, cs.CoreSchema], default: str | None = None) -> cs.CoreSchema:
    """A union picked by ``type``; ``default`` names the choice for an object without one."""

    def tag(value: Any) -> str | None:
        if type(value) is not dict:
            return default or next(iter(choices))
        kind = value.get("type")
        if kind is None:
            return default
        return kind if type(kind) is str else "-"

    return cs.tagged_union_schema(choices, discriminator=tag)


def _item_tag(value: Any) -> str | None:
    """An input item's kind: its ``type``; without one, a message if it has a role, else a reference."""
    if type(value) is not dict:
        return "message"
    kind = value.get("type")
    if kind is None:
        return "message" if "role" in value else ("item_reference" if "id" in value else None)
    return kind if type(kind) is str else "-"


_cache_breakpoint = opt(ANY_OBJECT)
_input_text = obj({"type": req(literal("input_text")), "text": req(STRING), "prompt_cache_breakpoint": _cache_breakpoint})
_input_image = obj({
    "type": req(literal("input_image")),
    "image_url": opt(STRING),
    "file_id": opt(STRING),
    "detail": opt(literal("auto", "low", "high", "original")),
    "prompt_cache_breakpoint": _cache_breakpoint,
})
_input_file = obj({
    "type": req(literal("input_file")),
    "file_id": opt(STRING),
    "file_data": opt(STRING),
    "file_url": opt(STRING),
    "filename": opt(STRING),
    "detail": opt(literal("auto", "low", "high")),
    "prompt_cache_breakpoint": _cache_breakpoint,
})
_output_text = obj({
    "type": req(literal("output_text")),
    "text": req(STRING),
    "annotations": opt(array(cs.any_schema())),
    "logprobs": opt(array(cs.any_schema())),
})
_refusal = obj({"type": req(literal("refusal")), "refusal": req(STRING)})
_part = _tagged({
    "input_text": _input_text, "input_image": _input_image, "input_file": _input_file,
    "output_text": _output_text, "refusal": _refusal,
})
_content = cs.union_schema([(STRING, "@text"), (array(_part), "@parts")])
_tool_output = cs.union_schema([
    (STRING, "@text"),
    (array(_tagged({"input_text": _input_text, "input_image": _input_image, "input_file": _input_file})), "@parts"),
])

_message = obj({
    "type": opt(literal("message")),
    "role": req(literal("user", "system", "developer", "assistant")),
    "content": req(_content),
    "id": opt(_id),
    "status": _status,
    "phase": opt(literal("commentary", "final_answer")),
})
_function_call = obj({
    "type": req(literal("function_call")),
    "call_id": req(_id),
    "name": req(_name),
    "arguments": req(STRING),
    "id": opt(_id),
    "status": _status,
    "namespace": opt(_name),
    "caller": _caller,
    # What the SDKs' own parsed items carry when a caller sends one back.
    "parsed_arguments": opt(cs.any_schema()),
})
_function_call_output = obj({
    "type": req(literal("function_call_output")),
    "call_id": req(_id),
    "output": req(_tool_output),
    "id": opt(_id),
    "status": _status,
    "name": opt(STRING),
    "namespace": opt(STRING),
    "caller": _caller,
})
_custom_tool_call = obj({
    "type": req(literal("custom_tool_call")),
    "call_id": req(_id),
    "name": req(_name),
    "input": req(STRING),
    "id": opt(_id),
    "status": _status,
    "namespace": opt(_name),
    "caller": _caller,
})
_custom_tool_call_output = obj({
    "type": req(literal("custom_tool_call_output")),
    "call_id": req(_id),
    "output": req(_tool_output),
    "id": opt(_id),
    "status": _status,
    "caller": _caller,
})
_text_entry = lambda kind: obj({"type": req(literal(kind)), "text": req(STRING)})  # noqa: E731
_reasoning = obj({
    "type": req(literal("reasoning")),
    "id": opt(_id),
    "summary": opt(array(_text_entry("summary_text"))),
    "content": opt(array(_text_entry("reasoning_text"))),
    "encrypted_content": opt(STRING),
    "status": _status,
})
_item_reference = obj({"type": opt(literal("item_reference")), "id": req(_id)})
_item = cs.tagged_union_schema(
    {
        "message": _message,
        "function_call": _function_call,
        "function_call_output": _function_call_output,
        "custom_tool_call": _custom_tool_call,
        "custom_tool_call_output": _custom_tool_call_output,
        "reasoning": _reasoning,
        "item_reference": _item_reference,
        **{kind: ANY_OBJECT for kind in HOSTED_ITEMS},
    },
    discriminator=_item_tag,
)

_function_fields = {
    "type": req(literal("function")),
    "name": req(_name),
    "description": opt(STRING),
    "parameters": opt(ANY_OBJECT),
    "strict": opt(BOOLEAN),
    "output_schema": opt(ANY_OBJECT),
    "allowed_callers": opt(array(literal("direct", "programmatic"))),
    "defer_loading": opt(BOOLEAN),
}
_grammar = obj({
    "type": req(literal("grammar")),
    "syntax": req(literal("lark", "regex")),
    "definition": req(STRING),
})
_custom_fields = {
    "type": req(literal("custom")),
    "name": req(_name),
    "description": opt(STRING),
    "format": opt(_tagged({"text": obj({"type": req(literal("text"))}), "grammar": _grammar})),
    "allowed_callers": opt(array(literal("direct", "programmatic"))),
    "defer_loading": opt(BOOLEAN),
}
_namespace = obj({
    "type": req(literal("namespace")),
    "name": req(_name),
    "description": opt(STRING),
    "tools": req(array(_tagged({"function": obj(_function_fields), "custom": obj(_custom_fields)}, "function"), min_length=1)),
})
_tool = _tagged({
    "function": obj(_function_fields),
    "custom": obj(_custom_fields),
    "namespace": _namespace,
    **{kind: ANY_OBJECT for kind in HOSTED_TOOLS},
})
_named_choice = lambda kind: obj({"type": req(literal(kind)), "name": req(STRING)})  # noqa: E731
_tool_choice = cs.union_schema([
    (literal("auto", "none", "required"), "@mode"),
    (_tagged({
        "function": _named_choice("function"),
        "custom": _named_choice("custom"),
        "allowed_tools": obj({
            "type": req(literal("allowed_tools")),
            "mode": req(literal("auto", "required")),
            "tools": req(array(ANY_OBJECT)),
        }),
        **{kind: ANY_OBJECT for kind in HOSTED_TOOLS},
    }), "@tool"),
])

_json_schema_format = obj({
    "type": req(literal("json_schema")),
    "name": req(cs.str_schema(strict=True, pattern=NAME_PATTERN)),
    "schema": req(ANY_OBJECT),
    "description": opt(STRING),
    "strict": opt(BOOLEAN),
})
_text = obj({
    "format": opt(_tagged({
        "text": obj({"type": req(literal("text"))}),
        "json_object": obj({"type": req(literal("json_object"))}),
        "json_schema": _json_schema_format,
    })),
    "verbosity": opt(literal("low", "medium", "high")),
})
_reasoning_options = obj({
    "effort": opt(literal("none", "minimal", "low", "medium", "high", "xhigh", "max")),
    "summary": opt(literal("auto", "concise", "detailed")),
    "generate_summary": opt(literal("auto", "concise", "detailed")),
})

RESPONSES_REQUEST_SCHEMA = obj({
    "model": req(cs.str_schema(strict=True, min_length=1)),
    "input": opt(cs.union_schema([(STRING, "@text"), (array(_item), "@items")])),
    "instructions": opt(STRING),
    "tools": opt(array(_tool)),
    "tool_choice": opt(_tool_choice),
    "parallel_tool_calls": opt(BOOLEAN),
    "text": opt(_text),
    "reasoning": opt(_reasoning_options),
    "max_output_tokens": opt(integer(16)),
    "max_tool_calls": opt(integer(1)),
    "temperature": opt(number(0, 2)),
    "top_p": opt(number(0, 1)),
    "top_logprobs": opt(integer(0, 20)),
    "stream": opt(BOOLEAN),
    "stream_options": opt(obj({"include_obfuscation": opt(BOOLEAN)})),
    "store": opt(BOOLEAN),
    "previous_response_id": opt(_id),
    "include": opt(array(literal(*INCLUDABLE))),
    "metadata": opt(cs.dict_schema(
        cs.str_schema(strict=True, max_length=64), cs.str_schema(strict=True, max_length=512),
        max_length=16, strict=True, fail_fast=True,
    )),
    "user": opt(cs.str_schema(strict=True, max_length=256)),
    "safety_identifier": opt(cs.str_schema(strict=True, max_length=256)),
    "prompt_cache_key": opt(STRING),
    "prompt_cache_retention": opt(literal("in_memory", "24h")),
    "truncation": opt(literal("auto", "disabled")),
    "service_tier": opt(literal("auto", "default", "flex", "scale", "priority")),
    # Codex's own per-turn facts; nothing is done with them.
    "client_metadata": opt(ANY_OBJECT),
    # Known to OpenAI, refused below with what to do instead.
    "background": opt(BOOLEAN),
    "conversation": opt(cs.any_schema()),
    "prompt": opt(cs.any_schema()),
    "context_management": opt(cs.any_schema()),
})

_validator = SchemaValidator(RESPONSES_REQUEST_SCHEMA)
_UNSUPPORTED = {
    "conversation": "Conversations are not supported: send the history in 'input' or chain responses with 'previous_response_id'.",
    "prompt": "Stored prompt templates are not supported: send the prompt in 'instructions' and 'input'.",
    "context_management": "Server-side context management is not supported: send the history you want in 'input'.",
}


def parse_responses_request(body: bytes, limits: RequestLimits = RequestLimits()) -> dict[str, Any]:
    """Validate a Responses API body; return it as a dict, or raise InvalidRequest naming the field."""
    try:
        request = _validator.validate_json(body)
    except ValidationError as exc:
        raise invalid(RESPONSES_REQUEST_SCHEMA, exc) from None
    if request.get("background"):
        raise InvalidRequest(
            "Background responses are not supported: leave out 'background' (or set it to false) and stream "
            "the response instead.",
            param="background", code="unsupported_parameter",
        )
    for field, message in _UNSUPPORTED.items():
        if request.get(field) is not None:
            raise InvalidRequest(message, param=field, code="unsupported_parameter")
    items = request.get("input")
    if type(items) is list and len(items) > limits.messages:
        raise InvalidRequest(
            f"Too many input items: at most {limits.messages} are allowed.", param="input", code="array_above_max_length"
        )
    for i, tool in enumerate(request.get("tools") or ()):
        if tool["type"] == "function":
            check_free_form(tool.get("parameters"), f"tools[{i}].parameters")
        elif tool["type"] == "namespace":
            for j, inner in enumerate(tool["tools"]):
                if inner.get("type", "function") == "function":
                    check_free_form(inner.get("parameters"), f"tools[{i}].tools[{j}].parameters")
    text_format = (request.get("text") or {}).get("format")
    if text_format and text_format["type"] == "json_schema":
        check_free_form(text_format["schema"], "text.format.schema")
    return request
