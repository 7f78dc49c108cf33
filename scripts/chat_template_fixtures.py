#!/usr/bin/env python3
"""Render the chat templates under tests/fixtures/chat_templates/ with transformers' own renderer
and write tests/fixtures/chat_templates/expected.json, which `mpo`'s unit test
`model::tokenizer::tests::chat_templates_render_like_transformers` compares byte for byte.

Run with the venv of scripts/setup_torch.sh (transformers 5.24, jinja2 3.1.6):

    PY=$(bash scripts/setup_torch.sh | tail -1)
    $PY scripts/chat_template_fixtures.py

Templates (the `chat_template` string of each model's tokenizer_config.json, saved verbatim):
  SmolLM2-135M-Instruct.jinja   HuggingFaceTB/SmolLM2-135M-Instruct
  Qwen2.5-0.5B-Instruct.jinja   Qwen/Qwen2.5-0.5B-Instruct (the same template for every Qwen2.5 instruct size)
  Llama-3.2-3B-Instruct.jinja   meta-llama/Llama-3.2-3B-Instruct, as llama.cpp vendors it in
                                models/templates/ (the same template as Llama-3.2-1B-Instruct)

The date: Llama 3.2's template prints `strftime_now("%d %b %Y")`, which transformers takes from
`datetime.now()`. To keep the fixture independent of the day it is made, this script replaces the
`datetime` that transformers' `strftime_now` reads with one frozen at FIXED_NOW, and writes that
instant to expected.json (`now`, and `now_unix` reading it as UTC); the Rust test renders with
the same instant. No `date_string` is passed, so the `strftime_now` path itself is compared.
"""

import calendar
import datetime as _dt
import json
import pathlib
import sys

import transformers
from transformers.utils import chat_template_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIR = ROOT / "tests" / "fixtures" / "chat_templates"

# A day with a one-digit day of the month, so `%d` zero-padding is compared too.
FIXED_NOW = _dt.datetime(2025, 3, 9, 14, 5, 30)


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW if tz is None else FIXED_NOW.replace(tzinfo=_dt.timezone.utc).astimezone(tz)


# The special tokens of each model's tokenizer_config.json that mpo passes (`bos_token`,
# `eos_token`; None = unset, which transformers leaves out of the template's variables).
TEMPLATES = {
    "SmolLM2-135M-Instruct": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
    "Qwen2.5-0.5B-Instruct": {"bos_token": None, "eos_token": "<|im_end|>"},
    "Llama-3.2-3B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
}

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
USER = {"role": "user", "content": "What is 2+2?"}
ASSISTANT = {"role": "assistant", "content": "  4, of course.\n"}
USER2 = {"role": "user", "content": "And in base 3?  Ünïcödé ✓ \"quotes\" <tags> & 'apostrophes'\n"}

CONVERSATIONS = {
    "user": [USER],
    "system_user": [SYSTEM, USER],
    "system_user_assistant_user": [SYSTEM, USER, ASSISTANT, USER2],
    "user_assistant_user": [USER, ASSISTANT, USER2],
}


def render(template: str, messages, add_generation_prompt: bool, tokens: dict) -> str:
    kwargs = {k: v for k, v in tokens.items() if v is not None}
    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    return rendered[0]


def main() -> int:
    chat_template_utils.datetime = _FrozenDatetime
    cases = []
    for name, tokens in TEMPLATES.items():
        template = (DIR / f"{name}.jinja").read_text(encoding="utf-8")
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                cases.append(
                    {
                        "template": name,
                        "conversation": conv_name,
                        "messages": messages,
                        "add_generation_prompt": agp,
                        "bos_token": tokens["bos_token"],
                        "eos_token": tokens["eos_token"],
                        "expected": render(template, messages, agp, tokens),
                    }
                )
    out = {
        "generated_by": "scripts/chat_template_fixtures.py",
        "transformers": transformers.__version__,
        "jinja2": __import__("jinja2").__version__,
        "now": FIXED_NOW.isoformat(),
        "now_unix": calendar.timegm(FIXED_NOW.timetuple()),
        "cases": cases,
    }
    path = DIR / "expected.json"
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
