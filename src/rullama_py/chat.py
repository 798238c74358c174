"""Chat prompts for Gemma 3 and Gemma 4, as text and as token ids, matching what llama.cpp builds.

    chat = chat_template_for(tokenizer)          # Gemma4Chat if the vocab has <|turn>, else Gemma3Chat
    ids = chat.render(messages)                  # [BOS, ...] ending with the model-turn header
    text = chat.render_text(messages)            # the same prompt as text ("<bos><start_of_turn>user\\n...")
    stop = chat.stop_ids                         # generation ends on any of these

Messages are dicts ``{"role": ..., "content": ...}``. Roles: ``system`` (``developer`` is treated the same),
``user``, ``assistant`` (``model`` is accepted as an alias). Content is a string or a list of parts:
``{"type": "text", "text": ...}``, ``{"type": "image"}``, ``{"type": "audio"}`` (Gemma 4) and, for
multimodal prompts, ``{"type": "image", "n_tokens": N}``: the placeholder is then expanded into the soft-token
block the vision/audio tower fills, ``<|image>`` + ``<|image|>`` x N + ``<image|>`` (audio likewise).

The text follows the models' official Jinja templates (Gemma 3's tokenizer_config template; Gemma 4's
template as shipped with llama.cpp); tests render those templates with jinja2 and compare. Details that are
llama.cpp's rather than the template's:

* A final assistant message is continued, not closed (llama-server's assistant prefill): the conversation
  before it is rendered without a generation prompt, then the model-turn header and the message's raw text
  follow, with no closing tag. For Gemma 4 llama.cpp opens the turn with a thought channel,
  ``<|turn>model\\n<|channel>thought\\n{reasoning}<channel|>{content}``.
* Token ids are built as llama.cpp tokenizes the rendered text (one BOS, special tokens as single ids), except
  that message text is tokenized *without* special-token parsing, so a user typing ``<end_of_turn>`` cannot
  forge a turn boundary. ``parse_special_in_content=True`` gives llama.cpp's behaviour (which parses them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .tokenizer import Tokenizer

__all__ = ["ChatTemplate", "Gemma3Chat", "Gemma4Chat", "chat_template_for", "ChatError"]


class ChatError(ValueError):
    """The conversation cannot be rendered with this template."""


class _Special(str):
    """A piece of the prompt that is one special token (rendered as its text, tokenized as its id)."""

    __slots__ = ()


class _Bos(_Special):
    """The prompt's BOS: the vocab's BOS id (whatever its text), rendered as the template's ``<bos>``."""

    __slots__ = ()


def _role(message: Mapping) -> str:
    role = message.get("role")
    if role == "model":
        return "assistant"
    if role == "developer":
        return "system"
    if role not in ("system", "user", "assistant"):
        raise ChatError(f"unsupported role {role!r} (system, developer, user, assistant, model)")
    return role


def _parts(content) -> list:
    """Content as a list of typed parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Sequence):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append({"type": "text", "text": p})
            elif isinstance(p, Mapping) and "type" in p:
                parts.append(p)
            else:
                raise ChatError(f"content part {p!r} has no type")
        return parts
    raise ChatError(f"content must be a string or a list of parts, not {type(content).__name__}")


def _plain_text(content) -> str:
    """All text of a content value, for places where the templates only take text (system prompts,
    continuations)."""
    return "".join(p.get("text", "") for p in _parts(content) if p["type"] == "text")


def _n_tokens(part: Mapping) -> int | None:
    n = part.get("n_tokens")
    if n is None:
        return None
    n = int(n)
    if n < 0:
        raise ChatError(f"n_tokens must be >= 0, got {n}")
    return n


class ChatTemplate:
    """Shared machinery: subclasses produce a list of str / _Special pieces; this class turns it into text
    or token ids."""

    bos_text = "<bos>"

    def __init__(self, tokenizer: Tokenizer, parse_special_in_content: bool = False):
        self.tok = tokenizer
        self.parse_special_in_content = parse_special_in_content

    # subclasses implement
    def _pieces(self, messages, add_generation_prompt: bool, **options) -> list:
        raise NotImplementedError

    @property
    def stop_ids(self) -> frozenset:
        raise NotImplementedError

    def _id(self, text: str) -> int:
        tid = self.tok.token_to_id(text)
        if tid is None:
            raise ChatError(f"the vocabulary has no {text!r} token, which this chat format needs")
        return tid

    def _prepare(self, messages, continue_final_message):
        messages = list(messages)
        if not messages:
            raise ChatError("no messages")
        roles = [_role(m) for m in messages]
        if continue_final_message is None:
            continue_final_message = roles[-1] == "assistant"
        if continue_final_message:
            if roles[-1] != "assistant":
                raise ChatError("continue_final_message needs an assistant message last")
            if len(roles) >= 2 and roles[-2] == "assistant":
                raise ChatError("cannot continue after two assistant messages in a row")
        return messages, roles, bool(continue_final_message)

    def render_text(self, messages, add_generation_prompt: bool = True, continue_final_message: bool | None = None,
                    **options) -> str:
        """The prompt as text, BOS text included. ``continue_final_message`` (default: when the last message
        is from the assistant) leaves that message's turn open for the model to continue."""
        return "".join(self._pieces(messages, add_generation_prompt, continue_final_message, **options))

    def render(self, messages, add_generation_prompt: bool = True, continue_final_message: bool | None = None,
               **options) -> list[int]:
        """The prompt as token ids: one BOS, special tokens as their ids, text tokenized between them."""
        out: list[int] = []
        text: list[str] = []
        parse = self.parse_special_in_content

        def flush():
            if text:
                out.extend(self.tok.encode("".join(text), add_bos=False, add_eos=False, parse_special=parse))
                text.clear()

        for piece in self._pieces(messages, add_generation_prompt, continue_final_message, **options):
            if isinstance(piece, _Bos):
                flush()
                if self.tok.bos_id is None:
                    raise ChatError("the vocabulary has no BOS token")
                out.append(self.tok.bos_id)
            elif isinstance(piece, _Special):
                flush()
                out.append(self._id(piece))
            elif piece:
                text.append(piece)
        flush()
        return out


class Gemma3Chat(ChatTemplate):
    """``<bos><start_of_turn>user\\n{system}\\n\\n{text}<end_of_turn>\\n<start_of_turn>model\\n``.

    As Gemma 3's template does: a system message is not a turn of its own but is prepended (untrimmed, with a
    blank line) to the first user message; message text is trimmed; roles must alternate user/assistant;
    an image part becomes ``<start_of_image>``."""

    start, end = "<start_of_turn>", "<end_of_turn>"

    @property
    def stop_ids(self) -> frozenset:
        ids = {self.tok.eos_id, self.tok.token_to_id(self.end)}
        return frozenset(i for i in ids if i is not None)

    def _pieces(self, messages, add_generation_prompt, continue_final_message=None, **options) -> list:
        if options:
            raise ChatError(f"unsupported options for Gemma 3: {sorted(options)}")
        messages, roles, cont = self._prepare(messages, continue_final_message)
        tail = None
        if cont:
            tail, messages, roles = messages[-1], messages[:-1], roles[:-1]
            add_generation_prompt = True  # the continued turn opens with the generation prompt
        out = [_Bos(self.bos_text)]
        prefix = ""
        if roles and roles[0] == "system":
            content = messages[0].get("content")
            # The template takes the whole string, or only the first part's text of a list (untrimmed).
            first = content if isinstance(content, str) else (_parts(content)[0].get("text", "") if content else "")
            prefix = first + "\n\n"
            messages, roles = messages[1:], roles[1:]
        for i, (m, role) in enumerate(zip(messages, roles)):
            if (role == "user") != (i % 2 == 0):
                raise ChatError("Conversation roles must alternate user/assistant/user/assistant/...")
            out += [_Special(self.start), ("model" if role == "assistant" else role) + "\n"]
            if i == 0:
                out.append(prefix)
            for part in _parts(m.get("content")):
                if part["type"] == "image":
                    if _n_tokens(part) is not None:
                        raise ChatError("Gemma 3 image soft-token expansion is not supported here")
                    out.append(_Special("<start_of_image>"))
                elif part["type"] == "text":
                    out.append(part.get("text", "").strip())
            out += [_Special(self.end), "\n"]
        if add_generation_prompt:
            out += [_Special(self.start), "model\n"]
        if tail is not None:
            out.append(_plain_text(tail.get("content")))
        return out


class Gemma4Chat(ChatTemplate):
    """``<bos><|turn>system\\n{system}<turn|>\\n<|turn>user\\n{text}<turn|>\\n<|turn>model\\n``.

    Follows Gemma 4's template: a system turn only when there is a system/developer message or thinking is
    enabled (``enable_thinking=True`` puts ``<|think|>\\n`` first in it); message text trimmed; earlier model
    turns have ``<|channel>...<channel|>`` thought blocks removed; a model message right after another one
    continues the same turn (no second header); image/audio/video parts become ``<|image|>``/``<|audio|>``/
    ``<|video|>``, and image/audio parts with ``n_tokens`` expand to their soft-token blocks.

    ``empty_thought_channel``: the larger Gemma 4 models' template (26B/31B) follows the generation prompt
    with an empty thought block, ``<|channel>thought\\n<channel|>``, when thinking is off; E2B/E4B do not."""

    turn_open, turn_close = "<|turn>", "<turn|>"
    channel_open, channel_close = "<|channel>", "<channel|>"
    _MEDIA = {  # part type -> (template placeholder, block start, soft token, block end)
        "image": ("<|image|>", "<|image>", "<|image|>", "<image|>"),
        "audio": ("<|audio|>", "<|audio>", "<|audio|>", "<audio|>"),
        "video": ("<|video|>", None, None, None),
    }

    def __init__(self, tokenizer: Tokenizer, parse_special_in_content: bool = False,
                 empty_thought_channel: bool = False):
        super().__init__(tokenizer, parse_special_in_content)
        self.empty_thought_channel = empty_thought_channel

    @property
    def stop_ids(self) -> frozenset:
        ids = {self.tok.token_to_id(self.turn_close), self.tok.eos_id, self.tok.token_to_id("<eos>")}
        return frozenset(i for i in ids if i is not None)

    @classmethod
    def strip_thinking(cls, text: str) -> str:
        """Remove every ``<|channel>...<channel|>`` block and trim, as the template does for model turns."""
        out = []
        for part in text.split(cls.channel_close):
            out.append(part.split(cls.channel_open)[0] if cls.channel_open in part else part)
        return "".join(out).strip()

    def _media(self, part: Mapping) -> list:
        placeholder, start, soft, end = self._MEDIA[part["type"]]
        n = _n_tokens(part)
        if n is None:
            return [_Special(placeholder)]
        if start is None:
            raise ChatError(f"{part['type']} soft-token expansion is not supported")
        return [_Special(start), *[_Special(soft)] * n, _Special(end)]

    def _pieces(self, messages, add_generation_prompt, continue_final_message=None, enable_thinking=False,
                **options) -> list:
        if options:
            raise ChatError(f"unsupported options for Gemma 4: {sorted(options)}")
        messages, roles, cont = self._prepare(messages, continue_final_message)
        tail = None
        if cont:
            tail, messages, roles = messages[-1], messages[:-1], roles[:-1]
            add_generation_prompt = False
        T, C = _Special(self.turn_open), _Special(self.turn_close)
        out = [_Bos(self.bos_text)]
        if enable_thinking or (roles and roles[0] == "system"):
            out += [T, "system\n"]
            if enable_thinking:
                out += [_Special("<|think|>"), "\n"]
            if roles and roles[0] == "system":
                out.append(_plain_text(messages[0].get("content")).strip())
                messages, roles = messages[1:], roles[1:]
            out += [C, "\n"]
        for i, (m, role) in enumerate(zip(messages, roles)):
            if role == "system":
                raise ChatError("a system message is only allowed first")
            name = "model" if role == "assistant" else role
            # A model message right after another model message continues that turn (no new header).
            if not (role == "assistant" and i > 0 and roles[i - 1] == "assistant"):
                out += [T, name + "\n"]
            for part in _parts(m.get("content")):
                kind = part["type"]
                if kind == "text":
                    text = part.get("text", "")
                    out.append(self.strip_thinking(text) if role == "assistant" else text.strip())
                elif kind in self._MEDIA:
                    out += self._media(part)
            out += [C, "\n"]
        if add_generation_prompt:
            out += [T, "model\n"]
            if self.empty_thought_channel and not enable_thinking:
                out += [_Special(self.channel_open), "thought\n", _Special(self.channel_close)]
        if tail is not None:
            # llama.cpp continues a model turn through its thought channel: the header when the prompt so far
            # ends with a closed turn, then "<|channel>thought\n{reasoning}<channel|>{content}".
            reasoning = tail.get("reasoning_content") or tail.get("reasoning") or ""
            content = _plain_text(tail.get("content"))
            if len(out) >= 2 and isinstance(out[-2], _Special) and out[-2] == C and out[-1] == "\n":
                out += [T, "model\n"]
            out += [_Special(self.channel_open), "thought\n" + reasoning]
            if content or not reasoning:
                out += [_Special(self.channel_close), content]
        return out


def chat_template_for(tokenizer: Tokenizer, **kwargs) -> ChatTemplate:
    """The chat format that fits the vocabulary: Gemma 4 when it has ``<|turn>``, else Gemma 3."""
    if tokenizer.token_to_id("<|turn>") is not None:
        return Gemma4Chat(tokenizer, **kwargs)
    if tokenizer.token_to_id("<start_of_turn>") is not None:
        return Gemma3Chat(tokenizer, **kwargs)
    raise ChatError("the vocabulary has neither <|turn> (Gemma 4) nor <start_of_turn> (Gemma 3)")
