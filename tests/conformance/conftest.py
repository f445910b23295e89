# The conformance runner is a program (`python -m tests.conformance`), not a
# pytest suite: it runs CPython's own test modules in child processes.
collect_ignore_glob = ["*"]
