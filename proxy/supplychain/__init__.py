"""Supply-chain policy (SPEC 15): OSV blocklists, minimum release age, and the decisions they make.

Pure modules: ``versions`` (semver / PEP 440 ordering and OSV ranges), ``osv`` (records ->
entries), ``sources`` (reading feeds, bounded), ``manual`` (the ``blocklist_file``), ``blocklist``
(the index and its refresh loop, the new-entry hook), ``policy`` (decisions), ``npmview``
(dist-tags moved off withheld versions), ``gate`` (the registry pipeline's policy seam),
``service``, ``admin`` and ``cli`` (the server, the admin API and ``pkgate blocklist``).
"""
