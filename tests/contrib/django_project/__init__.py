"""A small Django project exercising the tieredcache backend end to end (tests only)."""
