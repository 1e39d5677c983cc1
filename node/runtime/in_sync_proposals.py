"""The in-sync set changes this node's units propose, committed together.

When a replica's node dies, every unit this node owns and replicated to it loses its
session in the same loop turn, and each unit's confirms wait until Raft has dropped the
replica from its in-sync set (Kafka's ISR shrink: a copy may only stop counting once the
cluster agrees it no longer does).  One Raft entry per unit queued as many round trips
through the leader, each with its journal fsyncs; the changes proposed within GATHER of
the first now go in one `set_in_sync_many` entry, each still fenced by its own unit's epoch
and answered on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# A dead node's sessions end over a few loop turns (its sockets close one by one, the loop
# busy with clients in between: 3 ms apart under load); a change waits this long for the
# others, less than one Raft round trip (12-40 ms under load) of each it saves.
GATHER = 0.003

Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class InSyncProposals:
    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self._batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []

    async def propose(self, change: dict[str, Any]) -> dict[str, Any]:
        """Commit one `set_in_sync` change (with whatever else is proposed meanwhile);
        its own result, or the exception that kept the entry from committing."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        if not self._batch:
            loop.call_later(GATHER, self._flush)
        self._batch.append((change, fut))
        return await fut

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        asyncio.ensure_future(self._commit(batch))

    async def _commit(self, batch: list[tuple[dict[str, Any],
                                              asyncio.Future[dict[str, Any]]]]) -> None:
        results: list[dict[str, Any]]
        try:
            if len(batch) == 1:
                results = [await self._submit(batch[0][0])]
            else:
                answer = await self._submit({"op": "set_in_sync_many",
                                             "changes": [change for change, _ in batch]})
                each = answer.get("results") if answer.get("ok") else None
                # refused as a whole (a malformed entry): every change has that answer
                results = (each if isinstance(each, list) and len(each) == len(batch)
                           else [answer] * len(batch))
        except Exception as e:  # no quorum, a timeout: each proposer decides what next
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)
