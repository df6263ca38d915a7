"""Redis plumbing shared by the backend, the backplane and the lock: URLs and clients
(:mod:`.connect`), the direct protocol path (:mod:`.direct`) and the lock (:mod:`.lock`)."""

__all__: list[str] = []
