"""Generated and mutated chat completion bodies against a running gateway.

Documents come from the ChatCompletionRequest schema the gateway serves at /openapi.json; some are
repaired to pass the role rules (so the success path and the ledger are exercised), then mutated
in the document (wrong types, hostile values, deletions, unknown keys) and in the bytes (truncation,
invalid UTF-8, lone surrogates, odd number literals, duplicated keys, deep nesting, random bytes).
"""
from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as fs
from tests.fuzz.conftest import LIMITS, batch, fuzz_settings

MAX_BODY = int(LIMITS["ZOWY_MAX_BODY_BYTES"])
MAX_TEXT = int(LIMITS["ZOWY_MAX_TEXT_CHARS"])


@pytest.fixture(scope="module")
def chat_schema(fuzz) -> dict:
    return fuzz.client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]


def request_documents(schema: dict) -> st.SearchStrategy[dict]:
    """Schema-valid documents, about two in three repaired into admissible requests."""
    documents = fs.from_schema(schema)
    return st.tuples(documents, st.integers(0, 2)).map(lambda pair: fs.repair(pair[0]) if pair[1] else pair[0])


def test_fuzz_chat_documents(fuzz, chat_schema):
    """Schema-derived documents with up to three document-level mutations each."""
    documents = request_documents(chat_schema)

    @fuzz_settings(0.34)
    @given(doc=documents, data=st.data(), ensure_ascii=st.booleans(), compact=st.booleans())
    def run(doc, data, ensure_ascii, compact):
        doc = copy.deepcopy(doc)  # mutated in place below: never an object a strategy hands out again
        for _ in range(data.draw(st.sampled_from((0, 0, 1, 1, 2, 3)), label="mutations")):
            targets = fs.paths(doc)
            path = data.draw(st.sampled_from(targets), label="path")
            how = data.draw(st.sampled_from(fs.MUTATIONS), label="how")
            value = data.draw(fs.hostile_values, label="value")
            try:
                doc = fs.mutate(doc, path, how, copy.deepcopy(value))
            except (KeyError, IndexError, TypeError):
                pass
        fuzz.chat("chat-documents", fs.dumps(doc, ensure_ascii, compact))

    with batch(fuzz):
        run()


HOSTILE_BODIES = (
    b"", b" ", b"null", b"true", b"0", b"-0", b"1e309", b"NaN", b'"zowy-1"', b"[]", b"{}", b"[{}]", b"{{}}", b"{\"", b"\x00",
    b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"model":"zowy-1"', b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}]',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}]}}', b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],}',
    b"[" * 100_000, b"{\"a\":" * 50_000, b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model":"zowy-1","messages":[{"role":"user","content":"' + b"\\u0000" * 5000 + b'"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"\\ud800"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"\\udc00\\ud800"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"\xc0\xaf"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"a\x00b"}]}',
    b'{"model":"zowy-1","model":"zowy-1","messages":[{"role":"user","content":"hi"}],"messages":[]}',
    b'{"model":"zowy-1","messages":[{"role":"user","role":"tool","content":"hi"}]}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"temperature":-0}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"max_tokens":1180591620717411303424}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"seed":-9223372036854775809}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"seed":-9223372036854775808}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"n":1.0}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"logit_bias":{"\xd9\xa3":1}}',
    b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}],"stream":1}',
    b'{"model":"zowy-1",,"messages":[]}', b'{"model":"zowy-1","messages":[{"role":"user","content":"hi"}]}\x00',
)


def test_fuzz_chat_bytes(fuzz, chat_schema):
    """Byte-level mutations of admissible bodies, hostile whole bodies, random bytes, and bodies padded
    to the body size limit and filled to the text limit."""
    documents = request_documents(chat_schema)
    mutated = st.builds(
        lambda doc, ascii_, steps: _apply(fs.dumps(doc, ascii_), steps),
        documents, st.booleans(),
        st.lists(st.tuples(st.sampled_from(fs.BYTE_MUTATIONS), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=3),
    )
    near_limits = st.one_of(
        st.builds(_padded, documents, st.sampled_from((-1, 0, 1))),
        st.builds(_filled, st.sampled_from((-1, 0, 1)), st.sampled_from(("a", "я", "\U0001f600", "\u200b"))),
    )
    bodies = st.one_of(
        mutated, mutated, mutated,
        st.sampled_from(HOSTILE_BODIES),
        st.binary(max_size=512),
        st.builds(lambda b: b'{"model":"zowy-1","messages":[{"role":"user","content":"' + b + b'"}]}', st.binary(max_size=64)),
        near_limits,
    )

    @fuzz_settings(0.26)
    @given(body=bodies)
    def run(body):
        fuzz.chat("chat-bytes", body)

    with batch(fuzz):
        run()


def _apply(raw: bytes, steps) -> bytes:
    for how, position, pick in steps:
        raw = fs.mutate_bytes(raw, how, position, pick)
    return raw


def _padded(doc: dict, delta: int) -> bytes:
    """The document padded with whitespace to the body size limit (+ ``delta`` bytes)."""
    raw = fs.dumps(doc)
    return raw + b" " * max(0, MAX_BODY + delta - len(raw))


def _filled(delta: int, char: str) -> bytes:
    """One user message holding the text limit (+ ``delta``) in characters, under the body limit."""
    count = MAX_TEXT + delta
    while len(char.encode()) * count > MAX_BODY - 200 and count > 1:
        count //= 2
    text = char * count
    return fs.dumps({"model": "zowy-1", "messages": [{"role": "user", "content": text}]})
