"""The long fuzz run (``make fuzz``, ``python -m tests.fuzz``): see ``engine``."""
