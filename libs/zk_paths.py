"""ZooKeeper layout and status words (docs/protocol.md §4).

Every part of the suite builds node paths through these helpers so that the
layout lives in exactly one place.  The layout is a wire-compatibility fact:
tools of the original system read and write the same nodes.
"""
from __future__ import annotations

ROOT = "/pero"

WORKER_STATUS_ROOT = f"{ROOT}/worker/status"
WORKER_CONFIG_ROOT = f"{ROOT}/worker/config"
QUEUE_ROOT = f"{ROOT}/queue"

# Additive: where watchdog instances elect the active one (kazoo Election recipe).
WATCHDOG_ELECTION = f"{ROOT}/watchdog/election"

MQ_SERVERS = f"{WORKER_CONFIG_ROOT}/mq_servers"
MQ_MONITORING_SERVERS = f"{WORKER_CONFIG_ROOT}/mq_monitoring_servers"
FTP_SERVERS = f"{WORKER_CONFIG_ROOT}/ftp_servers"

# Status words written to /pero/worker/status/<id>/status.
STARTING = "STARTING"
PROCESSING = "PROCESSING"
CONFIGURING = "CONFIGURING"
CONNECTING = "CONNECTING"
IDLE = "IDLE"
PROCESSING_FAILED = "PROCESSING_FAILED"
MQ_CONNECTION_FAILED = "MQ_CONNECTION_FAILED"
ZK_CONNECTION_FAILED = "ZK_CONNECTION_FAILED"
CONFIGURATION_FAILED = "CONFIGURATION_FAILED"
DEAD = "DEAD"


def zookeeper_refused_character(name: str) -> str | None:
    """The first character ZooKeeper refuses in a node name, or None (pure).

    ZooKeeper's server checks names as Java (UTF-16) strings and refuses control
    characters (U+0001..U+001F, U+007F..U+009F), U+D800..U+F8FF (surrogates and
    the private use area), U+FFF0..U+FFFF, and therefore every character beyond
    U+FFFF (emoji and the like travel as surrogate pairs).  A name it refuses
    fails with BadArgumentsError only at the write, so tools check it first.
    """
    for char in name:
        code = ord(char)
        if (code == 0 or code <= 0x1F or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xF8FF
                or code >= 0xFFF0):
            return char
    return None


def _check_name(name: str, what: str) -> str:
    """Refuse names that would escape their parent node or be ambiguous."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"invalid {what} name: {name!r}")
    return name


# --- worker nodes -----------------------------------------------------------

def worker_root(worker_id: str) -> str:
    return f"{WORKER_STATUS_ROOT}/{_check_name(worker_id, 'worker')}"


def worker_status(worker_id: str) -> str:
    return f"{worker_root(worker_id)}/status"


def worker_connected(worker_id: str) -> str:
    """Ephemeral child of the status node; exists while the worker's session lives."""
    return f"{worker_status(worker_id)}/connected"


def worker_queue(worker_id: str) -> str:
    return f"{worker_root(worker_id)}/queue"


def worker_enabled(worker_id: str) -> str:
    return f"{worker_root(worker_id)}/enabled"


def worker_unlock_time(worker_id: str) -> str:
    return f"{worker_root(worker_id)}/unlock_time"


# --- stage (queue) nodes ----------------------------------------------------

def stage_root(stage: str) -> str:
    return f"{QUEUE_ROOT}/{_check_name(stage, 'stage')}"


def stage_config(stage: str) -> str:
    return f"{stage_root(stage)}/config"


def stage_config_path(stage: str) -> str:
    return f"{stage_root(stage)}/config_path"


def stage_config_version(stage: str) -> str:
    return f"{stage_root(stage)}/config_version"


def stage_admin_priority(stage: str) -> str:
    return f"{stage_root(stage)}/administrative_priority"


def stage_avg_msg_time(stage: str) -> str:
    return f"{stage_root(stage)}/avg_msg_time"


def stage_avg_msg_time_lock(stage: str) -> str:
    return f"{stage_root(stage)}/avg_msg_time_lock"


def stage_waiting_since(stage: str) -> str:
    return f"{stage_root(stage)}/waiting_since"


def stage_switch_time(stage: str) -> str:
    """Seconds a worker needs to take up this stage (download + model load).

    Not in the original layout: an additive node, measured by workers and read
    by the watchdog to weigh the cost of moving a worker.
    """
    return f"{stage_root(stage)}/switch_time"


# --- value encodings --------------------------------------------------------

DISABLED_PRIORITY = -1


def encode_priority(value: int) -> bytes | None:
    """The administrative_priority node's bytes; None (= no node) for a disabled stage (-1 or lower).

    The original system reads this node as an *unsigned* big-endian int (`int.from_bytes(raw, 'big')`)
    and writes it unsigned (it cannot write -1 at all), so no bytes exist that it reads as -1:
    two's complement -1 (ff ff ff ff) is 4294967295 to it, its highest priority.  What the
    original does with a stage whose administrative_priority node is missing is skip it from
    scheduling ("does not have all fields defined ... Skipping queue from scheduling"), which
    is exactly "disabled".  So -1 is written by removing the node, and our readers read a
    missing node as -1 (see `decode_priority`).  Priorities >= 0 are 4-byte big-endian.
    """
    value = int(value)
    if value <= DISABLED_PRIORITY:
        return None
    length = max(4, (value.bit_length() + 8) // 8)
    return value.to_bytes(length, "big", signed=True)


def decode_priority(raw: bytes | None) -> int:
    """None (node missing) -> -1 (disabled, as the original watchdog treats it); b'' -> 0 (a node the original
    tool has just created with ensure_path); else signed big-endian, so that the ff ff ff ff earlier versions
    of this suite wrote for -1 still reads -1."""
    if raw is None:
        return DISABLED_PRIORITY
    if not raw:
        return 0
    return int.from_bytes(raw, "big", signed=True)


def encode_float(value: float) -> bytes:
    return float(value).hex().encode()


def decode_float(raw: bytes | None, default: float = 0.0) -> float:
    if not raw:
        return default
    text = raw.decode("utf-8", "replace").strip()
    # float.hex() output always has an '0x' prefix; anything else is read as a decimal
    # (float.fromhex('2.5') would silently give 2.3125).
    try:
        return float.fromhex(text) if "0x" in text.lower() else float(text)
    except ValueError:
        return default


def decode_text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""
