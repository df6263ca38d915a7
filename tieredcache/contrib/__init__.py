"""Integrations with web frameworks.

:mod:`tieredcache.config` turns a location and a mapping of options into a
:class:`~tieredcache.TieredCache` (and keeps one per configuration per process);
:mod:`tieredcache.contrib.django` is a Django cache backend built on it. The framework
modules import their framework, so import them only where it is installed.
"""
