"""Neutral types shared by tasks, engines and the loop; this module imports nothing from `rsa`.

A chat message is `{"role": ..., "content": ...}`; a conversation is the list of messages sent to an engine.
"""

from __future__ import annotations

Message = dict[str, str]
Conversation = list[Message]

__all__ = ["Conversation", "Message"]
