"""The wire: every message type, its msgpack codec, validation.

Depends on nothing else in llmspell but ``_exceptions``. Internal: users never
import it; ``docs/messages.md`` documents the schema.
"""

from .codec import Message, check_data, decode, encode, registry
from .types import *  # noqa: F403
from .types import KINDS, PRIORITIES, PRIORITY_NAMES, STATUSES, TERMINAL  # noqa: F401

__all__ = ["Message", "check_data", "decode", "encode", "registry"]
