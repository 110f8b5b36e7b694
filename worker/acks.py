"""Which input deliveries can be acknowledged now: pure bookkeeping, no I/O.

With prefetch > 1 several deliveries are in flight and their successors are
confirmed in any order.  An input may be acked only after its successor is
confirmed; acking with multiple=True acknowledges every earlier unacked
delivery on the channel too, so it is only used once every earlier delivery is
settled (acked through us, or already nacked back to the queue).
"""
from __future__ import annotations


class AckTracker:
    def __init__(self) -> None:
        # delivery tag -> None (in flight), True (successor confirmed: ack), False (nacked already)
        self._state: dict[int, bool | None] = {}
        self._order: list[int] = []   # tags in delivery order (tags grow per channel)
        self._head = 0

    def __len__(self) -> int:
        """Deliveries not yet acked or nacked."""
        return len(self._order) - self._head

    def add(self, tag: int) -> None:
        if tag in self._state:
            raise ValueError(f"delivery tag {tag} added twice")
        if self._order[self._head:] and tag < self._order[-1]:
            raise ValueError(f"delivery tag {tag} arrived after {self._order[-1]}")
        self._state[tag] = None
        self._order.append(tag)

    def settle(self, tag: int, *, ack: bool) -> int | None:
        """Record that `tag` is done (ack=False: it was nacked).  Returns the tag to ack with multiple=True, if any."""
        if tag not in self._state or self._state[tag] is not None:
            raise ValueError(f"delivery tag {tag} is not in flight")
        self._state[tag] = ack
        ack_upto = None
        while self._head < len(self._order):
            head = self._order[self._head]
            state = self._state[head]
            if state is None:
                break
            if state:
                ack_upto = head
            del self._state[head]
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._order):
            self._order = self._order[self._head:]
            self._head = 0
        return ack_upto

    def clear(self) -> None:
        """The channel is gone: its delivery tags mean nothing any more (the broker redelivers)."""
        self._state.clear()
        self._order.clear()
        self._head = 0
