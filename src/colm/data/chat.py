"""`--use-chat-template`: prompt/response rows as one user turn and one assistant turn, so an
instruct model trains (and is evaluated) in its own chat format rather than colm's plain
`--template`. The data layer then renders them like any chat data: the tokenizer's chat
template, with everything up to the assistant's answer masked out of the loss.
"""
from __future__ import annotations

from typing import Any

from colm.data.errors import DataError
from colm.data.loading import MESSAGES, PROMPT, RESPONSE


def as_chat(raw: Any) -> Any:
    """A prompt/response mixture (from load_mixture) as `messages` rows; chat rows are kept."""
    if MESSAGES in raw.column_names:
        return raw

    def to_messages(batch: dict[str, list]) -> dict[str, list]:
        return {MESSAGES: [
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            for prompt, response in zip(batch[PROMPT], batch[RESPONSE])
        ]}

    return raw.map(to_messages, batched=True, remove_columns=[PROMPT, RESPONSE])


def check_chat_template(tokenizer: Any, option: str = "--use-chat-template") -> None:
    """DataError naming `option` when the tokenizer has no chat template to render with."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{option}: the model's tokenizer has no chat template; train with the plain "
            "--template format instead (leave the option out), or use an instruct model's tokenizer"
        )
