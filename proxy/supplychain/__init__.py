"""Supply-chain policy (SPEC 15): OSV blocklists, minimum release age, and the decisions they make.

Pure modules: ``versions`` (semver / PEP 440 ordering and OSV ranges), ``osv`` (records ->
entries), ``sources`` (reading feeds, bounded), ``manual`` (the ``blocklist_file``), ``blocklist``
(the index and its refresh loop, the new-entry hook), ``policy`` (decisions), ``npmview`` and
``pypiview`` (metadata with withheld versions taken out).  ``service`` wires them into the server.
"""
