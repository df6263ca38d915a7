"""Redis plumbing shared by the backend, the backplane and the lock: URLs and clients
(:mod:`.connect`), the direct protocol path (:mod:`.direct`), the backplane over pub/sub
(:mod:`.backplane`), its subscriber loop and private connections (:mod:`.pubsub`) and the
lock (:mod:`.lock`)."""

__all__: list[str] = []
