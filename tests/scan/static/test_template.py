"""Chat-template SSTI analysis: realistic benign templates stay quiet, injection payloads are caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.template import analyse_template
from tests.conftest import failing, rule_ids, scan_one

# --- realistic benign chat templates (shapes of the ones shipped with popular models) -----------------

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
    "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}"
)

# Llama 3.1-style tool calling: namespace() for loop state, tojson, strftime_now, loop controls.
TOOLS = """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- endif %}
{%- set ns = namespace(found_system=false, tool_calls=[]) %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
    {%- set ns.found_system = true %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. Respond in JSON.\\n\\n" }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == 'ipython' or message.role == 'tool' %}{% continue %}{% endif %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
            + message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
        {{- tool_call.arguments | tojson }}{{- "}" }}
        {%- for key, value in tool_call.arguments | items %}{{ key }}={{ value }}
            {%- if not loop.last %}, {% endif %}{% endfor %}
        {%- set joined = message.content.split(',') | map('trim') | join(', ') %}
        {%- set names = message.tool_calls | map(attribute='function.name') | join(', ') %}
        {%- if message.content.startswith('<think>') %}{% break %}{% endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

# transformers' {% generation %} block and a joiner/cycler used the intended way.
GENERATION = (
    "{% set comma = joiner(', ') %}{% set row = cycler('odd', 'even') %}{% for m in messages %}"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ comma() }}{{ row.next() }}{{ m.content }}{% endif %}{% endfor %}{{ range(3)|list|length }}"
)

# Tool-calling templates (Qwen3 / Qwen3-Coder / TypeScript-rendering shapes) that index data by computed keys:
# param_fields[json_key] over a loop variable, messages[loop.index0 + 1], messages[ns.last_query_index],
# role_map[message.role], m[key]; and build strings with ~, + and |join that are output, never used as keys.
DATA_KEYS = r"""{% macro render_item_list(item_list, tag_name='required') %}
    {%- if item_list is defined and item_list is iterable and item_list | length > 0 %}
        {%- if tag_name %}{{- '\n<' ~ tag_name ~ '>' -}}{% endif %}
            {{- '[' }}
                {%- for item in item_list -%}
                    {%- if loop.index > 1 %}{{- ", "}}{% endif -%}
                    {%- if item is string -%}{{ "`" ~ item ~ "`" }}{%- else -%}{{ item }}{%- endif -%}
                {%- endfor -%}
            {{- ']' }}
        {%- if tag_name %}{{- '</' ~ tag_name ~ '>' -}}{% endif %}
    {%- endif %}
{% endmacro %}
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = [] %}{%- endif %}
{%- for tool in tools %}
    {%- if tool.function is defined %}{%- set tool = tool.function %}{%- endif %}
    {{- "\n<function>\n<name>" ~ tool.name ~ "</name>" }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {{- '\n<name>' ~ param_name ~ '</name>' }}
        {%- if param_fields.type is defined %}{{- '\n<type>' ~ (param_fields.type | string) ~ '</type>' }}{%- endif %}
        {{- render_item_list(param_fields.enum, 'enum') }}
        {%- set handled_keys = ['type', 'description', 'enum', 'required'] %}
        {%- for json_key in param_fields.keys() | reject("in", handled_keys) %}
            {%- set normed_json_key = json_key | replace("-", "_") | replace(" ", "_") | replace("$", "") %}
            {%- if param_fields[json_key] is mapping %}
                {{- '\n<' ~ normed_json_key ~ '>' ~ (param_fields[json_key] | tojson | safe) }}
                {{- '</' ~ normed_json_key ~ '>' }}
            {%- else %}
                {{-'\n<' ~ normed_json_key ~ '>' ~ (param_fields[json_key] | string) ~ '</' ~ normed_json_key ~ '>' }}
            {%- endif %}
        {%- endfor %}
        {{- render_item_list(param_fields.required, 'required') }}
    {%- endfor %}
{%- endfor %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in loop_messages %}
    {%- if message.tool_calls is defined %}
        {%- for tool_call in message.tool_calls %}
            {%- for args_name, args_value in tool_call.arguments|items %}
                {{- '<parameter=' + args_name + '>\n' }}
                {%- set args_value = args_value if args_value is string else args_value | string %}
                {{- args_value }}
            {%- endfor %}
        {%- endfor %}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
        {%- if loop.index0 > ns.last_query_index %}{{ messages[ns.last_query_index].content }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- macro render_typescript_type(param_spec, required_params) -%}
    {%- if param_spec.type == "array" -%}
        {%- set items = param_spec.items if param_spec.items is defined else none -%}
        {%- if items -%}{{- render_typescript_type(items, required_params) ~ "[]" -}}{%- endif -%}
    {%- elif param_spec.oneOf -%}
        {%- set parts = [] -%}
        {%- for v in param_spec.oneOf -%}
            {%- set parts = parts + [ render_typescript_type(v, required_params) ] -%}
        {%- endfor -%}
        {{- parts | join(" | ") -}}
    {%- elif param_spec.type == "string" and param_spec.enum -%}
        {{- '"' ~ (param_spec.enum | join('" | "')) ~ '"' -}}
    {%- elif param_spec.type == "object" -%}
        {%- for prop_name, prop_spec in param_spec.properties.items() -%}
            {%- set req = param_spec.required if param_spec.required is defined else [] -%}
            {{- prop_name -}}{%- if prop_name not in req -%}{{ "?" }}{%- endif -%}
            {{- render_typescript_type(prop_spec, req) -}}
            {{- param_spec.properties[prop_name].description -}}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set role_map = {'user': 'User', 'assistant': 'Assistant'} %}
{%- for message in messages %}{{ role_map[message.role] ~ ': ' ~ message.content }}{% endfor %}
{%- for m in messages %}{%- for key in m %}
    {%- if key not in ['role', 'content'] %}{{ key ~ '=' ~ m[key] | tojson }}{%- endif %}
{%- endfor %}{%- endfor %}
"""

BENIGN = {
    "data_keys": DATA_KEYS,
    "chatml": CHATML,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "gemma": GEMMA,
    "tools": TOOLS,
    "generation": GENERATION,
}

# --- injection payloads (all would only `touch` a canary file if ever rendered) ------------------------
CANARY = "touch /tmp/mlwarden-canary"
CRITICAL_PAYLOADS = {
    # CVE-2024-34359 (llama-cpp-python) shape.
    "self_init_globals": "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('%s').read() }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('%s').read() }}",
    "joiner": "{{ joiner.__init__.__globals__.os.popen('%s') }}",
    "namespace": "{{ namespace.__init__.__globals__.os.popen('%s') }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('%s') }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr_filter": "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "concat": "{% set a = '__cla' ~ 'ss__' %}{{ ''[a] }}",
    "concat_inline": "{{ ''|attr('__cla' ~ 'ss__') }}",
    "plus_concat": "{{ x['__glo' + 'bals__'] }}",
    "escaped": "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "printf_chars": "{{ ''|attr('%c%cclass%c%c'|format(95, 95, 95, 95)) }}",
    "dict_join": "{{ ()|attr(dict(__class__=1)|join) }}",
    "join_list": "{{ ()|attr(['__cl', 'ass__']|join) }}",
    "reverse": "{{ ()|attr('__ssalc__'|reverse) }}",
    "map_attribute": "{{ messages|map(attribute='__class__')|list }}",
    "map_attr_filter": "{{ messages|map('attr', '__class__')|list }}",
    "request": "{{ request.application.__globals__.__builtins__.__import__('os').popen('%s') }}",
    "config": "{{ config.__class__.__init__.__globals__['os'].popen('%s') }}",
    "getitem_dunder": "{{ lipsum['__globals__']['os'] }}",
    "frame": "{{ x.gi_frame.f_back.f_globals }}",
    "builtins_name": "{{ __builtins__.open('/etc/hostname').read() }}",
}
HIGH_PAYLOADS = {
    "private": "{{ self._TemplateReference__context.keys() }}",
    "format_fields": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "popen_call": "{{ x.popen('%s') }}",
    "module_attr": "{{ x.os.system('%s') }}",
    "global_eval": "{{ eval('1+1') }}",
}
MEDIUM_PAYLOADS = {
    "computed_attr": "{{ x|attr(name_from_message) }}",
    "repr_harvest": "{{ (()|select|string)[24] }}",
    "lipsum_string": "{{ (lipsum|string|list)[18] }}",
    "char_codes": "{{ '%c'|format(95) }}",
    "fragment": "{% set p = '__glo' %}{{ p }}",
    "gadget_attr": "{{ cycler.some_attribute }}",
    "web_global": "{{ config.items() }}",
    "include": "{% include 'other.jinja' %}",
}


# Names reached through keys the template builds at render time, and calls through subscripts: MLW-TPL-007.
COMPUTED_LOOKUP_PAYLOADS = {
    "render_time_concat_key": "{{ x[a ~ 'init' ~ b] }}",
    "call_through_subscript": "{{ foo[bar]() }}",
    "call_through_constant_subscript": "{{ x['popen']('id') }}",
    "call_of_filter_result": "{{ (x|attr(name))() }}",
    "loop_variable_pieces": "{% for u in ['_'] %}{{ x[u ~ u ~ 'class' ~ u ~ u] }}{% endfor %}",
    "plus_with_constant_variable": "{% set u = '_' %}{% set k = u + c %}{{ x[k] }}",
    "set_block_key": "{% set k %}_{{ '_cl' }}ass__{% endset %}{{ x[k] }}",
    "macro_argument_key": "{% macro m(k) %}{{ x[k] }}{% endmacro %}{{ m(u ~ 'class' ~ u) }}",
    "mutated_list_join": "{% set p = [] %}{% do p.append('_') %}{{ x[p|join] }}",
    "namespace_field": "{% set ns = namespace(k='_') %}{% set ns.j = ns.k ~ 'class' %}{{ x[ns.j] }}",
    "constant_overwritten": "{% set k = 'role' %}{% if c %}{% set k = '_' ~ c %}{% endif %}{{ x[k] }}",
    "format_key": "{{ x['%sinit%s'|format(u ~ u, u ~ u)] }}",
    "join_method_key": "{{ x[''.join([u, u, 'init', u, u])] }}",
    "attr_built_name": "{{ x|attr(u ~ 'init' ~ u) }}",
    "aliased_variable": "{% for i in r %}{{ x[c] }}{% set c = b %}{% set b = u ~ 'init' ~ u %}{% endfor %}",
}


def _analyse(source: str, limits: Limits | None = None) -> list:
    ctx = ScanContext(Policy(limits=limits or Limits()))
    artifact = Artifact.from_bytes(source.encode(), ("chat_template.jinja",), 0)
    analyse_template(source, artifact, ctx, "chat_template", 17)
    return ctx.findings


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_templates_have_no_failing_finding(name: str) -> None:
    findings = _analyse(BENIGN[name])
    assert [f for f in findings if f.severity >= Severity.MEDIUM] == []


def test_benign_unusual_method_is_only_low() -> None:
    findings = _analyse("{{ messages[0].content.expandtabs() }}")
    assert rule_ids(findings) == {"MLW-TPL-004"}
    assert findings[0].severity is Severity.LOW


@pytest.mark.parametrize("name", sorted(CRITICAL_PAYLOADS))
def test_critical_payloads(name: str) -> None:
    source = (
        CRITICAL_PAYLOADS[name].replace("%s", CANARY)
        if "%c" not in CRITICAL_PAYLOADS[name]
        else CRITICAL_PAYLOADS[name]
    )
    findings = _analyse(source)
    critical = [f for f in findings if f.rule_id == "MLW-TPL-001"]
    assert critical, findings
    assert critical[0].severity is Severity.CRITICAL
    assert critical[0].cwe == 1336
    assert critical[0].location.offset == 17
    assert critical[0].evidence.startswith("chat_template: line 1:")


@pytest.mark.parametrize("name", sorted(HIGH_PAYLOADS))
def test_high_payloads(name: str) -> None:
    findings = _analyse(HIGH_PAYLOADS[name].replace("%s", CANARY))
    assert "MLW-TPL-002" in rule_ids(findings)
    assert max(f.severity for f in findings) >= Severity.HIGH


@pytest.mark.parametrize("name", sorted(MEDIUM_PAYLOADS))
def test_medium_payloads(name: str) -> None:
    findings = _analyse(MEDIUM_PAYLOADS[name])
    assert "MLW-TPL-003" in rule_ids(findings)
    assert "MLW-TPL-001" not in rule_ids(findings)


@pytest.mark.parametrize("name", sorted(COMPUTED_LOOKUP_PAYLOADS))
def test_computed_lookup_payloads(name: str) -> None:
    findings = _analyse(COMPUTED_LOOKUP_PAYLOADS[name])
    hits = [f for f in findings if f.rule_id == "MLW-TPL-007"]
    assert hits, findings
    assert all(f.severity is Severity.HIGH and f.cwe == 1336 for f in hits)


def test_constant_key_built_from_fragments_is_critical() -> None:
    for source in ("{{ x['__cl' ~ 'ass__'] }}", "{{ x['__cl' ~ 'ass__']() }}"):
        assert "MLW-TPL-001" in rule_ids(_analyse(source))


def test_call_through_subscript_names_dangerous_method() -> None:
    findings = _analyse("{{ x['popen']('id') }}")
    assert {"MLW-TPL-002", "MLW-TPL-007"} <= rule_ids(findings)


@pytest.mark.parametrize(
    "source",
    [
        "{% for m in messages %}{% for key in m %}{{ m[key] }}{% endfor %}{% endfor %}",
        "{% for m in messages %}{{ messages[loop.index0 + 1].role }}{{ messages[loop.index0 - 1] }}{% endfor %}",
        "{% set ns = namespace(i=messages|length - 1) %}{{ messages[ns.i].content }}",
        "{% set role_map = {'user': 'U'} %}{{ role_map[messages[0].role] }}",
        "{% for f, label in [('maximum', 'Max'), ('minimum', 'Min')] %}{{ label ~ '=' ~ param[f] }}{% endfor %}",
        "{{ basic_type_map[json_spec.type] }}{{ content.split('</think>')[-1] }}{{ messages[1:] }}",
        "{% set prefix = '<|' ~ role ~ '|>' %}{{ prefix }}{{ tokens[(prefix ~ x)|length] }}",
    ],
)
def test_data_keys_are_not_reported(source: str) -> None:
    assert failing_of(_analyse(source)) == []


def test_payload_hidden_in_benign_template_is_found_with_line() -> None:
    source = CHATML + "\n\n{{ cycler.__init__.__globals__.os.popen('" + CANARY + "') }}"
    findings = [f for f in _analyse(source) if f.rule_id == "MLW-TPL-001"]
    assert findings
    assert findings[0].detail("lines") == (CHATML.count("\n") + 3,)
    assert "'__init__'" in findings[0].evidence
    assert "'__globals__'" in findings[0].evidence


def test_string_filter_on_ordinary_values_is_benign() -> None:
    source = "{{ (message['content'] | default('') | trim) | string }}{{ messages | length | string }}"
    assert failing_of(_analyse(source)) == []


def test_set_variable_named_like_a_gadget_is_local() -> None:
    findings = _analyse("{% for config in configs %}{{ config.name }}{% endfor %}")
    assert failing_of(findings) == []


def failing_of(findings: list) -> list:
    return [f for f in findings if f.severity >= Severity.MEDIUM]


def test_unparseable_template_is_low() -> None:
    findings = _analyse("{% for m in messages %}{{ m.content }}")
    assert rule_ids(findings) == {"MLW-TPL-005"}
    assert findings[0].severity is Severity.LOW
    assert "line" in findings[0].evidence


def test_unparseable_template_with_payload_tokens_is_high() -> None:
    findings = _analyse("{% weird %}{{ cycler.__init__.__globals__.os.popen('x') }}")
    assert {"MLW-TPL-005", "MLW-TPL-006"} <= rule_ids(findings)
    high = next(f for f in findings if f.rule_id == "MLW-TPL-006")
    assert "__globals__" in high.evidence
    assert high.severity is Severity.HIGH


def test_oversized_template_is_incomplete() -> None:
    findings = _analyse("{{ x }}" * 100, Limits(max_text_size=64))
    assert rule_ids(findings) == {"MLW-GEN-001"}


def test_string_multiplication_bomb_is_not_folded() -> None:
    findings = _analyse("{{ x|attr('_' * 1000000000) }}")
    assert "MLW-TPL-003" in rule_ids(findings)  # computed (too large to fold), not a MemoryError


def test_deeply_nested_template_fails_closed() -> None:
    findings = _analyse("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert findings
    assert all(f.severity >= Severity.LOW for f in findings)


# --- the standalone handler, through the engine ---------------------------------------------------------


def test_jinja_file_with_payload(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text("Chat template for the model.\n" + CRITICAL_PAYLOADS["cycler"].replace("%s", CANARY))
    result = scan_one(path)
    assert result.formats[0][0][-1].endswith("chat_template.jinja")
    assert result.formats[0][1] == "jinja-template"
    assert "MLW-TPL-001" in rule_ids(result)


@pytest.mark.parametrize("prefix", ["", "{# comment #}\n", "{%- set x = 1 %}"])
def test_jinja_file_starting_with_a_tag_is_sniffed_as_template(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text(prefix + CRITICAL_PAYLOADS["cycler"].replace("%s", CANARY))
    result = scan_one(path)
    assert result.formats[0][1] == "jinja-template"
    assert "MLW-TPL-001" in rule_ids(result)


def test_benign_jinja_file_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text("ChatML:\n" + CHATML)
    result = scan_one(path)
    assert result.formats[0][1] == "jinja-template"
    assert failing(result) == []


def test_template_handler_direct(tmp_path: Path) -> None:
    """The handler itself, whatever the sniffer decides (it is chosen by format)."""
    from mlwarden.artifacts.sniff import Format

    path = tmp_path / "chat_template.jinja"
    path.write_text(TOOLS + "{{ ''|attr('__cla' ~ 'ss__') }}")
    ctx = ScanContext(Policy())
    ctx.descend(Artifact.from_path(path), Format.TEMPLATE)
    assert rule_ids(ctx.findings) == {"MLW-TPL-001"}
    assert ctx.findings[0].detail("lines") == (TOOLS.count("\n") + 1,)


# --- real chat templates from the realworld corpus (llama.cpp, chujiezheng/chat_templates), through the engine ----


def _realworld_templates() -> list[Path]:
    from tests.conftest import CORPUS

    root = CORPUS / "realworld" / "benign"
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and (p.suffix in (".jinja", ".gguf") or p.name == "tokenizer_config.json")
    )


@pytest.mark.skipif(not _realworld_templates(), reason="../shared/corpus/realworld is not beside this checkout")
def test_realworld_benign_templates_have_no_failing_finding() -> None:
    paths = _realworld_templates()
    assert len(paths) >= 30
    for path in paths:
        result = scan_one(path)
        assert failing(result) == [], (path.name, failing(result))
