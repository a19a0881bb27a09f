"""Interoperability: the engine and the CLI against real servers installed on this machine.

MapServer 8 (Debian ``cgi-mapserver``) and QGIS Server 3.22 (Debian ``qgis-server``) serve WMS
and OGC API Features, pygeoapi serves OGC API Features from its SQLite provider, and MapProxy
serves tiles from MapServer's WMS, all on loopback over the same generated ground truth
(:mod:`tests.interop.data`). :mod:`tests.interop.install` installs the Debian packages when they
are missing; :mod:`tests.interop.servers` starts each server once per test session.
"""
