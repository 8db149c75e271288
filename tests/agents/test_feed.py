"""The run feed: followers woken across threads, deltas carried, a bound on followers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgenode.agents.feed import RunFeed
from edgenode.errors import Overloaded


def test_followers_get_deltas_from_another_thread_and_are_bounded() -> None:
    async def scenario() -> None:
        feed = RunFeed(max_followers=2)
        with feed.follow("t/a") as first, feed.follow("t/a") as second:
            with pytest.raises(Overloaded), feed.follow("t/b"):
                pass
            assert feed.following("t/a") and not feed.following("t/b")
            publisher = threading.Thread(target=lambda: (feed.delta("t/a", 3, "hel"), feed.delta("t/a", 3, ""),
                                                         feed.changed("t/a")))
            publisher.start()
            await asyncio.wait_for(second.wake.wait(), 60)
            publisher.join()
            for follower in (first, second):
                assert await asyncio.wait_for(follower.deltas.get(), 60) == {"position": 3, "text": "hel"}
                assert follower.deltas.empty()  # an empty piece is not sent
        assert not feed.following("t/a")
        with feed.follow("t/b"):  # room again once the others left
            pass

    asyncio.run(scenario())
