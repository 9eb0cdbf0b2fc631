from __future__ import annotations

import copy
from datetime import datetime

import pytest
from jinja2 import TemplateError

from inference.prompts import CHATML_TEMPLATE, ChatTemplate, PromptError
from tests.fixtures_model import default_chat_template, default_model_info, default_tokenizer
from tests.helpers import case_id, load_reference

REFERENCE = load_reference("smollm2-chat-greedy.json")["cases"]
NAMED_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}{% if m.name %}({{ m.name }}){% endif %}: "
    "{{ m.content }}\n{% endfor %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!", "name": "alice"},
    {"role": "assistant", "content": "Hello."},
]


@pytest.fixture(scope="module")
def smollm() -> ChatTemplate:
    return default_chat_template()


def _ids(cases: list[dict]) -> list[str]:
    return [case_id(c["messages"][-1]["content"]) for c in cases]


@pytest.mark.parametrize("case", REFERENCE, ids=_ids(REFERENCE))
def test_it_renders_the_reference_prompts(smollm: ChatTemplate, case: dict) -> None:
    assert smollm.render(case["messages"]) == case["prompt"]


@pytest.mark.parametrize("case", REFERENCE, ids=_ids(REFERENCE))
def test_it_tokenizes_the_reference_prompts(case: dict) -> None:
    assert default_tokenizer().encode(case["prompt"]) == case["prompt_ids"]


def test_it_takes_bos_and_eos_from_the_model_file(smollm: ChatTemplate) -> None:
    assert (smollm.bos_token, smollm.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smollm.source == default_model_info().chat_template
    assert not smollm.is_fallback


def test_it_falls_back_to_chatml() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback and template.source == CHATML_TEMPLATE
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    assert template.render(messages) == expected + "<|im_start|>assistant\n"
    assert template.render(messages, add_generation_prompt=False) == expected
    assert ChatTemplate("").render(messages) == expected + "<|im_start|>assistant\n"


def test_it_passes_names_to_a_template_that_uses_them() -> None:
    template = ChatTemplate(NAMED_TEMPLATE)
    assert template.uses_name
    assert template.render(CONVERSATION) == "system: Be brief.\nuser(alice): Hi!\nassistant: Hello.\n"


def test_it_prefixes_names_when_the_template_ignores_them(smollm: ChatTemplate) -> None:
    assert not smollm.uses_name
    assert "<|im_start|>user\nalice: Hi!<|im_end|>" in smollm.render(CONVERSATION)
    assert "<|im_start|>user\nalice: Hi!<|im_end|>" in ChatTemplate(None).render(CONVERSATION)


@pytest.mark.parametrize(
    ("source", "uses_name"),
    [
        ("{% for m in messages %}{{ m['name'] }}{% endfor %}", True),
        ("{% for message in messages %}{{ message.get('name', '') }}{% endfor %}", True),
        ("{% for m in messages %}{% if 'name' in m %}x{% endif %}{% endfor %}", True),
        ("{% for tool in tools or [] %}{{ tool.name }}{% endfor %}", False),
        (
            "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}{% endfor %}{% endfor %}",
            False,
        ),
        ("{{ 'name' }}", False),
    ],
)
def test_it_detects_whether_a_template_reads_names(source: str, uses_name: bool) -> None:
    assert ChatTemplate(source).uses_name is uses_name


def test_it_does_not_change_the_callers_messages(smollm: ChatTemplate) -> None:
    messages = copy.deepcopy(CONVERSATION)
    smollm.render(messages)
    assert messages == CONVERSATION


def test_it_joins_text_parts() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
    ]
    assert (
        ChatTemplate(None).render(messages, add_generation_prompt=False)
        == "<|im_start|>user\none\ntwo<|im_end|>\n"
    )


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]},
        {"role": "user", "content": 42},
        {"content": "no role"},
        {"role": "user", "content": "x", "name": 7},
        "not a dict",
    ],
    ids=["image-part", "number", "no-role", "bad-name", "string"],
)
def test_it_rejects_malformed_messages(message: object) -> None:
    with pytest.raises(PromptError, match="message 0"):
        ChatTemplate(None).render([message])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ raise_exception.__globals__ }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% set _ = messages[0].update({'content': 'owned'}) %}",
        "{{ 'x' * 100000000 }}",
        "{{ 9 ** 999999999 }}",
    ],
)
def test_it_blocks_sandbox_escapes(source: str) -> None:
    with pytest.raises(PromptError) as caught:
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])
    assert isinstance(caught.value, TemplateError) and isinstance(caught.value, ValueError)
    assert "failed to render" in str(caught.value)


def test_it_reports_raise_exception_from_the_template() -> None:
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(PromptError, match="first must be user"):
        ChatTemplate(source).render([{"role": "assistant", "content": "x"}])


def test_it_reports_a_template_that_does_not_compile() -> None:
    with pytest.raises(PromptError, match=r"does not compile: TemplateSyntaxError.*line 1"):
        ChatTemplate("{% for m in messages %}")


def test_it_reports_a_template_that_fails_at_render_time() -> None:
    with pytest.raises(PromptError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 // 0 }}").render([])


def test_it_provides_hf_helpers() -> None:
    source = (
        "{{ bos_token }}{{ strftime_now('%Y') }}|{{ messages | tojson }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}{{ eos_token }}"
    )
    rendered = ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(
        [{"role": "user", "content": "<b>é</b>"}, {"role": "user", "content": "second"}]
    )
    year = str(datetime.now().year)
    expected = (
        f'<s>{year}|[{{"role": "user", "content": "<b>é</b>"}}, {{"role": "user", "content": "second"}}]|'
    )
    assert rendered == expected + "<b>é</b></s>"


def test_it_trims_blocks_like_hf() -> None:
    source = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n"
    assert ChatTemplate(source).render([{"role": "user", "content": "a"}]) == "[a]\n"
