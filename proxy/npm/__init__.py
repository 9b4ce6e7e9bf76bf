"""The npm registry: its paths, packument rewrite and the wire format of its answers."""
