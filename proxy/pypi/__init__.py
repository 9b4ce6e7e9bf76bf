"""The Python simple index (PEP 503/691): negotiation, page parsing and rendering, files."""
