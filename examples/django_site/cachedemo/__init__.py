"""A small Django site cached by tieredcache (see ``examples/README.md``)."""
