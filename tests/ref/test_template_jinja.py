#!/usr/bin/env python3
"""test_template_jinja.py: lib/template against jinja2 as transformers sets it up.

Engine-level checks (the full apply_chat_template comparison of ds-fmt is in
tests/ref/test_dsfmt_*.py): each case is a template and a context, rendered by
transformers' own _compile_jinja_template (jinja2 3.1, trim_blocks,
lstrip_blocks, its tojson/raise_exception/strftime_now, loopcontrols,
{% generation %}) and by build/ref/template_driver; the texts must be equal
byte for byte, or both sides must fail. Our runs must cover our output.
Cases: the small ones below (and REFUSED: what jinja2 renders and we refuse,
with our reason); the public templates of tests/ref/templates (the manifest's
and public.json's: llama.cpp's and chujiezheng/chat_templates' copies) over
make_conversations' records, add_generation_prompt both ways; then every
fixture chat template (/work/shared/fixtures/tokenizers/*/tokenizer_config.json,
plus SmolLM2's ChatML) with a few conversations.
Prints one "ok - ..." / "not ok - ..." line per group.
"""
import copy
import glob
import json
import os
import random
import re
import subprocess
import sys
import time

from make_conversations import conversations  # beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "build", "ref", "template_driver")
FIXTURES = os.environ.get("LORAPIPE_TOKENIZER_FIXTURES", "/work/shared/fixtures/tokenizers")
SHOW = 5

try:
    from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
except Exception:  # transformers missing: the same environment, built here
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def compile_template(src):
        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        return env.from_string(src)

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

M = {"messages": [{"role": "user", "content": "  Hello 'you'  "}, {"role": "assistant", "content": "Hi!\nthere"}]}

CASES = [
    ("{{ 'a' }}  {{ 'b' }}\n", {}),
    ("x\n  {% if true %}\n  y\n  {% endif %}\nz\n", {}),
    ("x  {%- if true -%}  y  {%- endif -%}  z", {}),
    ("  {%+ if true %}a{% endif +%}\nb", {}),
    ("a {# c #}\n  {#- c -#} b\n", {}),
    ("{% raw %}{{ x }}{% endraw %}", {}),
    ("{{ 1 }} {{ 1.0 }} {{ 2.5e-7 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}", {}),
    ("{{ true }} {{ none }} {{ [1, 'a', none, true, 1.5] }} {{ {'a': 1, \"b'\": [2]} }} {{ (1,) }} {{ (1, 2) }}", {}),
    ("{{ \"it's\" }} {{ ['it\\'s', 'a\"b', \"both'\\\"\", 'nl\\n\\t\\\\'] }}", {}),
    ("{{ undefined_var }}|{{ undefined_var is defined }}|{{ x | default('d') }}|{{ '' | default('e', true) }}", {}),
    ("{% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a', 'b') }},{% endfor %}", {}),
    ("{% for x in [] %}{{ x }}{% else %}empty{% endfor %}", {}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": [1, 2]}}),
    ("{% for x in range(10) if x is odd %}{{ x }}{% if x > 5 %}{% break %}{% endif %}{% endfor %}", {}),
    ("{% for x in range(6) %}{% if x is even %}{% continue %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{% set ns = namespace(n=0) %}{% for x in range(4) %}{% set ns.n = ns.n + x %}{% set y = x %}{% endfor %}{{ ns.n }}{{ y }}", {}),
    ("{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}),
    ("{% macro m(a, b='B', c=none) %}{{ a }}{{ b }}{{ c }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 2, 3) }}|{{ m(1, c=5) }}", {}),
    ("{% macro m(x) %}<{{ caller(x) }}>{% endmacro %}{% call(y) m(3) %}got {{ y }}{% endcall %}", {}),
    ("{% filter upper %}abc {{ 'd' }}{% endfilter %}", {}),
    ("{{ '  ab c  ' | trim }}|{{ 'xxabxx' | trim('x') }}|{{ 'aBc dEF-ghi' | title }}|{{ 'aBC' | capitalize }}|{{ 'abc' | upper }}|{{ 'ÀÉ' | lower }}", {}),
    ("{{ [3, 1, 2] | sort }}{{ [3, 1, 2] | sort(reverse=true) }}{{ ['b', 'A', 'a'] | sort }}{{ [{'n': 2}, {'n': 1}] | sort(attribute='n') }}", {}),
    ("{{ [1, 2, 2, 3] | unique | list }}{{ [1, 2] | reverse | list }}{{ 'abc' | reverse }}{{ [1, 2, 3] | sum }}{{ [1, 5, 2] | max }}{{ [4, 1] | min }}", {}),
    ("{{ [{'a': 1}, {'a': 2}] | map(attribute='a') | join(', ') }}|{{ ['a', 'b'] | map('upper') | list }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('equalto', 2) | list }}", {}),
    ("{{ users | selectattr('active') | map(attribute='name') | list }}{{ users | rejectattr('active') | list | length }}{{ users | selectattr('name', 'equalto', 'b') | list }}", {"users": [{"name": "a", "active": True}, {"name": "b", "active": False}]}),
    ("{{ d | dictsort }}{{ d | items | list }}{{ d | length }}{{ d.keys() | list }}{{ d.values() | list }}{{ d.get('b') }}{{ d.get('z', 0) }}", {"d": {"b": 1, "a": 2}}),
    ("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ [] | tojson(indent=4) }}|{{ x | tojson(separators=(',', ':')) }}", {"x": {"a": [1, 2.5, None, True], "b": {}, "c": "ü"}}),
    ("{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'xhix'.strip('x') }}{{ '  l'.lstrip() }}{{ 'r  '.rstrip() }}|", {}),
    ("{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('x', 'lo')) }}{{ 'aXa'.replace('a', 'bb') }}{{ 'abc'.upper() }}{{ 'abcb'.find('b') }}{{ 'abcb'.count('b') }}{{ '{} and {x}'.format(1, x=2) }}{{ 'hello world'.title() }}", {}),
    ("{{ 'abcdef'[1:3] }}{{ 'abcdef'[::-1] }}{{ 'abcdef'[-2:] }}{{ [1,2,3,4][::2] }}{{ [1,2,3][-1] }}{{ 'héllo'[1] }}{{ 'héllo'[1:3] }}{{ [1,2,3][5] }}", {}),
    ("{{ 1 if true else 2 }}{{ 'y' if false }}{{ 1 + 2 * 3 }}{{ (1 + 2) * 3 }}{{ 'a' ~ 1 ~ none }}{{ 'a' in 'abc' }}{{ 2 not in [1] }}{{ not true }}{{ 1 < 2 < 3 }}{{ 1 == 1.0 }}{{ 'a' + 'b' }}", {}),
    ("{{ x is none }}{{ x is not none }}{{ 3 is divisibleby 3 }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 1 is number }}{{ 1 is integer }}{{ true is boolean }}{{ 'ab' is lower }}{{ 2 is even }}{{ x is sameas none }}", {"x": None}),
    ("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'one two  three' | wordcount }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 3 | round }}|{{ '12' | int + 1 }}|{{ 'x' | int }}|{{ '1.5' | float }}|{{ 1 | string }}", {}),
    ("{{ [1, 2, 3, 4, 5] | batch(2) | list }}{{ 'hello world foo bar' | truncate(12) }}{{ 'x' * 3 }}{{ [0] * 2 }}{{ 'a' | first }}{{ [1, 2] | last }}{{ 'ab' | list }}", {}),
    ("{{ raise_exception('boom ' + 'x') }}", {}),
    ("line1\n{{ foo.bar }}", {}),
    ("{{ x | nosuchfilter }}", {}),
    ("{% for x in 1 %}{% endfor %}", {}),
    ("{% if %}", {}),
    ("{{ messages[0].content | trim }}{{ messages[1]['content'] }}{{ messages | length }}", M),
    ("{% for m in messages %}{{ m.role }}{{ m.content.split('\\n') }}{{ m | tojson }}{% endfor %}", M),
    ("{% set l = [] %}{{ l.append(1) }}", {}),
    ("{% for x in [[1, 2], [3, 4]] %}{% for y in x %}{{ loop.index }}{{ y }}{% endfor %}{{ loop.index }}{% endfor %}", {}),
    ("{% for x in range(3) %}{% if loop.first %}{% set z = 5 %}{% endif %}{{ z }}{% endfor %}|{{ z }}", {}),
    ("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}{% macro f() %}{{ x }}{% endmacro %}{% set x = 3 %}{{ f() }}", {}),
    ("{{ 10 / 4 }} {{ 1e300 * 1e10 }} {{ 3.0 }} {{ 100000000000000000.0 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1/3 }}", {}),
    ("{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ 1 < 'a' }}", {}),
    ("{{ x.y }}{{ x['y'] is defined }}", {"x": {}}),
    ("{% if x is defined and x.y is defined %}y{% else %}n{% endif %}", {}),
    ("{{ [1, [2, {'k': 'v'}]] | string }}{{ none | string }}{{ '%s' }}", {}),
    ("{% for i in range(2) %}\n  {{ i }}\n{% endfor %}\n", {}),
    ("{%- for i in range(2) -%}\n  {{ i }}\n{%- endfor %}\nend\n\n", {}),
    ("{{ '\\u00e9\\x41\\u20ac\\U0001F642\\xff' }} {{ \"tab\\there\" }}", {}),
    ("{% generation %}gen {{ 1 }}{% endgeneration %} after", {}),
]

MISTRAL_TOOLS = (
    '{%- for tool in tools %}{%- set tool = tool.function %}{{- \'{"type": "function", "function": {\' }}'
    '{%- for key, val in tool.items() if key != "return" %}{%- if val is string %}{{- \'"\' + key + \'": "\' + val + \'"\' }}'
    '{%- else %}{{- \'"\' + key + \'": \' + val|tojson }}{%- endif %}{%- if not loop.last %}{{- ", " }}{%- endif %}{%- endfor %}'
    '{{- "}}" }}{%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" }}{%- endif %}{%- endfor %}')

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["a", "b"]}}, "required": ["city"]}}}]

CASES += [
    (MISTRAL_TOOLS, {"tools": TOOLS}),
    ("{%- for message in messages | rejectattr('role', 'equalto', 'tool') | selectattr('tool_calls', 'undefined') %}{{ loop.index0 }}{{ message.role }}{% endfor %}", M),
    ("{%- set content = m['content'] if m['content'] is string else m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') %}[{{ content }}]", {"m": {"content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]}}),
    ("{{ m.content | default('', true) }}|{{ none | default('x') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages[-1].role }}|{{ messages[0].content[:4] }}", dict(M, m={"content": None})),
    # strip and trim: ASCII and other white space at either end, characters given, nothing left
    ("{{ s1 | trim }}|{{ s2 | trim }}|{{ s3.strip() }}|{{ s3.lstrip() }}|{{ s3.rstrip() }}|{{ s4.strip('éa') }}|{{ s4 | trim('é') }}|[{{ s5 | trim }}]|{{ s6.rstrip('🙂') }}|{{ s6.lstrip('a🙂') }}|[{{ '' | trim }}]|{{ s2.rstrip() }}|{{ s7.strip() }}",
     {"s1": "  hi  ", "s2": "\u3000\u00a0 привет\u2028\u3000", "s3": "\n\t x y \r\n", "s4": "éaébcaé", "s5": " \u3000 ",
      "s6": "a🙂🙂", "s7": "\u00a0x\u00a0"}),
    # numbers of the context written "100.0" or "1e16": floats, as json.loads makes them
    ("{{ x }} {{ y }} {{ x | tojson }} {{ y | tojson }} {{ z }} {{ w }} {{ x == 100 }} {{ x is number }} {{ y[1] + 1 }} {{ x | int }} {{ n }}",
     {"x": 100.0, "y": [1.5, 2.0, 3], "z": 1e16, "w": -0.0, "n": 7}),
    ("{{ 'é😀\"' | tojson(ensure_ascii=True) }}|{{ x | tojson(sort_keys=true) }}|{{ {'a': none} | tojson }}|{{ 1.0 | tojson }}|{{ [1e20, 1.5e-7] | tojson }}", {"x": {"b": 1, "a": {"d": 2, "c": 3}}}),
    ("{{ 'ÉCOLE' | lower }}|{{ 'élan vital' | title }}|{{ 'abc' | center(9) }}|{{ 1 == true }}|{{ 0.5 | round }}|{{ 1.5 | round }}|{{ -0.0 }}|{{ [1, 2] | join }}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %}{{ 'a' 'b' }}{{ 1_000 }}{{ 'x'.join(['a', 'b']) }}{{ '%' }}{{ loop }}", {}),
    ("{{ 3 // 0 }}", {}),
    ("{% if true %}\n\n  x\n{% endif %}\n\t{# c #}\n\t{% if true %}y{% endif %}\n", {}),
    ("{%- set ns = namespace(found=false) %}{%- for m in messages %}{%- if m.role == 'assistant' %}{%- set ns.found = true %}{%- endif %}{%- endfor %}{{ ns.found }}", M),
    ("{% macro row(items) %}{% for i in items %}<{{ caller(i) }}>{% endfor %}{% endmacro %}{% call(x) row([1, 2]) %}{{ x * 10 }}{% endcall %}", {}),
    ("{% for m in messages %}{% if not loop.first %}{{ loop.previtem.role }}>{% endif %}{{ m.role }}{% endfor %}", M),
    ("{{ x is string and x | length > 3 }}{{ 'abc'.split() }}{{ '  a b  '.split(none, 1) }}{{ 'a-b-c'.rsplit('-', 1) }}{{ 'Hello'.lower().startswith('he') }}", {"x": "abcd"}),
    ("{{ messages[0]['content'] }}{{ messages[0].get('content') }}{{ messages[0].get('missing', 'dflt') }}{{ 'content' in messages[0] }}{{ messages[0]['missing'] is defined }}", M),
    ("{%- if tools is not none and tools | length > 0 %}{{ tools[0].function.parameters.properties | tojson }}{%- endif %}", {"tools": TOOLS}),
    ("{{ '{{' }}{{ '}}' }}{{ '{%' }}", {}),
    ("{% set x = {'k': [1, 'two', {'t': (1, 2)}], 'f': 0.25} %}{{ x }}|{{ x.k }}|{{ x['f'] * 4 }}", {}),
    ("{{ tool_call.arguments | tojson }}{{ tool_call.arguments is mapping }}{{ tool_call.arguments is string }}", {"tool_call": {"name": "f", "arguments": {"q": "x\ny", "n": [1, 2]}}}),
    ("{{ tool_call.arguments }}{% if tool_call.arguments is string %}S{% endif %}", {"tool_call": {"arguments": "{\"q\": 1}"}}),
    ("{{ messages | map(attribute='role') | join(',') }}{{ messages | map(attribute='nope', default='?') | join(',') }}", M),
    ("{{ 5 is divisibleby(2) }}{{ [] is sequence }}{{ 'A' is upper }}{{ x is callable }}{{ range is callable }}{{ 1 is in([1, 2]) }}{{ 3 is gt 2 }}", {"x": 1}),
    ("{{ ['b', 'a'] | sort | first }}{{ {'b': 1, 'a': 2} | dictsort(by='value') }}{{ {'B': 1, 'a': 2} | dictsort }}{{ ['B', 'a', 'C'] | sort(case_sensitive=true) }}", {}),
    ("{{ [1, 2, 3] | map('string') | join }}{{ ['1', '2'] | map('int') | sum }}{{ [1.5, 2] | sum }}{{ [] | sum }}{{ ['a', 'b'] | map('upper') | join('|') }}", {}),
    ("{% set a = 'x' %}{% macro m() %}{{ a }}{% endmacro %}{% for i in [1] %}{% set a = 'y' %}{{ m() }}{{ a }}{% endfor %}{{ a }}", {}),
    ("{{ 'abc' ~ 1 ~ 1.5 ~ true ~ [1] }}{{ 'ab' * 2 }}{{ 2 * 'ab' }}{{ 'a' + 1 }}", {}),
    # chains of + and ~ printed piece by piece (lib/template's emit_chain): strings, then other kinds part way
    ("{{ '<|im_start|>' + messages[0].role + '\\n' + messages[0].content + '<|im_end|>' + '\\n' }}", M),
    ("{{ messages[1].content ~ 1 ~ messages[0].role ~ none ~ [2] }}|{{ '' + '' + 'z' }}|{{ 'a' + ('b' + 'c') + 'd' }}", M),
    ("{{ 1 + 2 + 3 }}{{ [1] + [2] + [3] }}{{ 1.5 + 2 + true }}{{ 'a' ~ 1 + 2 }}", {}),
    ("{{ 'a' + 'b' + 1 }}", {}),
    ("{{ 'a' + messages[0].content + [1] }}", M),
    ("{{ 'a' + undefined_thing + 'b' }}", {}),
    ("{{ 1 + 'a' + raise_exception('not reached') }}", {}),
    ("{{ 10 % 3 }}{{ 2 ** -1 }}{{ 2 ** 0.5 }}{{ 1e3 }}{{ 12345678901234567 }}{{ 1.0e15 }}{{ 123456789.123 }}{{ -1.5e-5 }}", {}),
    ("{{ 'A\\tB' | wordcount }}{{ 'x' | indent(4, true, true) }}{{ 'a\\n\\nb\\n' | indent(2, blank=true) }}|{{ 'a\\n\\nb\\n' | indent(2) }}|", {}),
    ("{{ 'a b c d e f' | truncate(5) }}|{{ 'abcdefghij klm' | truncate(9, true) }}|{{ 'short' | truncate(10) }}|{{ 'hello world' | truncate(9, false, '..', 0) }}", {}),
    ("{{ -(3) }}{{ +2 }}{{ not none }}{{ none is none }}{{ [] == [] }}{{ {} == {} }}{{ (1, 2) == [1, 2] }}{{ 'a' != 'b' }}", {}),
    ("{% for c in 'hé' %}{{ c }}.{% endfor %}{{ 'hé' | length }}{{ 'hé' | list }}{{ 'aXbX' | replace('X', '-', 1) }}", {}),
    ("{{ x.y.z }}", {"x": {"y": None}}),
    ("{{ x.y.z }}", {"x": {}}),
    ("{% for x in none %}{% endfor %}", {}),
    ("{{ undefined_thing | length }}{{ undefined_thing | list }}{% for x in undefined_thing %}{% endfor %}{{ undefined_thing ~ 'a' }}", {}),
    ("{{ undefined_thing + 1 }}", {}),
    ("{{ messages[0].content.strip() | trim | upper | lower | capitalize }}", M),
    ("{% filter trim %}  {{ 'x' }}  {% endfilter %}|{% set y | upper %}ab{% endset %}{{ y }}", {}),
    ("{{ '%s-%s' | format(1, 'a') }}", {}),
    ("{%- for m in messages -%}\n  {%- if m.role == 'user' -%}\n    U:{{ m.content }}\n  {%- else -%}\n    A:{{ m.content }}\n  {%- endif -%}\n{%- endfor -%}\n", M),
    ("{% for i in range(3) %}{{ loop.revindex0 }}{{ loop.depth }}{% endfor %}{{ range(2, 9, 3) | list }}{{ range(3, 0, -1) | list }}", {}),
    ("{{ x }}", {"x": [1, "a'b", None, True, 2.5, {"k": "v"}]}),
    ("{{ x }}", {"x": 0.1}),
    ("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% for i in [1, 2] %}{% if i == 2 %}{{ y }}{% endif %}{% set y = i %}{% endfor %}", {}),
    ("{% set x = 1 %}{% macro m() %}{% set x = 5 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}", {}),
    ("{% macro m(a) %}{{ a }}{% if a > 0 %}{{ m(a - 1) }}{% endif %}{% endmacro %}{{ m(3) }}", {}),
    ("{% set ns = namespace(a=1) %}{% macro m() %}{% set ns.a = ns.a + 1 %}{% endmacro %}{{ m() }}{{ m() }}{{ ns.a }}", {}),
    ("{% for m in messages %}{{ m }}{% endfor %}{{ messages }}", {"messages": [{"role": "user", "content": "x", "n": 1.5}]}),
    ("{{ 'é' | tojson }}{{ '\\u2028' | tojson }}{{ '\\x7f' | tojson }}{{ '\\x7f' }}{{ ['\\x7f', '\\x01', 'é', '\\u00a0', '\\u200b'] }}", {}),
    ("{{ 'a'.find('b') }}{{ 'ab'.capitalize() }}{{ 7 is upper }}{{ 'A1' is upper }}{{ 2.0 is even }}{{ 3 is odd }}{{ none | map('upper') | list }}", {}),
    ("{{ u | int }}", {}),
    ("{{ [1, 2][1:] }}{{ 'abc'[5:] }}{{ n[1:] }}", {"n": 5}),
    ("{{ '%s-%d' % ('a', 2.7) }}{{ 'x%%' % () }}{{ '%r' % 'q' }}{{ '%s' % none }}{{ '[%s]' % [1] }}{{ '%s %s' | format('a', 1) }}", {}),
    ("{{ '%s' % (1, 2) }}", {}),
    # %d of floats past int64 prints their exact integer; inf and NaN raise
    ("{{ '%d|%d|%d|%i' % (1e300, -1.5e19, 9.3e18, -0.7) }}{{ '%d' | format(2.0 ** 70) }}", {}),
    ("{% set x = 1e300 %}{{ '%d' % (x * x) }}", {}),
    ("{% set x = 1e300 %}{{ '%d' % (x * x - x * x) }}", {}),
    ("{% if false %}{{ x | nosuch }}{% endif %}ok", {}),
    ("{% if false %}{{ x is nosuch }}{% endif %}ok", {}),
    ("{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% set c = 3 %}{% endwith %}{{ a }}{{ c }}", {}),
    ("{% with %}{% set z = 1 %}{{ z }}{% endwith %}[{{ z }}]", {}),
]

USERS = {"users": [{"name": "a", "city": "X"}, {"name": "b", "city": "y"}, {"name": "c", "city": "x"}, {"name": "d", "city": "Y"}, {"name": "e"}]}
TREE = {"tree": [{"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}, {"name": "d"}]}, {"name": "e", "children": []}]}

# loop.changed, loop.cycle, cycler, joiner, groupby, slice, recursive loops
CASES += [
    ("{% for x in [1, 1, 2, 2, 1] %}{{ loop.changed(x) }}{% endfor %}|{% for x in [1, 2] %}{{ loop.changed() }}{% endfor %}", {}),
    ("{% for x in [1, 1, 2, 2, 1] %}{% if loop.changed(x, x > 1) %}{{ x }}{% endif %}{% endfor %}{% for x in [{'a': 1}, {'a': 1}, [2]] %}{{ loop.changed(x) }}{% endfor %}", {}),
    ("{% for m in messages %}{% if loop.changed(m.role) %}[{{ m.role }}]{% endif %}{{ m.content }}{% endfor %}", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}),
    ("{% for x in range(5) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}{% for x in [1] %}{{ loop.cycle(x, 2) }}{% endfor %}", {}),
    ("{% for x in range(2) %}{{ loop.cycle() }}{% endfor %}", {}),
    ("{% set c = cycler('odd', 'even') %}{% for x in range(5) %}{{ c.next() }}{{ c.current }}{% endfor %}{{ c.reset() }}{{ c.current }}{{ c.pos }}{{ c.items }}", {}),
    ("{% set c = cycler(messages[0].content, 1) %}{{ c.next() }}{{ c.next() }}{{ c.next() }}{{ c.items | length }}", M),
    ("{% set c = cycler() %}", {}),
    ("{% set c = cycler(1) %}{{ c() }}", {}),
    ("{% set j = joiner() %}{% for x in [1, 2, 3] %}{{ j() }}{{ x }}{% endfor %}{% set k = joiner(sep='-') %}{{ k() }}{{ k() }}{{ k() }}{% set n = joiner(none) %}{{ n() }}{{ n() }}", {}),
    ("{% set j = joiner(eos_token) %}{% for m in messages %}{{ j() }}{{ m.content }}{% endfor %}", dict(M, eos_token="</s>")),
    ("{{ cycler is callable }}{{ cycler(1) is callable }}{{ joiner(1) is callable }}{% for x in [1] %}{{ loop is callable }}{% endfor %}", {}),
    ("{{ users | groupby('city') }}|{{ users | groupby('city', case_sensitive=true) }}", dict(USERS, users=USERS["users"][:4])),
    ("{% for city, items in users | groupby('city', default='?') %}{{ city }}: {{ items | map(attribute='name') | join(', ') }};{% endfor %}", USERS),
    ("{% for g in users | groupby(attribute='city', default='?', case_sensitive=false) %}{{ g.grouper }}={{ g.list | length }}/{{ g[0] }}/{{ g.list[0].name }};{% endfor %}", USERS),
    ("{% for g in users | groupby('city') %}{{ g.grouper }};{% endfor %}", {"users": [{"name": "a"}, {"name": "b", "city": "y"}]}),
    ("{% for g in users | groupby('a.b') %}{{ g.grouper }}{{ g.list | length }};{% endfor %}{{ users | groupby('a.z', 0) | length }}", {"users": [{"a": {"b": 2}}, {"a": {"b": 1}}, {"a": {"b": 2}}]}),
    ("{% for g in rows | groupby(0) %}{{ g.grouper }}:{{ g.list }};{% endfor %}{% for g in rows | groupby('1') %}{{ g.grouper }};{% endfor %}{{ 'aAbB' | groupby(0) }}", {"rows": [[2, "a"], [1, "b"], [2, "c"]]}),
    ("{{ [] | groupby('x') }}{{ undefined_thing | groupby('a') }}{{ [3, 1, 2] | groupby('x', default=0) }}{{ users | groupby('k') }}", {"users": [{"k": None}]}),
    ("{{ users | groupby('k') }}", {"users": [{"k": 1}, {"k": "a"}]}),
    ("{{ users | groupby('k') }}", {"users": [{"k": None}, {"k": None}]}),
    ("{% for g in messages | groupby('role') %}{{ g.grouper }}:{{ g.list | map(attribute='content') | join }}|{% endfor %}", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}),
    ("{{ [1, 2, 3, 4, 5, 6, 7] | slice(3) | list }}{{ [1, 2, 3, 4, 5, 6, 7] | slice(3, 'x') | list }}{{ [] | slice(2, 0) | list }}{{ 'abcde' | slice(2) | list }}{{ [1] | slice(-1) | list }}", {}),
    ("{{ [1, 2, 3] | slice(5) | list }}{{ [1, 2, 3] | slice(5, fill_with=0) | list }}{{ none | slice(2) | list }}{% for col in [1, 2, 3, 4, 5] | slice(2) %}<{% for i in col %}{{ i }}{% endfor %}>{% endfor %}", {}),
    ("{{ [1, 2] | slice(0) | list }}", {}),
    ("{% for item in tree recursive %}{{ item.name }}{% if item.children %}({{ loop(item.children) }}){% endif %}{{ loop.depth }}{{ loop.depth0 }}{% endfor %}", TREE),
    ("{% for item in tree if item.name != 'd' recursive %}{{ loop.index }}{{ item.name }}{% if item.children is defined %}[{{ loop(item.children) }}]{% endif %}{% else %}EMPTY{% endfor %}", TREE),
    ("{% for x in [1, 2] recursive %}{{ x }}{% if x < 4 %}{{ loop([x + 2]) }}{% endif %}{% endfor %}", {}),
    ("{% set y = 5 %}{% for x in [[1, [2]], 3] recursive %}{% set y = 7 %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{{ y }}{% endif %}{% endfor %}{{ y }}", {}),
    ("{% for a in [1, 2] %}{% for x in [[3], 4] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ a }}{{ x }}{{ loop.depth }}{% endif %}{% endfor %}{% endfor %}", {}),
    ("{% for x in [1, 1, 2] recursive %}{{ loop.changed(x) }}{% if x == 2 %}{{ loop([2, 2]) }}{% endif %}{% endfor %}", {}),
    ("{% for x in [[1]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ loop.previtem }}{{ loop.length }}{{ x }}{% endif %}{% endfor %}", {}),
    ("{% for m in [messages] recursive %}{% if m is mapping %}{{ m.role }}:{{ m.content }};{% else %}{{ loop(m) }}{% endif %}{% endfor %}", M),
    ("{% for x in [1, 2] recursive %}{% if x is number %}{{ x }}{% break %}{% endif %}{% endfor %}", {}),
    ("{% for x in [1] %}{{ loop([2]) }}{% endfor %}", {}),
    ("{% for x in [1] recursive %}{{ loop() }}{% endfor %}", {}),
    ("{% for x in [1] recursive %}{{ loop([], 2) }}{% endfor %}", {}),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", {}),
    # Markup (|safe, |escape): + escapes the other side; the mark stays through
    # Markup's own methods and the filters that use them, not through ~ or str()
    ("{{ 'a'|safe + '<b>' }}|{{ '<b>' + 'a'|safe }}|{{ 'a'|safe ~ '<b>' }}|{{ ('a'|safe + '<b>')|length }}", {}),
    ("{{ '<x>'|e }}{{ '<x>'|e + '<y>' }}{{ '<x>'|escape|safe + \"'\" }}{{ '<x>'|e|e }}{{ x|e + '&' }}", {"x": "a&b"}),
    ("{{ ('a'|safe + '<b>')|upper }}|{{ ('a'|safe + '<b>')|replace('a', '<') }}|{{ 'x'|safe|trim + '<' }}", {}),
    ("{% set x = 'a'|safe %}{{ x + '&' }}{{ x|tojson }}{{ x|string + '<' }}{{ (x|default('z')) + '<' }}", {}),
    ("{{ [1]|map('safe')|first + '<' }}{{ 'a'|safe == 'a' }}{{ ('a'|safe) in ['a'] }}{{ ('a'|safe)[0] + '<' }}", {}),
    ("{{ ('<'|safe + '<')|forceescape }}{{ '<'|forceescape + '<' }}{{ ('a'|safe).upper() + '<' }}", {}),
    ("{{ ('a<'|safe).replace('<', '>') + '&' }}{{ (' <x> '|safe).strip(' <') + '&' }}{{ ('<a'|safe).removeprefix('<') + '&' }}{{ ('x>'|safe|trim('>')) + '<' }}{{ (','|safe).join(['<', 'b'|safe]) }}{{ ('a b'|safe).split()[1] + '<' }}", {}),
    ("{{ ('ab'|safe)[0:1] + '<' }}{{ ('a'|safe) * 2 + '<' }}{{ ('a'|safe).startswith('a') }}{{ ('x'|safe|list)[0] + '<' }}", {}),
    ("{{ 'a'|safe + 1 }}", {}),
    ("{{ t.name|safe + ': ' + t.description }}", {"t": {"name": "f", "description": "the user's \"id\" <x> & y"}}),
    # a Markup's % and format filter escape what %s and %r write of each argument
    ("{{ '%s|%r|%d|%i'|safe % ('<a>', '<b>', 3.7, True) }}|{{ '%s'|safe % [1, '<'] }}|{{ '%s'|safe % '<' }}|{{ '%s %s'|safe % ('<'|safe, none) }}|{{ '%r'|safe % ('<'|safe,) }}", {}),
    ("{{ '%s'|safe|format('<&') }}|{{ 'x'|safe % [] }}|{{ '%s'|safe % (('<',),) }}|{{ ('%s'|safe % 1) + '<' }}|{{ '%s-%s'|safe|format(x, 1) }}|{{ ('%s'|format('<'|safe)) + '<' }}|{{ '%%%s'|safe % \"'\" }}", {"x": ["<"]}),
    ("{{ '%s'|safe|format() }}", {}),
    # generators (map, select, reject, selectattr, rejectattr, unique, batch,
    # slice, items, reverse of a list): used up as they are read, true when
    # empty, no len, no json, no index; dict views: no json, no index
    ("{% if []|select('odd') %}T{% else %}F{% endif %}{% if [2]|reject('even') %}T{% endif %}{% if [1]|map('string')|list %}L{% endif %}", {}),
    ("{{ ([1, 2]|map('string'))|length }}", {}),
    ("{{ [1, 2]|select('odd')|count }}", {}),
    ("{{ [1, 2]|map('string')|tojson }}", {}),
    ("{{ [1, 2]|unique|tojson }}", {}),
    ("{{ x|selectattr('a')|tojson }}", {"x": [{"a": 1}]}),
    ("{% set g = [1, 2, 3]|select('odd') %}{% for x in g %}{{ x }}{% endfor %}|{% for x in g %}{{ x }}{% endfor %}", {}),
    ("{% set g = [1, 2]|map('string') %}{{ g|list }}{{ g|list }}{% set h = [1, 2, 3]|map('int') %}{{ h|first }}{{ h|list }}", {}),
    ("{% set g = [1, 2, 3]|select %}{{ 2 in g }}{{ g|list }}{{ 5 in g }}", {}),
    ("{{ ([1, 2, 3]|reverse)[0] }}|{{ ([1, 2, 3]|map('string'))[0] }}|{{ {'a': 1}.keys()[0] }}|", {}),
    ("{{ ([1, 2]|select)[0:1] }}", {}),
    ("{{ {'a': 1}.values()[0:1] }}", {}),
    ("{{ [3, 1]|reverse|first }}{{ [1, 2]|map('string')|first }}{{ []|select|first }}|{{ [1, 2]|map('string')|join(',') }}", {}),
    ("{{ [1, 2]|map('string')|last }}", {}),
    ("{{ [1, 2]|map('string') is sequence }}{{ [1, 2]|map('string') is iterable }}{{ {'a': 1}.keys() is sequence }}", {}),
    ("{% for x in [1, 2]|map('string') %}{{ loop.length }}{{ loop.last }}{{ loop.revindex }}{% endfor %}", {}),
    ("{{ ([1, 2]|map('string')) == ['1', '2'] }}{{ [1, 2]|map('string')|reverse|list }}{{ [2, 1]|map('int')|sort }}{{ [1, 2]|map('int')|sum }}", {}),
    ("{{ [1]|select + [2] }}", {}),
    ("{{ [1, 2, 3]|batch(2)|list }}{{ [1, 2, 3]|slice(2)|list }}{{ {'b': 1}|items|list }}", {}),
    ("{{ {'a': 1}.items() }}{{ {'a': 1}.keys() }}{{ {'a': 1}.values()|list }}{{ {'a': 1}.keys()|length }}{{ 'a' in {'a': 1}.keys() }}", {}),
    ("{{ {'a': 1}.items()|tojson }}", {}),
    ("{{ d.keys()[0] }}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}{% for k in d.keys() %}{{ k }}{% endfor %}{{ d.items()|list|tojson }}", {"d": {"a": 1, "b": 2}}),
    ("{% set m = messages|selectattr('role', 'equalto', 'system') %}{% if m %}S{% endif %}{{ m|list|length }}", {"messages": [{"role": "user"}]}),
    ("{{ tools|map(attribute='function')|tojson(indent=2) }}", {"tools": [{"function": {"name": "f"}}]}),
    ("{{ ('a,<'|e).split(',') }}{{ ['x'|safe, 'y'] }}{{ [1, 2]|map('string')|map('safe')|list }}", {}),
    ("{{ range(3) == [0, 1, 2] }}{{ range(3) == range(0, 3) }}{{ range(3)[1] }}{{ range(3)|length }}{{ range(3) is sequence }}{{ range(4).index(2) }}{{ range(3)|list }}", {}),
    ("{{ range(3)|tojson }}", {}),
    ("{{ range(3) + [1] }}", {}),
    ("{{ ([1, 2]|select).count(1) }}", {}),
    ("{{ y is sequence }}{{ d.y is sequence }}{{ d.y is iterable }}{{ d.y is mapping }}", {"d": {"a": 1}}),
    ("{% for k in d|truncate(5) %}{{ k }}{% endfor %}|{{ l|truncate(5) }}|{{ d.x|truncate(5) }}|", {"d": {"a": 1, "b": 2}, "l": [1, 2]}),
    ("{{ 5|truncate(5) }}", {}),
    ("{{ range(20)|truncate(5) }}", {}),
    ("{{ 'ab'.center(7) }}|{{ 'ab'.center(6, '*') }}|{{ 'é'.center(4, 'ж') }}|{{ m.ljust(9, '.') }}|{{ 'ab'.rjust(5) }}|{{ '-42'.zfill(5) }}|{{ '-'.zfill(3) }}|{{ '+4'.zfill(1) }}|{{ 'x'|center(5) }}", {"m": "Hi <b>"}),
    ("{{ 'a,b,c'.partition(',') }}{{ 'a,b,c'.rpartition(',') }}{{ 'abc'.partition('x') }}{{ 'abc'.rpartition('x') }}{{ 'aaa'.rpartition('aa') }}{{ (m.partition(' ')[2]) }}", {"m": "Hi <b>"}),
    ("{{ 'x'.center(3, 'ab') }}", {}),
    ("{{ 'abc'.partition('') }}", {}),
    ("{{ (1, 2).copy() }}", {}),
    ("{{ range(3).append(1) }}", {}),
    ("{{ (1, 2).count(1) }}{{ range(4).index(2) }}", {}),
    # a generator over what cannot be read fails when read, not when made
    ("{% if 1|select %}T{% endif %}{% if 0|unique %}T{% endif %}{% if 'ab'|items %}T{% endif %}{{ none|batch(2) is iterable }}{{ 0|map('string')|list }}{{ x|items|list }}{% set g = 5|unique %}{{ g is sequence }}", {}),
    ("{{ 3|map('string')|list }}", {}),
    ("{% if ' pad '|items|reject %}T{% endif %}{% if 0|batch(2, 'x')|map('string') %}T{% endif %}", {}),
    ("{{ (1|reject|selectattr('role'))|list }}", {}),
    ("{{ [1]|items|first }}", {}),
    ("{{ 1 in (2|select) }}", {}),
    ("{% for x in true|slice(2) %}{{ x }}{% else %}E{% endfor %}", {}),
    ("{{ false % -2.0 }} {{ 0 % -2.0 }} {{ -0.0 % 2.0 }} {{ -0.0 % -2.0 }} {{ 4.0 % -2.0 }} {{ -4.0 % 2.0 }} {{ 1 % -2.0 }} {{ 0 // -2.0 }} {{ -0.0 // 3 }} {{ 1 // -3.0 }} {{ -1 // 3.0 }} {{ 5.5 // 2 }} {{ -0.0 // -3.0 }}", {}),
    ("{{ range(3) }}|{{ range(5, 2) }}|{{ range(-3) }}|{{ range(0, 10, 3) }}|{{ [range(2), (range(1),)] }}|{{ {'a': range(-5, 5, 2)} }}|{{ range(3) ~ 'x' }}|{{ range(3)|string }}", {}),
    ("{{ range(10)[::-1] }}|{{ range(0, 10, 3)[1:100] }}|{{ range(5, 2)[::-1] }}|{{ range(3)[-100:100] }}|{{ range(10)[8:1:-2] }}|{{ range(10)[100:-100:-1] }}|{{ range(10)[::3][1:] }}|{{ range(10)[-2::-4][::-1] }}", {}),
]

CONVS = [
    {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}], "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "What's 2+2?\n"}, {"role": "assistant", "content": " 4 "}, {"role": "user", "content": "Thanks"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
                  {"role": "tool", "content": "{\"temp\": 21}"},
                  {"role": "assistant", "content": "It is 21°C."}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
     "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "think"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nanswer"}], "add_generation_prompt": False, "enable_thinking": False},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": " multi "}, {"type": "image"}]}], "add_generation_prompt": True},
]


# What jinja2 renders but we refuse, with a word of our message: a generator's
# text is its address (<generator object ... at 0x7f...>); str.format() and the
# filters of a Markup string that would escape their arguments are not
# implemented, nor %d of a string in a Markup's % (int() of it).
REFUSED = [
    ("{{ [1, 2]|map('string') }}", "generator"),
    ("{{ [1]|select ~ '' }}", "generator"),
    ("{{ messages|reverse }}", "generator"),
    ("{{ '%d'|safe % '3' }}", "Markup"),
    ("{{ ('{}'|safe).format('<') }}", "Markup"),
    ("{{ 'a'|safe|indent(2) }}", "Markup"),
]



def check_refused():
    lines = "".join(json.dumps({"template": t, "context": {"messages": [{"role": "user"}]}}) + "\n" for t, _ in REFUSED)
    p = subprocess.run([DRIVER], input=lines.encode(), capture_output=True)
    got = [json.loads(l) for l in p.stdout.decode("utf-8").split("\n") if l]
    bad = [t for (t, word), g in zip(REFUSED, got) if word not in g.get("error", "")]
    if len(got) != len(REFUSED) or bad:
        print("not ok - refused: %d of %d answered, not refused: %r" % (len(got), len(REFUSED), bad))
        return False
    print("ok - refused (%d cases jinja2 renders with an address, or Markup formatting we do not do)" % len(REFUSED))
    return True


def public_templates():
    """The public templates beyond the fixtures (tests/ref/templates): the
    manifest's and those of public.json."""
    here = os.path.join(ROOT, "tests", "ref", "templates")
    with open(os.path.join(here, "manifest.json"), encoding="utf-8") as f:
        files = [e["source"]["file"] for e in json.load(f)["templates"] if e["source"]["kind"] == "file"]
    with open(os.path.join(here, "public.json"), encoding="utf-8") as f:
        files += [e["file"] for e in json.load(f)["templates"]]
    for name in dict.fromkeys(files):  # once each: a manifest template may be listed in public.json too
        with open(os.path.join(here, name), encoding="utf-8", newline="") as f:
            yield name, f.read()


def check_public():
    feats = {"system": True, "tools": True, "tool_calls": True, "tool_results": True}
    # the driver reads contexts through jq, which rounds integers past 2**53
    # (ds-fmt keeps them: test_dsfmt_hf); such records are left out here
    recs = [r for r in conversations(feats) + conversations(dict(feats, args_expect="string"))
            if not re.search(r"\d{16}", json.dumps(r))]
    ok = True
    for name, src in public_templates():
        cases = []
        for r in recs:
            for agp in (False, True):
                ctx = {"messages": r["messages"], "add_generation_prompt": agp, "bos_token": "<s>",
                       "eos_token": "</s>", "date_string": "26 Jul 2024"}
                if r.get("tools"):
                    ctx["tools"] = r["tools"]
                cases.append((src, ctx))
        ok &= run_group("public " + name, cases)
    return ok


# Random expressions: filters, methods, tests and operators over these values,
# printed, tested for truth and looped over. Fresh each run (the seed is
# printed; TEMPLATE_JINJA_SEED replays it), TEMPLATE_JINJA_RANDOM of them.
R_LITS = ["'a'", "'<b>'", "\"it's\"", "'x y'", "''", "'Ab c'", "' pad '", "'1'", "'a,b'", "'é'", "1", "0", "-2", "2.5",
          "none", "true", "false", "[1, 2, 3]", "[]", "['b', 'a']", "{'a': 1, 'b': 2}", "{}",
          "[{'r': 'u', 'c': 'x'}, {'r': 'a', 'c': ''}]", "(1, 2)", "range(3)"]
R_VARS = ["m", "msgs", "t", "s", "n", "l", "d", "undef"]
R_CTX = {"m": {"role": "user", "content": "Hi <b> & 'q'"},
         "msgs": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": ""}],
         "t": [{"type": "function", "function": {"name": "f", "description": "d's"}}], "s": "Hello World", "n": 3,
         "l": [3, 1, 2], "d": {"k": "v", "z": [1]}}
R_FILTERS = ["list", "length", "first", "last", "join(',')", "join", "upper", "lower", "trim", "safe", "e", "string",
             "tojson", "reverse", "sort", "unique", "map('string')", "map(attribute='role')", "select", "reject",
             "selectattr('role')", "selectattr('role', 'equalto', 'user')", "rejectattr('content')", "default('D')",
             "default('D', true)", "int", "float", "abs", "count", "sum", "max", "min", "items", "dictsort", "batch(2)",
             "slice(2)", "capitalize", "title", "replace('a', '<')", "indent(2)", "center(9)", "wordcount",
             "truncate(5)", "round", "format(1)", "groupby('role')", "forceescape", "round(1)", "round(0, 'ceil')",
             "wordwrap(3)", "indent(2, true)", "tojson(indent=1)", "dictsort(reverse=true)", "batch(2, 'x')",
             "map('upper')", "join('-', attribute='r')", "sum(attribute='r')", "title", "int(7)", "float(0.5)",
             "default(none)", "attr('r')", "min(attribute='r')", "sort(reverse=true)", "unique(attribute='r')"]
R_METHODS = ["upper()", "lower()", "strip()", "split()", "split(',')", "startswith('a')", "replace('a', '<')",
             "join(['x', '<'])", "items()", "keys()", "values()", "get('a')", "get('role')", "title()", "count('a')",
             "find('b')", "endswith('>')", "rstrip('x')", "lstrip()", "center(7)", "ljust(4)", "rjust(4)", "zfill(4)",
             "splitlines()", "isdigit()", "isalpha()", "islower()", "swapcase()", "casefold()", "partition(' ')",
             "rsplit(',', 1)", "index('a')", "rfind('a')", "capitalize()", "format(1)", "pop()", "copy()", "sort()"]
R_TESTS = ["defined", "none", "string", "number", "sequence", "mapping", "iterable", "odd", "even", "true", "false",
           "in([1, 2])", "equalto(1)"]
R_OPS = ["+", "~", "*", "%", "==", "!=", "in", "not in", "and", "or", "<", "-", "//", "/", "**", ">=", "<="]


def random_expr(rng, depth=0):
    k = rng.random()
    if depth > 2 or k < 0.25:
        if rng.random() < 0.6:
            return rng.choice(R_LITS)
        return rng.choice(R_VARS) + rng.choice(["", "", ".role", ".content", "['content']", "[0]", "[1:]", ".function"])
    sub = lambda: random_expr(rng, depth + 1)  # noqa: E731
    if k < 0.55:
        return "(%s | %s)" % (sub(), rng.choice(R_FILTERS))
    if k < 0.65:
        return "(%s).%s" % (sub(), rng.choice(R_METHODS))
    if k < 0.85:
        return "(%s %s %s)" % (sub(), rng.choice(R_OPS), sub())
    if k < 0.92:
        return "(%s is %s%s)" % (sub(), rng.choice(["", "not "]), rng.choice(R_TESTS))
    return "(%s if %s else %s)" % (sub(), sub(), sub())


def random_stmt(rng):
    e, k = random_expr(rng), rng.random()
    if k < 0.6:
        return "{{ %s }}" % e
    if k < 0.8:
        return "{%% if %s %%}T{%% else %%}F{%% endif %%}" % e
    return "{%% for x in %s %%}{{ x }},{%% else %%}E{%% endfor %%}" % e


def check_random():
    """Our text must be jinja2's where both render: a difference is a failure.
    Where only one side fails it is counted, not failed: jinja2 renders what
    we refuse (a generator printed, striptags, a generator over a number
    jinja2 never reads ...), and now and then fails a corner we render (an
    order between odd types): both are loud, neither is a wrong text."""
    seed = int(os.environ.get("TEMPLATE_JINJA_SEED", os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000)))
    n = int(os.environ.get("TEMPLATE_JINJA_RANDOM", "1500"))
    print("# random expressions: seed %d (TEMPLATE_JINJA_SEED=%d replays it)" % (seed, seed), flush=True)
    rng = random.Random(seed)
    cases = [(random_stmt(rng) + "|" + random_stmt(rng), R_CTX) for _ in range(n)]
    lines = "".join(json.dumps({"template": t, "context": c}) + "\n" for t, c in cases)
    p = subprocess.run([DRIVER], input=lines.encode(), capture_output=True)
    got = [json.loads(x) for x in p.stdout.decode("utf-8").split("\n") if x]
    if p.returncode != 0 or len(got) != n:
        print("not ok - random: the driver answered %d of %d (%s)" % (len(got), n, p.stderr.decode(errors="replace")[-200:]))
        return False
    bad, refused, rendered = [], 0, 0
    for (t, c), g in zip(cases, got):
        kind, want = python_render(t, copy.deepcopy(c))  # a filter may change its input (indent of a list)
        if kind == "error" and "error" not in g:
            rendered += 1
        elif kind == "ok" and "error" in g:
            refused += 1
        elif kind == "ok" and g["text"] != want:
            bad.append("%s:\n      ours  %r\n      jinja %r" % (t, g["text"][:200], want[:200]))
    if bad:
        print("not ok - random: %d of %d expressions differ (seed %d)" % (len(bad), n, seed))
        for b in bad[:SHOW]:
            print("    " + b)
        return False
    print("ok - random (%d expressions equal or failing on both sides; %d that jinja2 renders we refuse, %d the other way)"
          % (n - refused - rendered, refused, rendered))
    return True


# Strings the int and float filters read as Python's int(s, base) and
# float(s) do (and jinja2's fall-backs): signs, base prefixes, underscores,
# exponents, inf and nan, Unicode white space, overflow. Fresh each run.
N_PARTS = ["0", "1", "7", "9", "_", "-", "+", ".", "e", "E", "x", "X", "o", "b", "B", "a", "f", " ", "\t", "\u3000",
           "\u00a0", "inf", "nan", "Infinity", "0x", "0o", "0b", "12", "00", "1e5", "1e400", "99999999999999999999"]
N_FILTERS = ["int", "int(base=16)", "int(0, 0)", "int(-1, 2)", "int(0, 8)", "float", "float(-1.5)"]


def check_numbers():
    """Our text must be jinja2's; we may refuse only integers past 64 bits."""
    seed = int(os.environ.get("TEMPLATE_JINJA_SEED", os.environ.get("LORAPIPE_SEED", int(time.time()) % 100000)))
    rng = random.Random(seed)
    cases = []
    for _ in range(3000):
        s = "".join(rng.choice(N_PARTS) for _ in range(rng.randint(0, 5)))
        cases.append(("{{ s|%s }}" % rng.choice(N_FILTERS), {"s": s}))
    for _ in range(2000):  # round: Python's correctly rounded round(), and ceil/floor over 10**precision
        k = rng.random()
        s = (rng.choice([2.675, 0.5, 1.5, 2.5, -0.5, 0.125, 1e22, 123.456, -0.0, 5.0, 15.0, 1250, -1250, 7, True])
             if k < 0.3 else round(rng.uniform(-1000, 1000), rng.randint(0, 6)) if k < 0.6
             else rng.randint(-10 ** 6, 10 ** 6) if k < 0.8 else rng.uniform(-1, 1) * 10 ** rng.randint(-10, 20))
        cases.append(("{{ s|round(%d%s) }}" % (rng.choice([0, 1, 2, 3, 5, 10, 16, 17, 20, 30, -1, -2, -5, -20, 400]),
                                              rng.choice(["", ", 'common'", ", 'ceil'", ", 'floor'"])), {"s": s}))
    lines = "".join(json.dumps({"template": t, "context": c}) + "\n" for t, c in cases)
    p = subprocess.run([DRIVER], input=lines.encode(), capture_output=True)
    got = [json.loads(x) for x in p.stdout.decode("utf-8").split("\n") if x]
    bad = []
    for (t, c), g in zip(cases, got):
        kind, want = python_render(t, c)
        if kind == "ok" and "error" in g and "too large" not in g["error"]:
            bad.append("%s s=%r: jinja %r, ours %s" % (t, c["s"], want, g["error"]))
        elif kind == "ok" and "error" not in g and g["text"] != want:
            bad.append("%s s=%r: jinja %r, ours %r" % (t, c["s"], want, g["text"]))
        elif kind != "ok" and "error" not in g:
            bad.append("%s s=%r: jinja fails (%s), ours %r" % (t, c["s"], want, g["text"]))
    if len(got) != len(cases) or bad:
        print("not ok - numbers: %d of %d differ (seed %d)" % (len(bad), len(cases), seed))
        for b in bad[:SHOW]:
            print("    " + b)
        return False
    print("ok - numbers (%d strings through int and float, numbers through round, seed %d)" % (len(cases), seed))
    return True


def python_render(src, ctx):
    try:
        return ("ok", compile_template(src).render(**ctx))
    except Exception as e:  # both sides must fail; messages differ
        return ("error", "%s: %s" % (type(e).__name__, e))


def fixture_templates():
    out = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*", "tokenizer_config.json"))):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        t = cfg.get("chat_template")
        if isinstance(t, list):
            t = next((x["template"] for x in t if x.get("name") == "default"), None)
        if isinstance(t, str):
            out.append((os.path.basename(os.path.dirname(path)), t, cfg))
    out.append(("smollm2_chatml", CHATML, {}))
    return out


def check_runs(res):
    runs = res.get("runs", [])
    at = 0
    for r in runs:
        if r[0] != at or r[1] <= r[0]:
            return "runs do not tile the output at %d: %r" % (at, r)
        at = r[1]
    if at != len(res["text"].encode("utf-8")):
        return "runs end at %d, output is %d bytes" % (at, len(res["text"].encode("utf-8")))
    return None


def run_group(name, cases):
    lines = "".join(json.dumps({"template": t, "context": c}, ensure_ascii=False) + "\n" for t, c in cases)
    p = subprocess.run([DRIVER], input=lines.encode("utf-8"), capture_output=True)
    if p.returncode != 0:
        print("not ok - %s: driver failed: %s" % (name, p.stderr.decode(errors="replace").strip()))
        return False
    got = [json.loads(l) for l in p.stdout.decode("utf-8").split("\n") if l]  # not splitlines: U+2028 is raw in the JSON
    bad = []
    for (t, c), g in zip(cases, got):
        kind, want = python_render(t, c)
        if kind == "error":
            if "error" not in g:
                bad.append("%r: jinja2 fails (%s), we rendered %r" % (t[:60], want, g.get("text", "")[:200]))
            continue
        if "error" in g:
            bad.append("%r: we fail (%s), jinja2 renders %r" % (t[:60], g["error"], want[:200]))
        elif g["text"] != want:
            bad.append("%r:\n      ours  %r\n      jinja %r" % (t[:60], g["text"][:400], want[:400]))
        elif check_runs(g):
            bad.append("%r: %s" % (t[:60], check_runs(g)))
    nerr = sum(1 for t, c in cases if python_render(t, c)[0] == "error")
    if len(got) != len(cases):
        bad.append("driver answered %d of %d cases" % (len(got), len(cases)))
    if bad:
        print("not ok - %s: %d of %d cases differ" % (name, len(bad), len(cases)))
        for b in bad[:SHOW]:
            print("    " + b)
        return False
    print("ok - %s (%d cases, %d of them errors on both sides)" % (name, len(cases), nerr))
    return True


GEN_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}{% if m.role == 'assistant' %}"
                "{% generation %}{{ m.content | trim }}{{ '<|im_end|>' }}{% endgeneration %}{% else %}"
                "{{ m.content }}{{ '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}")


def check_generation():
    """{% generation %} ranges against transformers' AssistantTracker (its
    character offsets turned into byte offsets)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except Exception:
        print("skip - generation: transformers is not installed")
        return True
    msgs = [{"role": "user", "content": "Hé"}, {"role": "assistant", "content": " Yø there "},
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "done"}]
    t = _compile_jinja_template(GEN_TEMPLATE)
    blocks, idx = [], []
    with t.environment.activate_tracker(blocks, idx):
        for b in t.generate(messages=msgs):
            blocks.append(b)
    text = "".join(blocks)
    want = [[len(text[:a].encode()), len(text[:b].encode())] for a, b in idx]
    p = subprocess.run([DRIVER], input=(json.dumps({"template": GEN_TEMPLATE, "context": {"messages": msgs}}) + "\n").encode(),
                       capture_output=True)
    got = json.loads(p.stdout) if p.returncode == 0 and p.stdout else {"error": p.stderr.decode(errors="replace")}
    if got.get("text") != text or got.get("gen") != want:
        print("not ok - generation: ours %r %r, transformers %r %r" % (got.get("text"), got.get("gen"), text, want))
        return False
    print("ok - generation (%d ranges)" % len(want))
    return True


def main():
    if not os.path.exists(DRIVER):
        print("not ok - template_driver: %s is missing (make build/ref/template_driver)" % DRIVER)
        return 1
    ok = run_group("engine", CASES)
    ok &= check_refused()
    ok &= check_generation()
    ok &= check_public()
    ok &= check_random()
    ok &= check_numbers()
    for name, src, cfg in fixture_templates():
        cases = []
        for conv in CONVS:
            ctx = dict(conv)
            ctx.setdefault("bos_token", cfg.get("bos_token") if isinstance(cfg.get("bos_token"), str) else "<s>")
            ctx.setdefault("eos_token", cfg.get("eos_token") if isinstance(cfg.get("eos_token"), str) else "</s>")
            ctx["date_string"] = "26 Jul 2024"  # strftime_now would differ by the clock
            cases.append((src, ctx))
        ok &= run_group("fixture " + name, cases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
