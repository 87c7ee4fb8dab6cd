"""What a checkpoint says about prompting it: the sampling defaults of its generation_config.json
and the chat template of its tokenizer (tokenizer_config.json's `chat_template`, or a
chat_template.jinja file beside it), rendered the way transformers' apply_chat_template does:
a sandboxed Jinja environment, `messages`, `add_generation_prompt` and the special tokens.
"""

from pathlib import Path

from moeweave.formats.hf_checkpoint import read_json
from moeweave.formats.paths import confined

# generate()'s own defaults, where the checkpoint says nothing.
SAMPLING_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.7, "top_k": 40, "top_p": 0.95}


def _json(path: Path, name: str) -> dict:
    """path/name's JSON object, or {} when the checkpoint has no such file."""
    return read_json(path, name) if (path / name).is_file() else {}


def sampling_defaults(path: Path) -> dict:
    """{max_new_tokens, temperature, top_k, top_p}: generation_config.json's values where it sets
    them (do_sample false means greedy, temperature 0), SAMPLING_DEFAULTS elsewhere."""
    config = _json(path, "generation_config.json")
    defaults = dict(SAMPLING_DEFAULTS)
    for name in SAMPLING_DEFAULTS:
        if config.get(name) is not None:
            defaults[name] = config[name]
    if config.get("do_sample") is False:
        defaults["temperature"] = 0.0
    return defaults


def chat_prompt(path: Path, text: str) -> str:
    """`text` as one user message in the checkpoint's chat template, ready for the assistant's
    reply; ValueError when the checkpoint has no template."""
    return render_chat(path, [{"role": "user", "content": text}])


def render_chat(path: Path, messages: list[dict]) -> str:
    """`messages` ({"role", "content"} each) in the checkpoint's chat template, ready for the
    assistant's reply; ValueError when the checkpoint has no template."""
    tokenizer_config = _json(path, "tokenizer_config.json")
    template = tokenizer_config.get("chat_template")
    if (path / "chat_template.jinja").is_file():
        template = confined(path, "chat_template.jinja", str(path)).read_text(encoding="utf-8")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise ValueError(
            f"{path}: chat needs a chat template (tokenizer_config.json or chat_template.jinja), and this model has none"
        )
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.globals["raise_exception"] = raise_exception
    special = {  # bos_token, eos_token, ...: a string, or an AddedToken as {"content": ...}
        key: value if isinstance(value, str) else value.get("content")
        for key, value in tokenizer_config.items()
        if key.endswith("_token") and isinstance(value, (str, dict))
    }
    try:
        return environment.from_string(template).render(
            messages=messages, add_generation_prompt=True, **special
        )
    except TemplateError as error:
        raise ValueError(f"{path}: the chat template failed: {error}") from None
