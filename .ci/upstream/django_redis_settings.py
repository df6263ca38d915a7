# Appended by run.py to each of django-redis's tests/settings/sqlite*.py: BACKEND changed,
# and LOCATION pointed at the session's redis-server instead of 127.0.0.1:6379.
import os as _os


def _at(location):
    if isinstance(location, (list, tuple)):
        return [_at(one) for one in location]
    return location.replace("127.0.0.1:6379", "127.0.0.1:" + _os.environ["TC_REDIS_PORT"]).replace(
        "/tmp/redis.sock", _os.environ["TC_REDIS_SOCK"]
    )


for _alias in globals()["CACHES"].values():  # defined above, in the settings module
    _alias["BACKEND"] = "tieredcache.contrib.django.TieredCache"
    _alias["LOCATION"] = _at(_alias["LOCATION"])
