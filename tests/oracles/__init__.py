"""Reference functions vendored verbatim as test oracles, each with its licence (see README.md beside this file)."""
