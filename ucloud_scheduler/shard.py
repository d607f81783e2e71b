"""Which scheduler looks after which key, when several run at once.

Correctness never depends on this: every placement is a compare-and-swap, so two
schedulers deciding about the same VM cannot both win. But if every scheduler tried
every VM, all but one of them would lose every race and batching would be useless.
So each live scheduler (``/v1/scheduler/<id>``, on its own lease) takes the keys that
rendezvous hashing (highest random weight) gives it: every scheduler computes the
same owner from the same member list, and when a member joins or dies only that
member's share moves. Hosts are shared out the same way, as the hosts a scheduler
*tries first*, so concurrent schedulers seldom promise on the same host at once.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Iterable


def weight(member: str, key: str) -> int:
    """A stable pseudo-random weight of ``key`` for ``member``."""
    return int.from_bytes(blake2b(f"{member}\n{key}".encode(), digest_size=8).digest(), "big")


def owner(key: str, members: Iterable[str]) -> str:
    """The member with the highest weight for ``key`` ("" when there are no members)."""
    best, best_weight = "", -1
    for member in members:
        w = weight(member, key)
        if w > best_weight or (w == best_weight and member > best):
            best, best_weight = member, w
    return best
