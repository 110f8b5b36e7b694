"""How large a message RabbitMQ takes: the facts and pure decisions the publisher needs.

RabbitMQ refuses a message whose body is larger than its `max_message_size`
setting by closing the channel with 406 PRECONDITION_FAILED ("message size N
is larger than configured max size M").  That setting is not readable by a
client: no AMQP property carries it, and the management API of RabbitMQ 3.x
does not show the broker's environment (newer versions show it to
administrators only).  So the publisher takes the limit, in this order, from

1. the operator (`--max-message-size` / PERO_MAX_MESSAGE_SIZE), when given;
2. the broker itself, once it refused a message (the close reason names the limit);
3. the broker's version (management API /api/overview) and that version's
   default: 128 MiB from 3.8 to 3.13, 16 MiB from 4.0;
4. otherwise RabbitMQ's hard maximum (512 MiB), relying on 2. for the rest.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1024 * 1024
HARD_MAXIMUM = 512 * MIB            # the largest max_message_size RabbitMQ accepts
_VERSION = re.compile(r"^\s*(\d+)\.(\d+)")
_REFUSAL = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")


def default_max_message_size(version: str) -> int | None:
    """The default `max_message_size` of a RabbitMQ version ('3.10.8' -> 128 MiB), None if unknown (pure)."""
    match = _VERSION.match(version or "")
    if not match:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    if major >= 4:
        return 16 * MIB
    if (major, minor) >= (3, 8):
        return 128 * MIB
    return None                      # before 3.8 there was no such setting


def parse_size_refusal(reply_text: str) -> tuple[int, int] | None:
    """(message size, limit) from the reason RabbitMQ gives when it closes a channel for a too large
    message, None for any other reason (pure)."""
    match = _REFUSAL.search(reply_text or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB,
          "g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB}


def parse_byte_size(text: str) -> int:
    """'134217728', '128MiB', '128M', '16 mib' -> bytes (units are binary, as RabbitMQ's); ValueError (pure)."""
    match = _SIZE.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with KiB, MiB or GiB)")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size <= 0:
        raise ValueError(f"{text!r}: the size must be positive")
    return size


def format_size(size: int) -> str:
    """'134,217,728 bytes (128 MiB)': exact for the operator, readable at a glance (pure)."""
    if size >= MIB:
        readable = f"{size / MIB:.0f} MiB" if size % MIB == 0 else f"{size / MIB:.1f} MiB"
    else:
        readable = f"{size / 1024:.1f} KiB"
    return f"{size:,} bytes ({readable})"


@dataclass
class SizeLimit:
    """The limit in force and where it came from (shown to the operator with every refusal)."""
    limit: int
    source: str

    def too_large(self, size: int) -> bool:
        return size > self.limit

    def learn(self, limit: int, source: str) -> None:
        self.limit, self.source = limit, source


def choose_limit(explicit: int | None, broker_version: str | None) -> SizeLimit:
    """The limit to check files against before sending them (pure); see the module docstring."""
    if explicit is not None:
        return SizeLimit(explicit, "--max-message-size")
    default = default_max_message_size(broker_version or "")
    if default is not None:
        return SizeLimit(default, f"the default of RabbitMQ {broker_version} (version read from the management "
                                  "API; set --max-message-size if the broker is configured otherwise)")
    return SizeLimit(HARD_MAXIMUM, "RabbitMQ's largest possible limit (the broker's version is unknown)")


__all__ = ["HARD_MAXIMUM", "SizeLimit", "choose_limit", "default_max_message_size", "format_size",
           "parse_byte_size", "parse_size_refusal"]
