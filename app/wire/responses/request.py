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

from ...config import RequestLimits
from ...errors import InvalidRequest
from ...schemas import _any_obj, _bool, _check_free_form, _float, _int, _invalid, _list, _lit, _obj, _opt, _req, _str

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
_status = _opt(_lit("in_progress", "completed", "incomplete"))
_caller = _opt(_any_obj)
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


_cache_breakpoint = _opt(_any_obj)
_input_text = _obj({"type": _req(_lit("input_text")), "text": _req(_str), "prompt_cache_breakpoint": _cache_breakpoint})
_input_image = _obj({
    "type": _req(_lit("input_image")),
    "image_url": _opt(_str),
    "file_id": _opt(_str),
    "detail": _opt(_lit("auto", "low", "high", "original")),
    "prompt_cache_breakpoint": _cache_breakpoint,
})
_input_file = _obj({
    "type": _req(_lit("input_file")),
    "file_id": _opt(_str),
    "file_data": _opt(_str),
    "file_url": _opt(_str),
    "filename": _opt(_str),
    "detail": _opt(_lit("auto", "low", "high")),
    "prompt_cache_breakpoint": _cache_breakpoint,
})
_output_text = _obj({
    "type": _req(_lit("output_text")),
    "text": _req(_str),
    "annotations": _opt(_list(cs.any_schema())),
    "logprobs": _opt(_list(cs.any_schema())),
})
_refusal = _obj({"type": _req(_lit("refusal")), "refusal": _req(_str)})
_part = _tagged({
    "input_text": _input_text, "input_image": _input_image, "input_file": _input_file,
    "output_text": _output_text, "refusal": _refusal,
})
_content = cs.union_schema([(_str, "@text"), (_list(_part), "@parts")])
_tool_output = cs.union_schema([
    (_str, "@text"),
    (_list(_tagged({"input_text": _input_text, "input_image": _input_image, "input_file": _input_file})), "@parts"),
])

_message = _obj({
    "type": _opt(_lit("message")),
    "role": _req(_lit("user", "system", "developer", "assistant")),
    "content": _req(_content),
    "id": _opt(_id),
    "status": _status,
    "phase": _opt(_lit("commentary", "final_answer")),
})
_function_call = _obj({
    "type": _req(_lit("function_call")),
    "call_id": _req(_id),
    "name": _req(_name),
    "arguments": _req(_str),
    "id": _opt(_id),
    "status": _status,
    "namespace": _opt(_name),
    "caller": _caller,
    # What the SDKs' own parsed items carry when a caller sends one back.
    "parsed_arguments": _opt(cs.any_schema()),
})
_function_call_output = _obj({
    "type": _req(_lit("function_call_output")),
    "call_id": _req(_id),
    "output": _req(_tool_output),
    "id": _opt(_id),
    "status": _status,
    "name": _opt(_str),
    "namespace": _opt(_str),
    "caller": _caller,
})
_custom_tool_call = _obj({
    "type": _req(_lit("custom_tool_call")),
    "call_id": _req(_id),
    "name": _req(_name),
    "input": _req(_str),
    "id": _opt(_id),
    "status": _status,
    "namespace": _opt(_name),
    "caller": _caller,
})
_custom_tool_call_output = _obj({
    "type": _req(_lit("custom_tool_call_output")),
    "call_id": _req(_id),
    "output": _req(_tool_output),
    "id": _opt(_id),
    "status": _status,
    "caller": _caller,
})
_text_entry = lambda kind: _obj({"type": _req(_lit(kind)), "text": _req(_str)})  # noqa: E731
_reasoning = _obj({
    "type": _req(_lit("reasoning")),
    "id": _opt(_id),
    "summary": _opt(_list(_text_entry("summary_text"))),
    "content": _opt(_list(_text_entry("reasoning_text"))),
    "encrypted_content": _opt(_str),
    "status": _status,
})
_item_reference = _obj({"type": _opt(_lit("item_reference")), "id": _req(_id)})
_item = cs.tagged_union_schema(
    {
        "message": _message,
        "function_call": _function_call,
        "function_call_output": _function_call_output,
        "custom_tool_call": _custom_tool_call,
        "custom_tool_call_output": _custom_tool_call_output,
        "reasoning": _reasoning,
        "item_reference": _item_reference,
        **{kind: _any_obj for kind in HOSTED_ITEMS},
    },
    discriminator=_item_tag,
)

_function_fields = {
    "type": _req(_lit("function")),
    "name": _req(_name),
    "description": _opt(_str),
    "parameters": _opt(_any_obj),
    "strict": _opt(_bool),
    "output_schema": _opt(_any_obj),
    "allowed_callers": _opt(_list(_lit("direct", "programmatic"))),
    "defer_loading": _opt(_bool),
}
_grammar = _obj({
    "type": _req(_lit("grammar")),
    "syntax": _req(_lit("lark", "regex")),
    "definition": _req(_str),
})
_custom_fields = {
    "type": _req(_lit("custom")),
    "name": _req(_name),
    "description": _opt(_str),
    "format": _opt(_tagged({"text": _obj({"type": _req(_lit("text"))}), "grammar": _grammar})),
    "allowed_callers": _opt(_list(_lit("direct", "programmatic"))),
    "defer_loading": _opt(_bool),
}
_namespace = _obj({
    "type": _req(_lit("namespace")),
    "name": _req(_name),
    "description": _opt(_str),
    "tools": _req(_list(_tagged({"function": _obj(_function_fields), "custom": _obj(_custom_fields)}, "function"), min_length=1)),
})
_tool = _tagged({
    "function": _obj(_function_fields),
    "custom": _obj(_custom_fields),
    "namespace": _namespace,
    **{kind: _any_obj for kind in HOSTED_TOOLS},
})
_named_choice = lambda kind: _obj({"type": _req(_lit(kind)), "name": _req(_str)})  # noqa: E731
_tool_choice = cs.union_schema([
    (_lit("auto", "none", "required"), "@mode"),
    (_tagged({
        "function": _named_choice("function"),
        "custom": _named_choice("custom"),
        "allowed_tools": _obj({
            "type": _req(_lit("allowed_tools")),
            "mode": _req(_lit("auto", "required")),
            "tools": _req(_list(_any_obj)),
        }),
        **{kind: _any_obj for kind in HOSTED_TOOLS},
    }), "@tool"),
])

_json_schema_format = _obj({
    "type": _req(_lit("json_schema")),
    "name": _req(cs.str_schema(strict=True, pattern=NAME_PATTERN)),
    "schema": _req(_any_obj),
    "description": _opt(_str),
    "strict": _opt(_bool),
})
_text = _obj({
    "format": _opt(_tagged({
        "text": _obj({"type": _req(_lit("text"))}),
        "json_object": _obj({"type": _req(_lit("json_object"))}),
        "json_schema": _json_schema_format,
    })),
    "verbosity": _opt(_lit("low", "medium", "high")),
})
_reasoning_options = _obj({
    "effort": _opt(_lit("none", "minimal", "low", "medium", "high", "xhigh", "max")),
    "summary": _opt(_lit("auto", "concise", "detailed")),
    "generate_summary": _opt(_lit("auto", "concise", "detailed")),
})

RESPONSES_REQUEST_SCHEMA = _obj({
    "model": _req(cs.str_schema(strict=True, min_length=1)),
    "input": _opt(cs.union_schema([(_str, "@text"), (_list(_item), "@items")])),
    "instructions": _opt(_str),
    "tools": _opt(_list(_tool)),
    "tool_choice": _opt(_tool_choice),
    "parallel_tool_calls": _opt(_bool),
    "text": _opt(_text),
    "reasoning": _opt(_reasoning_options),
    "max_output_tokens": _opt(_int(16)),
    "max_tool_calls": _opt(_int(1)),
    "temperature": _opt(_float(0, 2)),
    "top_p": _opt(_float(0, 1)),
    "top_logprobs": _opt(_int(0, 20)),
    "stream": _opt(_bool),
    "stream_options": _opt(_obj({"include_obfuscation": _opt(_bool)})),
    "store": _opt(_bool),
    "previous_response_id": _opt(_id),
    "include": _opt(_list(_lit(*INCLUDABLE))),
    "metadata": _opt(cs.dict_schema(
        cs.str_schema(strict=True, max_length=64), cs.str_schema(strict=True, max_length=512),
        max_length=16, strict=True, fail_fast=True,
    )),
    "user": _opt(cs.str_schema(strict=True, max_length=256)),
    "safety_identifier": _opt(cs.str_schema(strict=True, max_length=256)),
    "prompt_cache_key": _opt(_str),
    "prompt_cache_retention": _opt(_lit("in_memory", "24h")),
    "truncation": _opt(_lit("auto", "disabled")),
    "service_tier": _opt(_lit("auto", "default", "flex", "scale", "priority")),
    # Codex's own per-turn facts; nothing is done with them.
    "client_metadata": _opt(_any_obj),
    # Known to OpenAI, refused below with what to do instead.
    "background": _opt(_bool),
    "conversation": _opt(cs.any_schema()),
    "prompt": _opt(cs.any_schema()),
    "context_management": _opt(cs.any_schema()),
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
        raise _invalid(RESPONSES_REQUEST_SCHEMA, exc) from None
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
            _check_free_form(tool.get("parameters"), f"tools[{i}].parameters")
        elif tool["type"] == "namespace":
            for j, inner in enumerate(tool["tools"]):
                if inner.get("type", "function") == "function":
                    _check_free_form(inner.get("parameters"), f"tools[{i}].tools[{j}].parameters")
    text_format = (request.get("text") or {}).get("format")
    if text_format and text_format["type"] == "json_schema":
        _check_free_form(text_format["schema"], "text.format.schema")
    return request
