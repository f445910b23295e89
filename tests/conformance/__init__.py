"""CPython's asyncio test suite run on the loop under test; see README.md."""
